"""The ``"bico"`` attention implementation for Hugging Face Llama-family models.

:func:`register` (``bico.register()``) adds ``"bico"`` to ``transformers.AttentionInterface`` and
``AttentionMaskInterface``, so ``from_pretrained(..., attn_implementation="bico")`` works;
:func:`apply` switches an already-loaded model (registering first) and :func:`revert` switches it back.

* Without a ``bico_mask`` forward kwarg it *is* SDPA attention (causal, padding, KV cache,
  generation): inference in bico is always plain causal decoding.
* With ``bico_mask=`` (a :class:`bico.masks.IntervalMask`) it computes exact attention under that
  interval mask, with the mask's RoPE mode (``mirrored``: BICO; ``2d``: GLM), building the RoPE
  tables itself from the model's rotary embedding at the forward's ``position_ids``. On CUDA with
  Triton it runs the fused kernel of ``bico_kernels``; elsewhere the PyTorch reference.

Backend: ``apply(model, backend=...)``, else ``BICO_ATTENTION_BACKEND``, else ``auto`` (Triton on
CUDA when available). The choice is logged once per backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import weakref

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from bico.errors import BicoError
from bico.masks import IntervalMask
from bico_kernels import log_once, reference_masked_attention, rotate_half

logger = logging.getLogger(__name__)
# Under CPU autocast the masked attention runs in fp32 (see bico_attention_forward); False only to
# measure the difference (benchmarks/train_throughput.py).
CPU_AUTOCAST_FP32 = True
BACKENDS = ("auto", "triton", "reference")
# Llama-family attention: q/k/v projections, GQA, rotate-half RoPE applied before the attention
# function, position_ids reaching it. Other architectures (GPT-2, Gemma's extra scaling, ...) would
# silently get wrong RoPE or masks.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class UnsupportedModelError(BicoError, ValueError):
    """bico's attention cannot run this architecture."""


class BackendError(BicoError, ValueError):
    """The attention's environment (``BICO_ATTENTION_BACKEND``, ``BICO_KERNEL_TUNE_FILE``) is unusable."""


def check_backend(choice: str | None = None) -> str:
    """The requested backend (``BICO_ATTENTION_BACKEND`` when none is), if it is one of :data:`BACKENDS`."""
    where = "bico attention backend" if choice else "BICO_ATTENTION_BACKEND"
    choice = choice or os.environ.get("BICO_ATTENTION_BACKEND", "auto")
    if choice not in BACKENDS:
        raise BackendError(f"{where} {choice!r}: use one of {', '.join(BACKENDS)}")
    return choice


def check_environment() -> None:
    """The attention's environment variables, checked when ``bico train`` starts: they are read at
    the first forward pass, after the run dir is made, where a bad value would leave a run behind."""
    from bico_kernels.tuning import check_tune_file  # pure Python: no Triton

    check_backend()
    try:
        check_tune_file()
    except ValueError as err:  # bico_kernels knows no bico errors (it imports nothing from bico)
        raise BackendError(str(err)) from None


def resolve_backend(query: torch.Tensor, requested: str | None = None) -> str:
    """Pick ``triton`` or ``reference`` for this call (apply()'s choice > env var > auto)."""
    choice = check_backend(requested)
    if choice == "auto":
        import bico_kernels

        choice = "triton" if query.is_cuda and bico_kernels.triton_available() else "reference"
    log_once(logger, f"bico attention backend: {choice}")
    return choice


def check_supported(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"bico attention supports model types {', '.join(SUPPORTED_MODEL_TYPES)} (Llama-family attention "
            f"with rotate-half RoPE); this model is {model_type!r}"
        )


# --- RoPE tables -------------------------------------------------------------------------------

_rotaries: dict[int, tuple[weakref.ref, torch.nn.Module]] = {}  # id(config) -> (weak config, rotary)


def rotary_embedding(attention: torch.nn.Module) -> torch.nn.Module:
    """A rotary embedding equal to the model's, built once per config from the attention module's
    own modeling file (``LlamaAttention`` -> ``LlamaRotaryEmbedding``). Built rather than looked
    up because an attention module does not know its model; it is outside the model, so no
    module hook (DeepSpeed ZeRO-3 records every call) ever sees it."""
    config = attention.config
    entry = _rotaries.get(id(config))
    if entry is None or entry[0]() is not config:
        namespace = sys.modules[type(attention).__module__]
        name = type(attention).__name__.replace("Attention", "RotaryEmbedding")
        cls = getattr(namespace, name, None)
        if cls is None:
            raise UnsupportedModelError(f"{type(attention).__name__} has no {name} beside it: bico needs a RoPE model")
        for key in [k for k, (ref, _) in _rotaries.items() if ref() is None]:  # models gone since
            del _rotaries[key]
        entry = _rotaries[id(config)] = (weakref.ref(config), cls(config=config))
    return entry[1]


