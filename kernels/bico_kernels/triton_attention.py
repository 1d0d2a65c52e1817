"""Fused masked attention in Triton: forward, dK/dV and dQ kernels plus the autograd Function.

Mask: query row i sees key j iff lo[b, j] <= i < hi[b, j]. Tiles are walked through the compact
lists of :func:`bico_kernels.blocks.classify_blocks`; FULL tiles skip the elementwise mask.
Optional mirrored RoPE (BICO): pairs with j > i are scored with q, k rotated by -2*theta. The
rotated tensors are made once per call on the host (:class:`Mirror`); each kernel walks the tiles
holding pairs j <= i and those holding pairs j > i as two loop phases (split points from the
classification), so one query tile and one gradient accumulator are live at a time.
Device helpers (tile loads, scores and masks, rotating a gradient back, the head-dim layout) are in
tiles.py; launch configs in configs.py, config_table.py and tuning.py.
"""
from __future__ import annotations

import logging
import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
import triton.testing

from . import log_once
from .blocks import BlockClassification, classify_blocks
from .configs import KernelConfig, Variant, head_dim_tile, interpreter_config
from .reference import mirror_rotate, mirror_rotate_transpose, reference_masked_attention
from .tiles import _cols, _dot, _key_visible, _load_rows, _query_scores, _unmirror
from .tuning import candidates, table_config, tuned_config

__all__ = ["masked_attention", "MaskedAttentionFunction", "Launch", "fwd_launch", "dkdv_launch", "dq_launch"]

logger = logging.getLogger(__name__)
_LOG2E = 1.4426950408889634
# @triton.jit picks interpreter or compiler when this module is imported, so record it now.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _key_block(qx, kx_p, v_p, nb, kind, offs_m, start_m, lo_p, hi_p, skt, svt, col, cvalid, T, qk_scale,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MIRRORED: tl.constexpr, SPLIT: tl.constexpr,
               PREC: tl.constexpr, UPCAST: tl.constexpr):
    # One key block against the query tile (forward and dQ pass): its k and v tiles and the
    # masked, scaled scores.
    start_n = nb * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(kx_p, offs_n, skt, col, cvalid, T)
    v = _load_rows(v_p, offs_n, svt, col, cvalid, T)
    s = _query_scores(qx, k, offs_m, offs_n, start_m, start_n, kind, lo_p, hi_p, T, qk_scale,
                      BLOCK_M, BLOCK_N, MIRRORED, SPLIT, PREC, UPCAST)
    return k, v, s


@triton.jit
def _fwd_tile(acc, m_i, l_i, qx, kx_p, v_p, nb, kind, offs_m, start_m, lo_p, hi_p, skt, svt, col, cvalid, T,
              qk_scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MIRRORED: tl.constexpr, SPLIT: tl.constexpr,
              PREC: tl.constexpr, UPCAST: tl.constexpr):
    # Online-softmax update with one key block (exp2 domain, fp32 statistics).
    k, v, s = _key_block(qx, kx_p, v_p, nb, kind, offs_m, start_m, lo_p, hi_p, skt, svt, col, cvalid, T, qk_scale,
                         BLOCK_M, BLOCK_N, MIRRORED, SPLIT, PREC, UPCAST)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: avoid inf - inf
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PREC, UPCAST)
    return acc, m_new, l_i


