"""The ``"bico"`` attention implementation for Hugging Face Llama-family models.

Importing :mod:`bico` registers ``"bico"`` in ``transformers.AttentionInterface`` and
``AttentionMaskInterface``, so ``from_pretrained(..., attn_implementation="bico")`` works.

* With no interval mask in the forward kwargs it *is* SDPA attention (causal, padding, KV
  cache, generation): inference in bico is always plain causal decoding.
* With ``lo``/``hi`` (int32 ``[B, T]``, see :mod:`bico.masks`) it computes exact attention
  under that interval mask, optionally with BICO's mirrored RoPE (``mirror_rope=(cos, sin)``,
  the model's own RoPE tables, see :func:`rope_tables`). On CUDA with Triton it runs the
  fused kernel of ``bico_kernels``; elsewhere a PyTorch reference path.

Backend choice: ``BICO_ATTENTION_BACKEND`` = ``auto`` (default) | ``triton`` | ``reference``,
or the ``bico_backend=`` forward kwarg. The choice is logged once per backend.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from bico import masks
from bico_kernels import mirror_rotate

logger = logging.getLogger(__name__)
BACKENDS = ("auto", "triton", "reference")
_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.info(message)


def resolve_backend(query: torch.Tensor, requested: str | None = None) -> str:
    """Pick ``triton`` or ``reference`` for this call (argument > env var > auto)."""
    choice = requested or os.environ.get("BICO_ATTENTION_BACKEND", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"BICO_ATTENTION_BACKEND={choice!r}: use one of {', '.join(BACKENDS)}")
    if choice == "auto":
        import bico_kernels

        choice = "triton" if query.is_cuda and bico_kernels.triton_available() else "reference"
    _log_once(f"bico attention backend: {choice}")
    return choice


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply a further RoPE rotation given HF tables ``[B, T, D]`` to ``x`` ``[B, H, T, D]``."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + _rotate_half(x) * sin


def reference_interval_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    scale: float,
    mirror_rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Exact interval-masked attention in PyTorch: ``[B, Hq, T, D]`` in, same out.

    GQA is handled without repeating K/V (SDPA's ``enable_gqa``, or a grouped matmul for the
    mirrored path). Rows with no visible key output exactly 0.
    """
    b, hq, t, d = query.shape
    hkv = key.shape[1]
    additive = masks.to_additive(lo, hi, dtype=query.dtype)
    if mirror_rope is None:
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=additive, dropout_p=dropout, scale=scale,
            enable_gqa=hq != hkv,
        )
    else:
        cos, sin = mirror_rope
        groups = hq // hkv
        q = query.view(b, hkv, groups, t, d)
        k, v = key[:, :, None], value[:, :, None]
        qm = mirror_rotate(query, cos, sin).view(b, hkv, groups, t, d)
        km = mirror_rotate(key, cos, sin)[:, :, None]
        scores = torch.matmul(q, k.transpose(-1, -2))
        mirrored = torch.matmul(qm, km.transpose(-1, -2))
        # Keys after the query (j > i) take the mirrored score: offset |i - j| both ways.
        after = torch.ones(t, t, dtype=torch.bool, device=query.device).triu(1)
        scores = torch.where(after, mirrored, scores) * scale
        # Softmax in at least fp32 (float64 stays float64 for the exactness tests).
        acc = torch.promote_types(scores.dtype, torch.float32)
        scores = scores.to(acc) + additive[:, :, None].to(acc)
        probs = torch.softmax(scores, dim=-1).to(query.dtype)
        if dropout:
            probs = F.dropout(probs, p=dropout)
        out = torch.matmul(probs, v).view(b, hq, t, d)
    keep = masks.rows_with_keys(lo, hi)[:, None, :, None]
    return out * keep.to(out.dtype)