def rope_tables(rotary: torch.nn.Module, position_ids: torch.Tensor, *, check_scaling: bool = True):
    """``(cos, sin)`` ``[B, T, D]`` (fp32) of a rotary embedding at ``position_ids``."""
    scaling = getattr(rotary, "attention_scaling", 1.0)
    if check_scaling and abs(scaling - 1.0) > 1e-6:
        # The mirror and the 2-D rotation are derived from cos/sin as pure rotations; a scaled table breaks that.
        raise UnsupportedModelError(f"mirrored and 2-D RoPE need attention_scaling 1.0, the model's RoPE has {scaling}")
    probe = torch.empty(0, dtype=torch.float32, device=position_ids.device)
    return rotary.forward(probe, position_ids)


def rope_2d_tables(rotary: torch.nn.Module, position_ids: torch.Tensor, block_position_ids: torch.Tensor):
    """Tables that turn 1-D RoPE into 2-D RoPE inside attention (GLM's 2-D positions).

    The model rotates every frequency pair by ``position_ids``. Rotating the upper half of the
    pairs further by ``block_position_ids - position_ids`` leaves the lower half encoding the
    position and the upper half encoding the block position: the head dimension split in two.
    """
    cos, sin = rope_tables(rotary, block_position_ids - position_ids)
    pairs = cos.shape[-1] // 2
    first = torch.zeros(pairs, dtype=torch.bool, device=cos.device)
    first[: pairs // 2] = True
    first = torch.cat([first, first])  # rotate-half layout: pair k is dims k and k + D/2
    return cos.masked_fill(first, 1.0), sin.masked_fill(first, 0.0)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply a further RoPE rotation given HF tables ``[B, T, D]`` to ``x`` ``[B, H, T, D]``."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


def mask_rope_tables(attention: torch.nn.Module, mask: IntervalMask, position_ids: torch.Tensor):
    """The tables the mask's RoPE mode needs (None for standard), computed once per forward: every
    layer passes the same ``position_ids`` tensor, so the entry cached on the mask is reused."""
    if mask.rope == "standard":
        return None
    cached = mask.rope_cache.get("tables")
    if cached is not None and cached[0] is position_ids and cached[1] == position_ids._version:
        return cached[2]
    rotary = rotary_embedding(attention)
    positions = position_ids.expand(mask.batch_size, -1)  # the model passes [1, T] when it made them itself
    if mask.rope == "mirrored":
        tables = rope_tables(rotary, positions)
    else:
        tables = rope_2d_tables(rotary, positions, mask.block_position_ids)
    tables = tuple(t.contiguous() for t in tables)
    mask.rope_cache["tables"] = (position_ids, position_ids._version, tables)  # holds position_ids: no id reuse
    return tables


# --- the attention function --------------------------------------------------------------------


def bico_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    bico_mask: IntervalMask | None = None,
    **kwargs,
):
    """Attention function with the AttentionInterface signature; returns ``[B, T, H, D]``."""
    if bico_mask is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if not isinstance(bico_mask, IntervalMask):
        raise TypeError(f"bico_mask must be a bico.IntervalMask, got {type(bico_mask).__name__}")
    b, _, t, _ = query.shape
    if key.shape[2] != t or bico_mask.lo.shape != (b, t):
        raise ValueError(
            f"an IntervalMask is for full sequences without a KV cache: query length {t}, key length "
            f"{key.shape[2]}, batch {b}; the mask is [B, T] = {tuple(bico_mask.lo.shape)}"
        )
    check_supported(module.config)
    mask = bico_mask.to(query.device)
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(t, device=query.device).expand(b, t)
    tables = mask_rope_tables(module, mask, position_ids)
    mirror = tables if mask.rope == "mirrored" else None
    if mask.rope == "2d":
        query, key = rotate(query, *tables), rotate(key, *tables)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if resolve_backend(query, getattr(module, "bico_backend", None)) == "triton":
        import bico_kernels

        if dropout:
            raise ValueError("the fused kernel has no attention dropout: set attention_dropout=0")
        query, key, value = kernel_dtypes(query, key, value)
        out = bico_kernels.masked_attention(
            query, key, value, mask.lo, mask.hi, scale=scale, mirror_rope=mirror, classify=mask.blocks
        )
    else:
        # CPU autocast: attention in fp32. PyTorch's CPU flash attention runs 2-4x slower in bf16
        # than in fp32 (forward + backward, benchmarks/NOTES-cpu-speed.md) and at these lengths it
        # is a small share of the FLOPs; the output projection casts the result as autocast would.
        in_fp32 = CPU_AUTOCAST_FP32 and query.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        with torch.autocast("cpu", enabled=False) if in_fp32 else contextlib.nullcontext():
            if in_fp32:
                query, key, value = query.float(), key.float(), value.float()
            out = reference_masked_attention(
                query,
                key,
                value,
                mask.lo,
                mask.hi,
                scale=scale,
                mirror_rope=mirror,
                dropout=dropout,
                use_sdpa=mirror is None,
            )
    return out.transpose(1, 2).contiguous(), None