@triton.jit
def _fwd_kernel(Q, K, V, QM, KM, O, LSE, LO, HI, CLS, KV_CNT, KV_IDX, M_ORD, KV_LOW_CNT, KV_UP_START,  # noqa: E741 (O: the output pointer)
                sqb, sqh, sqt, skb, skh, skt, svb, svh, svt,
                H, GROUP, T, NM, NN, qk_scale,
                HALF: tl.constexpr, HP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                MIRROR: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # One program per (query block, batch, head). With MIRROR, the key blocks holding pairs j <= i
    # run first with q and k, then those holding pairs j > i with the mirrored tiles QM and KM
    # (rotated once on the host, laid out like q and k), so only one query tile is live and no
    # RoPE table is read in the loop; tiles on the diagonal are visited by both phases.
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    mb = tl.load(M_ORD + b * NM + tl.program_id(0))
    start_m = mb * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    col, cvalid = _cols(HALF, HP)
    b64 = b.to(tl.int64)
    q_off = b64 * sqb + h * sqh
    k_off = b64 * skb + hk * skh
    v_p = V + b64 * svb + hk * svh
    lo_p = LO + b * T
    hi_p = HI + b * T
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, 2 * HP], tl.float32)
    row = b * NM + mb
    cnt = tl.load(KV_CNT + row)
    low_cnt = cnt
    if MIRROR:
        low_cnt = tl.load(KV_LOW_CNT + row)
    q = _load_rows(Q + q_off, offs_m, sqt, col, cvalid, T)
    for t in range(0, low_cnt):
        nb = tl.load(KV_IDX + row * NN + t)
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, K + k_off, v_p, nb, tl.load(CLS + row * NN + nb), offs_m,
                                  start_m, lo_p, hi_p, skt, svt, col, cvalid, T, qk_scale,
                                  BLOCK_M, BLOCK_N, False, MIRROR, PREC, UPCAST)
    if MIRROR:
        qm = _load_rows(QM + q_off, offs_m, sqt, col, cvalid, T)
        for t in range(tl.load(KV_UP_START + row), cnt):
            nb = tl.load(KV_IDX + row * NN + t)
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, qm, KM + k_off, v_p, nb, tl.load(CLS + row * NN + nb), offs_m,
                                      start_m, lo_p, hi_p, skt, svt, col, cvalid, T, qk_scale,
                                      BLOCK_M, BLOCK_N, True, True, PREC, UPCAST)
    empty = l_i == 0.0  # no visible key: output 0, lse = +inf so exp2(s - lse) = 0 in backward
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(O + q_off + offs_m[:, None] * sqt + col[None, :], out.to(O.dtype.element_ty),  # O has q's strides
             mask=(offs_m[:, None] < T) & cvalid[None, :])
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, tl.where(empty, float("inf"), m_i + tl.log2(l_safe)),
             mask=offs_m < T)


