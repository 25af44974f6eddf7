"""Model-actor backends: `cpu/` (Hugging Face models on CPU, the local mode and the tests) and `gpu_chunked`
(upstream's DeepSpeed actors plus the token-streaming chunk methods). Importing this package imports nothing heavy."""
