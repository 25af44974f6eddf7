"""Model-actor backends (data-flow steps: scoring, and upstream's training on the policy / critic actors): `cpu/`
(Hugging Face models on CPU, the local mode and the tests) and `gpu_chunked` (upstream's DeepSpeed actors plus the
token-streaming chunk methods of `scoring/`). Importing this package imports nothing heavy."""