@triton.jit
def _dkdv_tile(dk, dv, kx, v, lo_n, hi_n, offs_n, start_n, mb, kind, qx_p, do_p, dq_p, lse_p, delta_p,
               sqt, sdt, col, cvalid, T, qk_scale, scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               MIRRORED: tl.constexpr, SPLIT: tl.constexpr, ATOMIC_DQ: tl.constexpr, PREC: tl.constexpr,
               UPCAST: tl.constexpr):
    # One (key block, query block) tile, key-major: scores are S^T [keys, queries], so P^T and dS^T
    # are the register A operands of the dV and dK dots as computed (no transposes through shared
    # memory). MIRRORED: kx and the query tiles are the mirrored ones; SPLIT: the mirror is on, so a
    # tile on the diagonal keeps only this phase's pairs (j > i when MIRRORED, else j <= i); the
    # other phase visits it again for the rest.
    start_m = mb * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(qx_p, offs_m, sqt, col, cvalid, T)
    do = _load_rows(do_p, offs_m, sdt, col, cvalid, T)
    lse = tl.load(lse_p + offs_m, mask=offs_m < T, other=0.0)
    delta = tl.load(delta_p + offs_m, mask=offs_m < T, other=0.0)
    st = _dot(kx, tl.trans(q), PREC, UPCAST) * qk_scale
    if kind == 1:  # PARTIAL: elementwise interval test
        st = tl.where(_key_visible(lo_n, hi_n, offs_m, T), st, float("-inf"))
    if SPLIT:
        if (start_n + BLOCK_N - 1 > start_m) & (start_n < start_m + BLOCK_M):  # on the diagonal
            if MIRRORED:
                st = tl.where(offs_n[:, None] > offs_m[None, :], st, float("-inf"))
            else:
                st = tl.where(offs_n[:, None] <= offs_m[None, :], st, float("-inf"))
    pt = tl.exp2(st - lse[None, :])
    dv += _dot(pt.to(do.dtype), do, PREC, UPCAST)
    dst = (pt * (_dot(v, tl.trans(do), PREC, UPCAST) - delta[None, :])).to(q.dtype)
    dk += _dot(dst, q, PREC, UPCAST)
    if ATOMIC_DQ:
        tl.atomic_add(dq_p + offs_m[:, None] * sqt + col[None, :], _dot(tl.trans(dst), kx, PREC, UPCAST) * scale,
                      mask=(offs_m[:, None] < T) & cvalid[None, :])
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, QM, KM, DO, DK, DV, DQ, DQM, LSE, DELTA, LO, HI, COS, SIN, CLS, Q_CNT, Q_IDX, N_ORD,
                     Q_UP_CNT, Q_LOW_START,
                     sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt, scb, sct,
                     H, HKV, GROUP, T, NM, NN, qk_scale, scale,
                     HALF: tl.constexpr, HP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     MIRROR: tl.constexpr, ATOMIC_DQ: tl.constexpr, PREC: tl.constexpr,
                     UPCAST: tl.constexpr):
    # One program per (key block, batch, kv head); loops over the GROUP query heads sharing it, so
    # dK/dV need neither atomics nor a repeated K/V. With ATOMIC_DQ, dQ is added here too (FA2 style;
    # the mirrored part into DQM, rotated back on the host).
    # With MIRROR, two phases keep one dK accumulator live instead of two: first the tiles holding
    # pairs j > i (mirrored tiles QM, KM) accumulate the gradient w.r.t. the mirrored keys, which is
    # then rotated back (R_{+2 theta}) once; the tiles holding pairs j <= i add the plain gradient.
    bhk = tl.program_id(1)
    b = bhk // HKV
    hk = bhk % HKV
    nb = tl.load(N_ORD + b * NN + tl.program_id(0))
    start_n = nb * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    col, cvalid = _cols(HALF, HP)
    b64 = b.to(tl.int64)
    k_off = b64 * skb + hk * skh
    v = _load_rows(V + b64 * svb + hk * svh, offs_n, svt, col, cvalid, T)
    nmask = offs_n < T
    lo_n = tl.load(LO + b * T + offs_n, mask=nmask, other=1)  # keys past T: empty interval
    hi_n = tl.load(HI + b * T + offs_n, mask=nmask, other=0)
    dk = tl.zeros([BLOCK_N, 2 * HP], tl.float32)
    dv = tl.zeros([BLOCK_N, 2 * HP], tl.float32)
    colrow = b * NN + nb
    cnt = tl.load(Q_CNT + colrow)
    low_start = 0
    if MIRROR:
        km = _load_rows(KM + k_off, offs_n, skt, col, cvalid, T)
        up_cnt = tl.load(Q_UP_CNT + colrow)
        for g in range(0, GROUP):
            h = hk * GROUP + g
            q_off = b64 * sqb + h * sqh
            stat = (b64 * H + h) * T
            for t in range(0, up_cnt):
                mb = tl.load(Q_IDX + colrow * NM + t)
                dk, dv = _dkdv_tile(dk, dv, km, v, lo_n, hi_n, offs_n, start_n, mb,
                                    tl.load(CLS + (b * NM + mb) * NN + nb), QM + q_off, DO + b64 * sdb + h * sdh,
                                    DQM + q_off, LSE + stat, DELTA + stat, sqt, sdt, col, cvalid, T, qk_scale, scale,
                                    BLOCK_M, BLOCK_N, True, True, ATOMIC_DQ, PREC, UPCAST)
        dk = _unmirror(dk, COS + b64 * scb, SIN + b64 * scb, offs_n, sct, T, HALF, HP, BLOCK_N)
        low_start = tl.load(Q_LOW_START + colrow)
    k = _load_rows(K + k_off, offs_n, skt, col, cvalid, T)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_off = b64 * sqb + h * sqh
        stat = (b64 * H + h) * T
        for t in range(low_start, cnt):
            mb = tl.load(Q_IDX + colrow * NM + t)
            dk, dv = _dkdv_tile(dk, dv, k, v, lo_n, hi_n, offs_n, start_n, mb,
                                tl.load(CLS + (b * NM + mb) * NN + nb), Q + q_off, DO + b64 * sdb + h * sdh,
                                DQ + q_off, LSE + stat, DELTA + stat, sqt, sdt, col, cvalid, T, qk_scale, scale,
                                BLOCK_M, BLOCK_N, False, MIRROR, ATOMIC_DQ, PREC, UPCAST)
    nmask2 = nmask[:, None] & cvalid[None, :]
    tl.store(DV + b64 * svb + hk * svh + offs_n[:, None] * svt + col[None, :], dv.to(DV.dtype.element_ty),
             mask=nmask2)
    tl.store(DK + k_off + offs_n[:, None] * skt + col[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=nmask2)  # DK has k's strides


@triton.jit
def _dq_tile(dq, qx, do, lse, delta, kx_p, v_p, nb, kind, offs_m, start_m, lo_p, hi_p, skt, svt, col, cvalid, T,
             qk_scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MIRRORED: tl.constexpr, SPLIT: tl.constexpr,
             PREC: tl.constexpr, UPCAST: tl.constexpr):
    k, v, s = _key_block(qx, kx_p, v_p, nb, kind, offs_m, start_m, lo_p, hi_p, skt, svt, col, cvalid, T, qk_scale,
                         BLOCK_M, BLOCK_N, MIRRORED, SPLIT, PREC, UPCAST)
    p = tl.exp2(s - lse[:, None])
    ds = p * (_dot(do, tl.trans(v), PREC, UPCAST) - delta[:, None])
    dq += _dot(ds.to(k.dtype), k, PREC, UPCAST)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, QM, KM, DO, DQ, LSE, DELTA, LO, HI, COS, SIN, CLS, KV_CNT, KV_IDX, M_ORD, KV_LOW_CNT,
                   KV_UP_START, sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt, scb, sct,
                   H, GROUP, T, NM, NN, qk_scale, scale,
                   HALF: tl.constexpr, HP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   MIRROR: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # Deterministic dQ: one program per query block owns its rows; fixed summation order. With
    # MIRROR, the mirrored phase runs first into the one accumulator, which is rotated back
    # (R_{+2 theta}) before the plain phase adds to it, as in the dK/dV kernel.
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    mb = tl.load(M_ORD + b * NM + tl.program_id(0))
    start_m = mb * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    col, cvalid = _cols(HALF, HP)
    b64 = b.to(tl.int64)
    q_off = b64 * sqb + h * sqh
    k_off = b64 * skb + hk * skh
    v_p = V + b64 * svb + hk * svh
    lo_p = LO + b * T
    hi_p = HI + b * T
    do = _load_rows(DO + b64 * sdb + h * sdh, offs_m, sdt, col, cvalid, T)
    stat = bh.to(tl.int64) * T
    lse = tl.load(LSE + stat + offs_m, mask=offs_m < T, other=0.0)
    delta = tl.load(DELTA + stat + offs_m, mask=offs_m < T, other=0.0)
    dq = tl.zeros([BLOCK_M, 2 * HP], tl.float32)
    row = b * NM + mb
    cnt = tl.load(KV_CNT + row)
    low_cnt = cnt
    if MIRROR:
        qm = _load_rows(QM + q_off, offs_m, sqt, col, cvalid, T)
        for t in range(tl.load(KV_UP_START + row), cnt):
            nb = tl.load(KV_IDX + row * NN + t)
            dq = _dq_tile(dq, qm, do, lse, delta, KM + k_off, v_p, nb, tl.load(CLS + row * NN + nb), offs_m, start_m,
                          lo_p, hi_p, skt, svt, col, cvalid, T, qk_scale, BLOCK_M, BLOCK_N, True, True, PREC, UPCAST)
        dq = _unmirror(dq, COS + b64 * scb, SIN + b64 * scb, offs_m, sct, T, HALF, HP, BLOCK_M)
        low_cnt = tl.load(KV_LOW_CNT + row)
    q = _load_rows(Q + q_off, offs_m, sqt, col, cvalid, T)
    for t in range(0, low_cnt):
        nb = tl.load(KV_IDX + row * NN + t)
        dq = _dq_tile(dq, q, do, lse, delta, K + k_off, v_p, nb, tl.load(CLS + row * NN + nb), offs_m, start_m,
                      lo_p, hi_p, skt, svt, col, cvalid, T, qk_scale, BLOCK_M, BLOCK_N, False, MIRROR, PREC, UPCAST)
    tl.store(DQ + q_off + offs_m[:, None] * sqt + col[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=(offs_m[:, None] < T) & cvalid[None, :])  # DQ has q's strides


# ----------------------------------------------------------------------------- host side

def _hp(D: int) -> int:
    return head_dim_tile(D) // 2  # half-tile width; 2*HP >= 16 for tl.dot


def _kernel_ready(x: torch.Tensor) -> torch.Tensor:
    # Kernels index [b, h, t] by strides and need unit stride on D; outputs are allocated with
    # empty_like, which copies strides only for dense tensors, so copy anything else once.
    dims = sorted((st, n) for n, st in zip(x.shape, x.stride()) if n != 1)
    expect, dense = 1, x.stride(-1) == 1
    for st, n in dims:
        dense &= st == expect
        expect *= n
    return x if dense else x.contiguous()


def _upcast(q):
    return _INTERPRETED and q.dtype == torch.bfloat16


def _strides3(x):
    return x.stride(0), x.stride(1), x.stride(2)


_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


class Launch(NamedTuple):
    """One kernel launch exactly as the runtime issues it. The compile report specialises these same
    arguments (pointer alignment, which ints are 1 or divisible by 16), so it compiles what a GPU run
    compiles."""
    kernel: object
    grid: tuple
    args: tuple
    constexprs: dict
    config: KernelConfig

    def __call__(self):
        self.kernel[self.grid](*self.args, **self.constexprs, num_warps=self.config.num_warps,
                               num_stages=self.config.num_stages)


class Mirror(NamedTuple):
    """Mirrored RoPE inputs of the kernels: q and k rotated by -2 theta once per call (laid out like q
    and k, so the kernels load them like q and k), and the tables, for rotating gradients back."""
    qm: torch.Tensor
    km: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


def mirrored(q, k, cos, sin) -> Mirror:
    """:class:`Mirror` for q, k with the [B, T, D] RoPE tables cos, sin."""
    def like(x):
        xm = mirror_rotate(x, cos, sin)
        return xm if xm.stride() == x.stride() else torch.empty_like(x).copy_(xm)  # kernels use x's strides
    return Mirror(like(q), like(k), cos, sin)


def _mirror_args(q, k, lo, mirror):
    # (QM, KM, COS, SIN, scb, sct); unused stand-ins when the mirror is off
    if mirror is None:
        return q, k, lo, lo, 0, 0
    return mirror.qm, mirror.km, mirror.cos, mirror.sin, mirror.cos.stride(0), mirror.cos.stride(1)


def _constexprs(q, blocks, mirror, prec):
    D = q.shape[-1]
    return dict(HALF=D // 2, HP=_hp(D), BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, MIRROR=mirror is not None,
                PREC=prec, UPCAST=_upcast(q))


def fwd_launch(q, k, v, o, lse, lo, hi, mirror, scale, blocks, prec, config) -> Launch:
    B, H, T, _ = q.shape
    NM, NN = blocks.cls.shape[1], blocks.cls.shape[2]
    qm, km = _mirror_args(q, k, lo, mirror)[:2]
    args = (q, k, v, qm, km, o, lse, lo, hi, blocks.cls, blocks.kv_count, blocks.kv_index, blocks.m_order,
            blocks.kv_low_count, blocks.kv_up_start, *_strides3(q), *_strides3(k), *_strides3(v),
            H, H // k.shape[1], T, NM, NN, scale * _LOG2E)
    return Launch(_fwd_kernel, (NM, B * H), args, _constexprs(q, blocks, mirror, prec), config)


def dkdv_launch(q, k, v, do, dk, dv, dq32, dqm, lse, delta, lo, hi, mirror, scale, blocks, prec, config,
                atomic_dq) -> Launch:
    B, H, T, _ = q.shape
    hkv = k.shape[1]
    NM, NN = blocks.cls.shape[1], blocks.cls.shape[2]
    qm, km, cs, sn, scb, sct = _mirror_args(q, k, lo, mirror)
    args = (q, k, v, qm, km, do, dk, dv, dq32, dqm, lse, delta, lo, hi, cs, sn,
            blocks.cls, blocks.q_count, blocks.q_index, blocks.n_order, blocks.q_up_count, blocks.q_low_start,
            *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do), scb, sct,
            H, hkv, H // hkv, T, NM, NN, scale * _LOG2E, scale)
    return Launch(_bwd_dkdv_kernel, (NN, B * hkv), args,
                  dict(_constexprs(q, blocks, mirror, prec), ATOMIC_DQ=atomic_dq), config)


def dq_launch(q, k, v, do, dq, lse, delta, lo, hi, mirror, scale, blocks, prec, config) -> Launch:
    B, H, T, _ = q.shape
    hkv = k.shape[1]
    NM, NN = blocks.cls.shape[1], blocks.cls.shape[2]
    qm, km, cs, sn, scb, sct = _mirror_args(q, k, lo, mirror)
    args = (q, k, v, qm, km, do, dq, lse, delta, lo, hi, cs, sn,
            blocks.cls, blocks.kv_count, blocks.kv_index, blocks.m_order, blocks.kv_low_count, blocks.kv_up_start,
            *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do), scb, sct,
            H, H // hkv, T, NM, NN, scale * _LOG2E, scale)
    return Launch(_bwd_dq_kernel, (NM, B * H), args, _constexprs(q, blocks, mirror, prec), config)


class _Plan(NamedTuple):
    """How one call launches its kernels: the caller's overrides, else per-kernel configs."""
    blocks: BlockClassification | None  # caller's classification: its block sizes win for every kernel
    override: KernelConfig              # caller's block_m/block_n/num_warps/num_stages; None fields: not set
    deterministic: bool                 # no timing-based choice: tile sizes set the summation order
    classify: object                    # (block_m, block_n) -> BlockClassification, cached by the caller

    def config(self, variant: Variant, seq_len: int, device: torch.device, bench) -> KernelConfig:
        if device.type != "cuda":
            chosen = interpreter_config()
        elif self.blocks is not None or any(x is not None for x in self.override) or self.deterministic:
            chosen = table_config(variant)  # an explicit choice is not second-guessed by tuning
        else:
            scope = f"{torch.cuda.get_device_name(device)}, triton {triton.__version__}"
            chosen = tuned_config(variant, seq_len, candidates(variant), bench, scope)
        if self.blocks is not None:
            chosen = chosen._replace(block_m=self.blocks.block_m, block_n=self.blocks.block_n)
        return KernelConfig(*(o if o is not None else c for o, c in zip(self.override, chosen)))

    def classification(self, config: KernelConfig) -> BlockClassification:
        return self.blocks if self.blocks is not None else self.classify(config.block_m, config.block_n)


def _call_cache(lo, hi):
    """A classifier cached for this call only (forward and backward, every tile size they use)."""
    memo: dict = {}

    def classify(block_m, block_n):
        if (block_m, block_n) not in memo:
            memo[(block_m, block_n)] = classify_blocks(lo, hi, block_m, block_n)
        return memo[(block_m, block_n)]
    return classify


def _choose(plan, variant, q, make):
    """Config for one kernel of this call; `make(config, blocks, scratch)` builds its Launch. Tuning
    (CUDA only) launches candidates into scratch outputs (atomic dQ would otherwise accumulate into
    the real one)."""
    def bench(c):
        return triton.testing.do_bench(make(c, plan.classification(c), True), warmup=5, rep=25)

    config = plan.config(variant, q.shape[2], q.device, bench)
    return make(config, plan.classification(config), False)


class MaskedAttentionFunction(torch.autograd.Function):
    """autograd Function; use :func:`masked_attention` rather than calling ``apply`` directly."""

    @staticmethod
    def forward(ctx, q, k, v, lo, hi, cos, sin, scale, plan, deterministic):
        B, H, T, D = q.shape
        prec = "tf32" if q.dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest" else "ieee"
        o = torch.empty_like(q)
        lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)

        mirror = mirrored(q, k, cos, sin) if cos is not None else None

        def make(config, blocks, scratch):
            out = (torch.empty_like(o), torch.empty_like(lse)) if scratch else (o, lse)
            return fwd_launch(q, k, v, *out, lo, hi, mirror, scale, blocks, prec, config)

        _choose(plan, Variant("fwd", D, _DTYPE_NAMES[q.dtype], mirror is not None, False), q, make)()
        ctx.save_for_backward(q, k, v, o, lse, lo, hi, cos, sin)
        ctx.meta = (scale, plan, deterministic, prec)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, lo, hi, cos, sin = ctx.saved_tensors
        scale, plan, deterministic, prec = ctx.meta
        D = q.shape[-1]
        mirror = mirrored(q, k, cos, sin) if cos is not None else None  # recomputed: not kept from forward
        dtype = _DTYPE_NAMES[q.dtype]
        if do.stride(-1) != 1:
            do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1).contiguous()  # rowsum(dO * O), [B, H, T]
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        if deterministic:
            dq = torch.empty_like(q)
            dq32 = dqm = dq  # not touched by the dK/dV kernel
        else:  # fp32 accumulators for atomic adds; mirrored part kept apart, rotated back below
            dq32 = torch.zeros_like(q, dtype=torch.float32)
            dqm = torch.zeros_like(dq32) if mirror is not None else dq32

        def make_dkdv(config, blocks, scratch):
            outs = (dk, dv, dq32, dqm)
            if scratch:  # fresh outputs; dQ buffers only where this kernel writes them (atomic mode)
                dq_s = dq32 if deterministic else torch.empty_like(dq32)
                dqm_s = torch.empty_like(dqm) if mirror is not None and not deterministic else dq_s
                outs = (torch.empty_like(dk), torch.empty_like(dv), dq_s, dqm_s)
            return dkdv_launch(q, k, v, do, *outs, lse, delta, lo, hi, mirror, scale, blocks, prec, config,
                               not deterministic)

        def make_dq(config, blocks, scratch):
            return dq_launch(q, k, v, do, torch.empty_like(dq) if scratch else dq, lse, delta, lo, hi, mirror,
                             scale, blocks, prec, config)

        _choose(plan, Variant("dkdv", D, dtype, mirror is not None, not deterministic), q, make_dkdv)()
        if deterministic:
            _choose(plan, Variant("dq", D, dtype, mirror is not None, False), q, make_dq)()
        else:
            if mirror is not None:
                dq32 = dq32 + mirror_rotate_transpose(dqm, cos, sin)
            dq = dq32.to(q.dtype)
        return dq, dk, dv, None, None, None, None, None, None, None


def masked_attention(q, k, v, lo, hi, *, scale=None, mirror_rope=None, deterministic=False, blocks=None,
                     classify=None, block_m=None, block_n=None, num_warps=None, num_stages=None):
    """Fused masked attention (Triton). See ``bico_kernels.reference_masked_attention`` for the math.

    q: [B, Hq, T, D]; k, v: [B, Hkv, T, D] (GQA, Hq % Hkv == 0); lo, hi: int32 [B, T] on q's device;
    mirror_rope: None or (cos, sin),
    each [B, T, D]. ``deterministic``: bitwise-reproducible backward (separate dQ pass instead of
    atomics; it also skips timing-based config choice, which would make the summation order depend
    on the run). Launch configs come from ``bico_kernels.config_table`` (tuned on the first GPU call,
    see ``bico_kernels.tuning``); ``blocks`` (a precomputed :func:`classify_blocks` result, whose block
    sizes then win), ``block_m``, ``block_n``, ``num_warps`` and ``num_stages`` override them for all
    three kernels. ``classify(block_m, block_n)``: where the tile classification of lo/hi comes from
    when ``blocks`` is not given (e.g. ``IntervalMask.blocks``, which caches it on the mask so that
    every layer and the backward share it); default: classified once per call and tile size.
    """
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected q [B,Hq,T,D], k=v [B,Hkv,T,D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    B, H, T, D = q.shape
    if k.shape[0] != B or k.shape[2:] != q.shape[2:] or H % k.shape[1]:
        raise ValueError(f"k/v {tuple(k.shape)} do not match q {tuple(q.shape)} (need Hq % Hkv == 0)")
    if q.dtype != k.dtype or q.dtype != v.dtype or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"q, k, v must share one of fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if D % 2 or not 16 <= D <= 256:
        raise ValueError(f"head dim must be even and in [16, 256], got {D}")
    if lo.shape != (B, T) or hi.shape != (B, T):
        raise ValueError(f"lo/hi must be [B, T] = {(B, T)}, got {tuple(lo.shape)}, {tuple(hi.shape)}")
    if q.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError("masked_attention needs CUDA tensors, or TRITON_INTERPRET=1 set before bico_kernels loads triton")
    if _routes_to_reference(q):
        log_once(logger, "bico_kernels: fp32 on CUDA runs the PyTorch reference path (the fp32 kernels spill and skip "
                  "tensor cores; use bf16 or fp16 for the fused kernel)")
        return reference_masked_attention(q, k, v, lo, hi, scale=scale, mirror_rope=mirror_rope)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    lo = lo.to(device=q.device, dtype=torch.int32).contiguous()  # no-op (same object) when already so
    hi = hi.to(device=q.device, dtype=torch.int32).contiguous()
    cos = sin = None
    if mirror_rope is not None:
        cos, sin = (t.to(q.device).contiguous() for t in mirror_rope)
        if cos.shape != (B, T, D) or sin.shape != (B, T, D):
            raise ValueError(f"mirror_rope tables must be [B, T, D] = {(B, T, D)}, got {tuple(cos.shape)}")
    if blocks is not None and (not isinstance(blocks, BlockClassification) or blocks.seq_len != T
                               or blocks.cls.shape[0] != B or blocks.cls.device != q.device
                               or (block_m or blocks.block_m) != blocks.block_m
                               or (block_n or blocks.block_n) != blocks.block_n):
        raise ValueError("blocks does not match this call (batch, length, device or block sizes)")
    plan = _Plan(blocks, KernelConfig(block_m, block_n, num_warps, num_stages), deterministic,
                 classify or _call_cache(lo, hi))
    q, k, v = _kernel_ready(q), _kernel_ready(k), _kernel_ready(v)
    return MaskedAttentionFunction.apply(q, k, v, lo, hi, cos, sin, scale, plan, deterministic)


def _routes_to_reference(q) -> bool:
    # fp32 compiled for sm_90a: no wgmma with IEEE dots, tens of KB spilled per thread (docs/kernel.md,
    # dtypes), and TF32 would change the numbers users asked for. The interpreter keeps
    # running the fp32 kernels: they are the tightest correctness check of the kernel code.
    return q.dtype == torch.float32 and q.device.type == "cuda"
