"""Fused masked-attention kernels (Triton) beside their PyTorch references. Imported as bico_kernels.

Importing this package never imports triton: the Triton module loads on the first call of
:func:`masked_attention`. Set TRITON_INTERPRET=1 before that first call to run on CPU tensors.
"""
from __future__ import annotations

import importlib
import os
import sys

from .blocks import FULL, PARTIAL, SKIP, BlockClassification, cached_classify_blocks, classify_blocks
from .reference import mirror_rotate, mirror_rotate_transpose, reference_masked_attention, rotate_half

__all__ = [
    "masked_attention", "reference_masked_attention", "triton_available", "mirror_rotate",
    "mirror_rotate_transpose", "rotate_half", "classify_blocks", "cached_classify_blocks",
    "BlockClassification", "SKIP", "PARTIAL", "FULL", "MaskedAttentionFunction",
]


def triton_available() -> bool:
    """True iff triton imports and it can run here (a CUDA device, or TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install failing at import
        return False
    import torch
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _impl():
    name = __name__ + ".masked_attention"
    mod = sys.modules.get(name)
    if mod is None:
        # This rebinds the package attribute `masked_attention` to the submodule; the submodule is
        # callable with the same signature, so `bico_kernels.masked_attention(...)` keeps working.
        mod = importlib.import_module(name)
    return mod


def masked_attention(q, k, v, lo, hi, *, scale=None, mirror_rope=None, deterministic=False, **kwargs):
    """Fused masked attention (Triton kernel, autograd-enabled). Same math as
    :func:`reference_masked_attention`; extra keyword arguments (blocks, block_m, block_n, num_warps,
    num_stages) go to ``bico_kernels.masked_attention`` module's implementation."""
    return _impl().masked_attention(q, k, v, lo, hi, scale=scale, mirror_rope=mirror_rope,
                                    deterministic=deterministic, **kwargs)


def __getattr__(name):  # lazy: MaskedAttentionFunction lives in the triton module
    if name == "MaskedAttentionFunction":
        return _impl().MaskedAttentionFunction
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
