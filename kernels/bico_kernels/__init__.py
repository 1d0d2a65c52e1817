"""Fused masked-attention kernels (Triton) beside their PyTorch references. Imported as bico_kernels.

Importing this package never imports triton: the Triton module (``bico_kernels.triton_attention``)
loads on the first call of :func:`masked_attention`. Set TRITON_INTERPRET=1 before that first call
to run on CPU tensors.
"""

from __future__ import annotations

import importlib
import logging
import os

from .blocks import FULL, PARTIAL, SKIP, BlockClassification, classify_blocks
from .reference import (
    additive_mask,
    dense_visibility,
    mirror_rotate,
    mirror_rotate_transpose,
    reference_masked_attention,
    rotate_half,
)

__all__ = [
    "masked_attention",
    "reference_masked_attention",
    "triton_available",
    "mirror_rotate",
    "mirror_rotate_transpose",
    "rotate_half",
    "dense_visibility",
    "additive_mask",
    "classify_blocks",
    "BlockClassification",
    "SKIP",
    "PARTIAL",
    "FULL",
    "MaskedAttentionFunction",
]


_logged: set = set()


def log_once(logger: logging.Logger, message: str) -> None:
    """``logger.info(message)``, the first time this process logs that message there: a choice
    made on every call (which backend, which path) is worth saying once."""
    if (logger.name, message) not in _logged:
        _logged.add((logger.name, message))
        logger.info(message)


def triton_available() -> bool:
    """True iff triton imports and it can run here (a CUDA device, or TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install failing at import
        return False
    import torch

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _impl():
    return importlib.import_module(__name__ + ".triton_attention")


def masked_attention(q, k, v, lo, hi, *, scale=None, mirror_rope=None, deterministic=False, **kwargs):
    """Fused masked attention (Triton kernel, autograd-enabled). Same math as
    :func:`reference_masked_attention`; extra keyword arguments (blocks, classify, block_m, block_n,
    num_warps, num_stages) are described in ``bico_kernels.triton_attention.masked_attention``."""
    return _impl().masked_attention(
        q, k, v, lo, hi, scale=scale, mirror_rope=mirror_rope, deterministic=deterministic, **kwargs
    )


def __getattr__(name):  # lazy: MaskedAttentionFunction lives in the triton module
    if name == "MaskedAttentionFunction":
        return _impl().MaskedAttentionFunction
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