def bico_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    lo: torch.Tensor | None = None,
    hi: torch.Tensor | None = None,
    mirror_rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    rope_2d: tuple[torch.Tensor, torch.Tensor] | None = None,
    bico_backend: str | None = None,
    **kwargs,
):
    """Attention function with the AttentionInterface signature; returns ``[B, T, H, D]``."""
    if lo is None and hi is None:
        if mirror_rope is not None:
            raise ValueError("mirror_rope needs an interval mask: pass lo= and hi= as well")
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if lo is None or hi is None:
        raise ValueError("pass both lo= and hi= (the interval mask) or neither")
    t = query.shape[2]
    if key.shape[2] != t or lo.shape != (query.shape[0], t):
        raise ValueError(
            f"interval masks are for full sequences without a KV cache: query length {t}, "
            f"key length {key.shape[2]}, lo shape {tuple(lo.shape)}"
        )
    if rope_2d is not None:
        if mirror_rope is not None:
            raise ValueError("mirrored RoPE and 2-D positions cannot be combined")
        query, key = rotate(query, *rope_2d), rotate(key, *rope_2d)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    lo, hi = lo.to(device=query.device, dtype=torch.int32), hi.to(device=query.device, dtype=torch.int32)
    if resolve_backend(query, bico_backend) == "triton":
        import bico_kernels

        if dropout:
            raise ValueError("the fused kernel has no attention dropout: set attention_dropout=0")
        out = bico_kernels.masked_attention(
            query, key, value, lo, hi, scale=scale, mirror_rope=mirror_rope
        )
    else:
        out = reference_interval_attention(
            query, key, value, lo, hi, scale=scale, mirror_rope=mirror_rope, dropout=dropout
        )
    return out.transpose(1, 2).contiguous(), None


def find_rotary_embedding(model: torch.nn.Module) -> torch.nn.Module:
    """The model's RoPE module (``model.model.rotary_emb`` in Llama-family models)."""
    for name, module in model.named_modules():
        if name.endswith("rotary_emb") and hasattr(module, "inv_freq"):
            return module
    raise ValueError(f"{type(model).__name__} has no rotary_emb module: mirrored RoPE needs a RoPE model")


def rope_tables(model: torch.nn.Module, position_ids: torch.Tensor, dtype=torch.float32):
    """``(cos, sin)`` ``[B, T, D]`` of the model's own RoPE at ``position_ids``."""
    rotary = find_rotary_embedding(model)
    scaling = getattr(rotary, "attention_scaling", 1.0)
    if abs(scaling - 1.0) > 1e-6:
        # The mirror is derived from cos/sin as pure rotations; a scaled table breaks that.
        raise ValueError(f"mirrored RoPE needs attention_scaling 1.0, the model's RoPE has {scaling}")
    probe = torch.empty(0, dtype=dtype, device=position_ids.device)
    # .forward, not __call__: no module hooks run. DeepSpeed ZeRO-3 records the order of module
    # calls and requires every rank to agree, and whether this extra call happens depends on the
    # batch (BICO's denoising vs NTP steps), so it must stay invisible to it.
    return rotary.forward(probe, position_ids)


def rope_2d_tables(model: torch.nn.Module, position_ids: torch.Tensor, block_position_ids: torch.Tensor):
    """Tables that turn 1-D RoPE into 2-D RoPE inside attention (GLM's 2-D positions).

    The model rotates every frequency pair by ``position_ids``. Rotating the upper half of the
    pairs further by ``block_position_ids - position_ids`` leaves the lower half encoding the
    position and the upper half encoding the block position: the head dimension split in two.
    """
    cos, sin = rope_tables(model, block_position_ids - position_ids)
    pairs = cos.shape[-1] // 2
    first = torch.zeros(pairs, dtype=torch.bool, device=cos.device)
    first[: pairs // 2] = True
    first = torch.cat([first, first])  # rotate-half layout: pair k is dims k and k + D/2
    return cos.masked_fill(first, 1.0), sin.masked_fill(first, 0.0)


def register() -> None:
    """Register ``"bico"`` with transformers (idempotent; done on ``import bico``)."""
    AttentionInterface.register("bico", bico_attention_forward)
    # Without a mask function of the same name transformers passes attention_mask=None and
    # silently drops padding; SDPA's boolean mask is exactly what the no-interval path needs.
    AttentionMaskInterface.register("bico", sdpa_mask)
