"""Plain-PyTorch reference for bico's masked attention (the ground truth for the Triton kernel).

Differentiable by autograd, any dtype, any head dim. It materializes the [B, H, T, T] score matrix
(or SDPA's additive mask), so it serves tests, CPU training at short lengths and GPUs without
Triton, not training at length. bico's attention and the kernel tests use this one implementation.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "reference_masked_attention",
    "mirror_rotate",
    "mirror_rotate_transpose",
    "rotate_half",
    "dense_visibility",
    "additive_mask",
]


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


def additive_mask(lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float [B, 1, T, T] mask for SDPA: 0 where visible, the dtype's minimum elsewhere (a float
    mask rather than a bool one, so that a row with no visible key stays finite)."""
    vis = dense_visibility(lo, hi).unsqueeze(1)
    return torch.zeros(vis.shape, dtype=dtype, device=lo.device).masked_fill(~vis, torch.finfo(dtype).min)


def reference_masked_attention(q, k, v, lo, hi, *, scale=None, mirror_rope=None, dropout=0.0, use_sdpa=False):
    """Masked attention, eager PyTorch. Same contract as ``bico_kernels.masked_attention``.

    q: [B, Hq, T, D]; k, v: [B, Hkv, T, D] with Hq % Hkv == 0; lo, hi: int [B, T].
    Query row i sees key j iff lo[b, j] <= i < hi[b, j]. Rows that see no key output 0.
    With mirror_rope=(cos, sin), pairs with j > i are scored with mirror_rotate'd q and k.

    Two branches of the same math. By default scores are computed explicitly in the input dtype
    (like a fused kernel's dots) with the softmax in >= fp32: what the kernel tests compare
    against. ``use_sdpa=True`` (no mirror only) runs PyTorch's SDPA under an additive mask instead,
    the faster and leaner branch that bico's attention uses for training on CPU. K/V are never
    repeated for GQA.
    """
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    if Hq % Hkv:
        raise ValueError(f"Hq={Hq} is not a multiple of Hkv={Hkv}")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    vis = dense_visibility(lo, hi, T).unsqueeze(1)  # [B, 1, T, T]
    has_key = vis.any(-1, keepdim=True)
    if use_sdpa:
        if mirror_rope is not None:
            raise ValueError("the SDPA branch has no mirrored RoPE: use_sdpa=False")
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=additive_mask(lo, hi, q.dtype), dropout_p=dropout, scale=scale, enable_gqa=Hq != Hkv
        )
        return out * has_key.to(out.dtype)
    g = Hq // Hkv
    # Grouped view: query heads h*g..h*g+g-1 share kv head h, without copying K/V.
    qg, kg, vg = q.reshape(B, Hkv, g, T, D), k[:, :, None], v[:, :, None]
    s = qg @ kg.transpose(-1, -2)
    if mirror_rope is not None:
        cos, sin = mirror_rope
        qm = mirror_rotate(q, cos, sin).reshape(B, Hkv, g, T, D)
        km = mirror_rotate(k, cos, sin)[:, :, None]
        idx = torch.arange(T, device=q.device)
        after = idx.view(1, T) > idx.view(T, 1)  # key j after query i
        s = torch.where(after, qm @ km.transpose(-1, -2), s)
    s = s.to(torch.promote_types(s.dtype, torch.float32)) * scale
    vis_g, has_key_g = vis.unsqueeze(1), has_key.unsqueeze(1)
    # Rows without a visible key get finite dummy scores so softmax (and its backward) stays finite;
    # the multiplication by vis then zeroes them.
    s = s.masked_fill(~vis_g, float("-inf")).masked_fill(~has_key_g, 0.0)
    p = torch.softmax(s, dim=-1) * vis_g
    if dropout:
        p = torch.nn.functional.dropout(p, p=dropout)
    return (p.to(v.dtype) @ vg).reshape(B, Hq, T, v.shape[-1]).to(q.dtype)
