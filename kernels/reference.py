"""Plain-PyTorch reference for bico's masked attention (the ground truth for the Triton kernel).

Differentiable by autograd, any dtype, any head dim. It materializes the [B, H, T, T] score matrix,
so it is meant for tests and small inputs, not for training at length.
"""
from __future__ import annotations

import math

import torch

__all__ = ["reference_masked_attention", "mirror_rotate", "mirror_rotate_transpose", "rotate_half",
           "dense_visibility"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Hugging Face's rotate_half: cat(-x2, x1) over the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _tables(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    # [B, T, D] tables against [B, H, T, D] activations: broadcast over heads.
    if cos.dim() == x.dim() - 1:
        cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)
    work = torch.promote_types(x.dtype, torch.float32)  # rotate in >= fp32, like the kernel
    cos, sin = cos.to(work), sin.to(work)
    return cos * cos - sin * sin, 2.0 * sin * cos, work


def mirror_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate an already-RoPE'd x (angle +theta) by -2*theta, giving R_{-theta} x_raw.

    ``x*cos2 - rotate_half(x)*sin2`` with cos2 = cos(2 theta), sin2 = sin(2 theta) built from HF's
    cos/sin tables ([B, T, D] tables broadcast over the head dim of a [B, H, T, D] x).
    Computed in at least fp32 and returned in x's dtype.
    """
    cos2, sin2, work = _tables(x, cos, sin)
    xw = x.to(work)
    return (xw * cos2 - rotate_half(xw) * sin2).to(x.dtype)


def mirror_rotate_transpose(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Transpose (= inverse) of :func:`mirror_rotate`: rotation by +2*theta. Routes gradients back."""
    cos2, sin2, work = _tables(x, cos, sin)
    xw = x.to(work)
    return (xw * cos2 + rotate_half(xw) * sin2).to(x.dtype)


def dense_visibility(lo: torch.Tensor, hi: torch.Tensor, T: int | None = None) -> torch.Tensor:
    """Bool [B, T, T] mask: entry (b, i, j) is True iff lo[b, j] <= i < hi[b, j]."""
    T = lo.shape[-1] if T is None else T
    i = torch.arange(T, device=lo.device).view(1, T, 1)
    return (lo[:, None, :] <= i) & (i < hi[:, None, :])


def reference_masked_attention(q, k, v, lo, hi, *, scale=None, mirror_rope=None):
    """Masked attention, eager PyTorch. Same contract as ``bico_kernels.masked_attention``.

    q: [B, Hq, T, D]; k, v: [B, Hkv, T, D] with Hq % Hkv == 0; lo, hi: int [B, T].
    Query row i sees key j iff lo[b, j] <= i < hi[b, j]. Rows that see no key output 0.
    With mirror_rope=(cos, sin), pairs with j > i are scored with mirror_rotate'd q and k.
    Scores are computed in the input dtype (like a fused kernel's dots), softmax in >= fp32.
    """
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    if Hq % Hkv:
        raise ValueError(f"Hq={Hq} is not a multiple of Hkv={Hkv}")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if Hkv != Hq:  # the reference may repeat K/V; the kernel does not
        k = k.repeat_interleave(Hq // Hkv, dim=1)
        v = v.repeat_interleave(Hq // Hkv, dim=1)
    s = q @ k.transpose(-1, -2)
    if mirror_rope is not None:
        cos, sin = mirror_rope
        s_m = mirror_rotate(q, cos, sin) @ mirror_rotate(k, cos, sin).transpose(-1, -2)
        idx = torch.arange(T, device=q.device)
        after = idx.view(1, T) > idx.view(T, 1)  # key j after query i
        s = torch.where(after, s_m, s)
    s = s.to(torch.promote_types(s.dtype, torch.float32)) * scale
    vis = dense_visibility(lo, hi, T).unsqueeze(1)  # [B, 1, T, T]
    # Rows without a visible key get finite dummy scores so softmax (and its backward) stays finite;
    # the multiplication by vis then zeroes them.
    has_key = vis.any(-1, keepdim=True)
    s = s.masked_fill(~vis, float("-inf")).masked_fill(~has_key, 0.0)
    p = torch.softmax(s, dim=-1) * vis
    return (p.to(v.dtype) @ v).to(q.dtype)
