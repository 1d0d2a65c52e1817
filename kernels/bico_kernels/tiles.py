"""Triton device functions shared by the masked-attention kernels (tile loads, scores, masks, rotations).

Head-dim layout: the two RoPE halves of a head (columns [0, D/2) and [D/2, D)) each occupy a
power-of-two half tile of HP columns, so any even D works (D=96 -> two halves of 48 in 2x64) and
rotate_half is a swap of the two half tiles.
"""

import triton
import triton.language as tl


@triton.jit
def _cols(HALF: tl.constexpr, HP: tl.constexpr):
    c = tl.arange(0, 2 * HP)
    side = c // HP
    within = c % HP
    return side * HALF + within, within < HALF  # real column of tile column c, and whether it exists


@triton.jit
def _load_rows(ptr, rows, stride, col, cvalid, T):
    return tl.load(ptr + rows[:, None] * stride + col[None, :], mask=(rows[:, None] < T) & cvalid[None, :], other=0.0)


@triton.jit
def _dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # interpreter: bf16 is stored as raw uint16 and its dot multiplies bit patterns.
        # Products of two bf16 values are exact in fp32, so this matches a bf16 MMA up to summation order.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _query_scores(
    qx,
    kx,
    offs_m,
    offs_n,
    start_m,
    start_n,
    kind,
    lo_p,
    hi_p,
    T,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MIRRORED: tl.constexpr,
    SPLIT: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # Scaled, masked scores [queries, keys] of one tile. With SPLIT (mirror on), a tile on the
    # diagonal keeps only its phase's pairs: j > i when MIRRORED (qx, kx mirrored), else j <= i.
    s = _dot(qx, tl.trans(kx), PREC, UPCAST) * qk_scale
    if kind == 1:  # PARTIAL: elementwise interval test
        s = tl.where(_visible(lo_p, hi_p, offs_m, offs_n, T), s, float("-inf"))
    if SPLIT:
        if (start_n + BLOCK_N - 1 > start_m) & (start_n < start_m + BLOCK_M):
            if MIRRORED:
                s = tl.where(offs_n[None, :] > offs_m[:, None], s, float("-inf"))
            else:
                s = tl.where(offs_n[None, :] <= offs_m[:, None], s, float("-inf"))
    return s


@triton.jit
def _visible(lo_p, hi_p, offs_m, offs_n, T):
    nm = offs_n < T
    lo = tl.load(lo_p + offs_n, mask=nm, other=1)  # out-of-range keys: empty interval
    hi = tl.load(hi_p + offs_n, mask=nm, other=0)
    return (lo[None, :] <= offs_m[:, None]) & (offs_m[:, None] < hi[None, :]) & (offs_m[:, None] < T)


@triton.jit
def _key_visible(lo_n, hi_n, offs_m, T):
    # Key-major visibility [keys, queries] from the keys' intervals, loaded once per key block.
    return (lo_n[:, None] <= offs_m[None, :]) & (offs_m[None, :] < hi_n[:, None]) & (offs_m[None, :] < T)


@triton.jit
def _unmirror(acc, cos_p, sin_p, rows, cs_stride, T, HALF: tl.constexpr, HP: tl.constexpr, R: tl.constexpr):
    # R_{+2 theta} acc per row (the transpose of the mirror rotation), for a gradient accumulated
    # against mirrored tiles: each RoPE half is a half tile, so rotate_half is a swap of the halves.
    a1, a2 = tl.split(tl.permute(tl.reshape(acc, (R, 2, HP)), (0, 2, 1)))
    w = tl.arange(0, HP)
    msk = (rows[:, None] < T) & (w[None, :] < HALF)
    c = tl.load(cos_p + rows[:, None] * cs_stride + w[None, :], mask=msk, other=0.0).to(tl.float32)
    s = tl.load(sin_p + rows[:, None] * cs_stride + w[None, :], mask=msk, other=0.0).to(tl.float32)
    c2 = c * c - s * s
    s2 = 2.0 * s * c
    return tl.reshape(tl.permute(tl.join(a1 * c2 - a2 * s2, a2 * c2 + a1 * s2), (0, 2, 1)), (R, 2 * HP))
