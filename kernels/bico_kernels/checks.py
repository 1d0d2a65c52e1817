"""The fused kernel against the float64 reference: one comparison, shared by the interpreter tests
(``tests/test_kernel_triton.py``, CPU) and the GPU script (``benchmarks/gpu/run.py``, hardware).

A case passes when, for the output and each of dq, dk, dv, the kernel's max abs error against the
float64 reference is at most twice the error of the same-precision PyTorch reference plus an
absolute floor per dtype. Importing this module does not import triton.
"""

from __future__ import annotations

import torch

from .reference import reference_masked_attention

__all__ = ["FLOOR", "OUTPUTS", "rope_tables", "random_inputs", "grads", "compare_to_reference"]

# Absolute floors on top of "2x the error of the same-precision PyTorch reference".
FLOOR = {torch.float32: 1e-6, torch.float16: 5e-4, torch.bfloat16: 5e-3}
OUTPUTS = ("out", "dq", "dk", "dv")


def rope_tables(pos: torch.Tensor, D: int, base: float = 10000.0):
    """HF RoPE tables ``[B, T, D]`` (float64, on pos's device) for integer positions ``[B, T]``."""
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64, device=pos.device) / D)
    f = pos.to(torch.float64)[..., None] * inv
    emb = torch.cat([f, f], dim=-1)
    return emb.cos(), emb.sin()


def random_inputs(B, Hq, Hkv, T, D, g: torch.Generator, device=None):
    """float64 q ``[B, Hq, T, D]``, k, v ``[B, Hkv, T, D]`` and an upstream gradient like q, drawn on
    the CPU from ``g`` (so a case is the same on every device), then moved to ``device``."""
    mk = lambda h: torch.randn(B, h, T, D, generator=g, dtype=torch.float64).to(device)  # noqa: E731
    return mk(Hq), mk(Hkv), mk(Hkv), mk(Hq)


def grads(fn, q, k, v, do, dtype):
    """``[out, dq, dk, dv]`` of ``fn`` at q, k, v cast to ``dtype``, upstream gradient ``do``."""
    qs, ks, vs = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out = fn(qs, ks, vs)
    return [out.detach()] + list(torch.autograd.grad(out, (qs, ks, vs), do.to(dtype)))


def compare_to_reference(q, k, v, do, lo, hi, dtype, tables=None, deterministic=False, **kernel_kwargs):
    """The kernel (``bico_kernels.masked_attention``) vs the float64 reference, forward and
    backward. ``tables``: float64 RoPE ``(cos, sin)`` for mirrored RoPE, or None.

    Returns ``(got, report)``: the kernel's ``[out, dq, dk, dv]`` and per output a dict with
    ``err`` (kernel vs float64), ``err_ref`` (same-dtype reference vs float64), ``bound``
    (``2 * err_ref + FLOOR``), ``finite``, ``shape_ok`` and ``ok``.
    """
    from . import masked_attention

    low = None if tables is None else tuple(t.float() for t in tables)
    ref64 = grads(
        lambda a, b, c: reference_masked_attention(a, b, c, lo, hi, mirror_rope=tables), q, k, v, do, torch.float64
    )
    ref_lp = grads(lambda a, b, c: reference_masked_attention(a, b, c, lo, hi, mirror_rope=low), q, k, v, do, dtype)
    got = grads(
        lambda a, b, c: masked_attention(
            a, b, c, lo, hi, mirror_rope=low, deterministic=deterministic, **kernel_kwargs
        ),
        q,
        k,
        v,
        do,
        dtype,
    )
    report = {}
    for name, x, r, base in zip(OUTPUTS, got, ref64, ref_lp):
        shape_ok = x.dtype == dtype and x.shape == r.shape
        finite = bool(torch.isfinite(x).all())
        err = (x.double() - r).abs().max().item() if shape_ok else float("inf")
        err_ref = (base.double() - r).abs().max().item()
        bound = 2 * err_ref + FLOOR[dtype]
        report[name] = {
            "err": err,
            "err_ref": err_ref,
            "bound": bound,
            "finite": finite,
            "shape_ok": shape_ok,
            "ok": shape_ok and finite and err <= bound,
        }
    return got, report
