"""CPU stand-in for the ``flash_attn`` package: only the two modules OpenRLHF imports at top level.

It is put on the import path by ``openrlhf_darts.compat.install()`` only when no real flash-attn is installed. It offers
no attention kernels on purpose: code that really needs flash attention fails with an ImportError naming the missing
symbol instead of running something slower or wrong. There is deliberately no ``__version__`` and no distribution
metadata, so transformers keeps reporting flash-attn as unavailable.
"""

CPU_FALLBACK = True
