"""Only ``flash_attn.utils.distributed.all_gather`` exists in the CPU fallback."""