def kernel_dtypes(query, key, value):
    """q, k, v in one dtype for the fused kernel (a custom autograd Function, which autocast does not
    cast): under autocast the autocast dtype, else v's when they differ. Under bf16 autocast the
    model's RoPE (fp32 tables) hands over fp32 q and k beside a bf16 v."""
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    elif query.dtype == key.dtype == value.dtype:
        return query, key, value
    else:
        dtype = value.dtype
    return query.to(dtype), key.to(dtype), value.to(dtype)


def register() -> None:
    """Register ``"bico"`` with transformers' attention and mask interfaces (idempotent): needed
    before ``from_pretrained(..., attn_implementation="bico")``; :func:`apply` and model loading
    (:func:`bico.models.load_model`, and so every ``bico`` command) call it. As ``bico.register()``."""
    AttentionInterface.register("bico", bico_attention_forward)
    # Without a mask function of the same name transformers passes attention_mask=None and
    # silently drops padding; SDPA's boolean mask is exactly what the no-interval path needs.
    AttentionMaskInterface.register("bico", sdpa_mask)


# --- apply / revert ----------------------------------------------------------------------------


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft (or DeepSpeed) wrapper."""
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    inner = getattr(model, "module", None)  # DeepSpeed / DDP engines
    if inner is not None and hasattr(inner, "config"):
        model = inner
    if not hasattr(model, "config") or not hasattr(model, "set_attn_implementation"):
        raise UnsupportedModelError(f"{type(model).__name__} is not a transformers model; bico.apply needs one")
    return model


def _attention_modules(model: torch.nn.Module):
    return [m for name, m in model.named_modules() if name.endswith("self_attn")]


def apply(model: torch.nn.Module, backend: str = "auto") -> torch.nn.Module:
    """Switch a loaded Llama-family model (or a peft-wrapped one) to the ``"bico"`` attention and
    return it. Without ``bico_mask`` it then behaves exactly like ``sdpa``; :func:`revert` undoes it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: use one of {', '.join(BACKENDS)}")
    register()
    base = _base_model(model)
    check_supported(base.config)
    layers = _attention_modules(base)
    if not layers:
        raise UnsupportedModelError(f"{type(base).__name__} has no self_attn modules")
    current = base.config._attn_implementation
    if current != "bico":
        base.__dict__["_bico_previous_attn"] = current  # not in config: it would be saved with the model
        base.set_attn_implementation("bico")
    for layer in layers:
        layer.bico_backend = None if backend == "auto" else backend
    return model


def revert(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`apply`: the attention implementation the model had before (``sdpa`` if loaded
    with ``attn_implementation="bico"``)."""
    base = _base_model(model)
    base.set_attn_implementation(base.__dict__.pop("_bico_previous_attn", "sdpa"))
    for layer in _attention_modules(base):
        layer.__dict__.pop("bico_backend", None)
    return model


def require_bico(model: torch.nn.Module) -> None:
    """Refuse to train with a mask on a model whose attention would ignore it (silent causal fallback)."""
    base = _base_model(model)
    if base.config._attn_implementation != "bico":
        raise UnsupportedModelError(
            f"the model runs {base.config._attn_implementation!r} attention, which ignores bico_mask: "
            "call bico.apply(model) or load it with attn_implementation='bico'"
        )
