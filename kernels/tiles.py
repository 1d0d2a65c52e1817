"""Triton device functions shared by the masked-attention kernels (tile loads, mirrored RoPE, scores).

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
    col = side * HALF + within            # real column of tile column c
    pcol = (1 - side) * HALF + within     # column that rotate_half reads for c
    sign = tl.where(side == 0, -1.0, 1.0)  # rotate_half(x) = cat(-x2, x1)
    return col, pcol, within < HALF, sign


@triton.jit
def _load_rows(ptr, rows, stride, col, cvalid, T):
    return tl.load(ptr + rows[:, None] * stride + col[None, :],
                   mask=(rows[:, None] < T) & cvalid[None, :], other=0.0)


@triton.jit
def _mirror(x, ptr, rows, stride, cos_p, sin_p, cs_stride, col, pcol, cvalid, sign, T):
    # R_{-2 theta} x = x*cos2 - rotate_half(x)*sin2 for a tile x already loaded from ptr.
    m = (rows[:, None] < T) & cvalid[None, :]
    xr = tl.load(ptr + rows[:, None] * stride + pcol[None, :], mask=m, other=0.0).to(tl.float32)
    c = tl.load(cos_p + rows[:, None] * cs_stride + col[None, :], mask=m, other=0.0).to(tl.float32)
    s = tl.load(sin_p + rows[:, None] * cs_stride + col[None, :], mask=m, other=0.0).to(tl.float32)
    return (x.to(tl.float32) * (c * c - s * s) - xr * sign[None, :] * (2.0 * s * c)).to(x.dtype)


@triton.jit
def _dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # interpreter: bf16 is stored as raw uint16 and its dot multiplies bit patterns.
        # Products of two bf16 values are exact in fp32, so this matches a bf16 MMA up to summation order.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _scores(q, qm, k, km, up, low, offs_m, offs_n, MIRROR: tl.constexpr, PREC: tl.constexpr,
            UPCAST: tl.constexpr):
    # Raw q.k scores; with MIRROR, pairs j > i use the mirrored tiles. `up`/`low` say whether the
    # tile has any j > i / j <= i pair, so one-sided tiles do a single dot.
    if MIRROR:
        if up:
            s = _dot(qm, tl.trans(km), PREC, UPCAST)
            if low:
                s = tl.where(offs_n[None, :] > offs_m[:, None], s,
                             _dot(q, tl.trans(k), PREC, UPCAST))
        else:
            s = _dot(q, tl.trans(k), PREC, UPCAST)
    else:
        s = _dot(q, tl.trans(k), PREC, UPCAST)
    return s


@triton.jit
def _visible(lo_p, hi_p, offs_m, offs_n, T):
    nm = offs_n < T
    lo = tl.load(lo_p + offs_n, mask=nm, other=1)  # out-of-range keys: empty interval
    hi = tl.load(hi_p + offs_n, mask=nm, other=0)
    return (lo[None, :] <= offs_m[:, None]) & (offs_m[:, None] < hi[None, :]) & (offs_m[:, None] < T)


@triton.jit
def _store_unmirror(ptr, rows, stride, acc, accm, cos_p, sin_p, cs_stride, T,
                    HALF: tl.constexpr, HP: tl.constexpr, R: tl.constexpr):
    # Store acc + R_{+2 theta} accm (the transpose of the mirror rotation), one RoPE half at a time.
    a1, a2 = tl.split(tl.permute(tl.reshape(acc, (R, 2, HP)), (0, 2, 1)))
    m1, m2 = tl.split(tl.permute(tl.reshape(accm, (R, 2, HP)), (0, 2, 1)))
    w = tl.arange(0, HP)
    msk = (rows[:, None] < T) & (w[None, :] < HALF)
    c = tl.load(cos_p + rows[:, None] * cs_stride + w[None, :], mask=msk, other=0.0).to(tl.float32)
    s = tl.load(sin_p + rows[:, None] * cs_stride + w[None, :], mask=msk, other=0.0).to(tl.float32)
    c2 = c * c - s * s
    s2 = 2.0 * s * c
    base = ptr + rows[:, None] * stride + w[None, :]
    tl.store(base, (a1 + m1 * c2 - m2 * s2).to(ptr.dtype.element_ty), mask=msk)
    tl.store(base + HALF, (a2 + m2 * c2 + m1 * s2).to(ptr.dtype.element_ty), mask=msk)
