"""Tile classification for the column-interval mask (pure PyTorch, no Triton needed).

Each (query block, key block) tile is SKIP, PARTIAL or FULL, decided from the per-key-block
min/max of lo and hi (FlashMask's rule, bico_kernels' own code). The kernels walk compact per-row-block
and per-column-block lists of non-skipped tiles, so one classification serves the forward, the
dK/dV pass and the dQ pass; build it once per batch and reuse it in every layer (bico's
``IntervalMask.blocks`` caches it on the mask object; no global cache).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["SKIP", "PARTIAL", "FULL", "BlockClassification", "classify_blocks"]

SKIP, PARTIAL, FULL = 0, 1, 2


class BlockClassification(NamedTuple):
    block_m: int
    block_n: int
    seq_len: int
    cls: torch.Tensor  # int8 [B, NM, NN]: SKIP / PARTIAL / FULL
    kv_count: torch.Tensor  # int32 [B, NM]: non-skipped key blocks per query block
    kv_index: torch.Tensor  # int32 [B, NM, NN]: those key blocks first, ascending
    q_count: torch.Tensor  # int32 [B, NN]: non-skipped query blocks per key block
    q_index: torch.Tensor  # int32 [B, NN, NM]
    m_order: torch.Tensor  # int32 [B, NM]: query blocks by decreasing work (longest first)
    n_order: torch.Tensor  # int32 [B, NN]: key blocks by decreasing work
    # Mirrored RoPE splits each list in two phases (pairs with key j > query i use mirrored tiles).
    # Lists are ascending, so the tiles holding such pairs are a suffix of kv_index and a prefix of
    # q_index, and those holding pairs j <= i the other end; tiles on the diagonal are in both.
    kv_low_count: torch.Tensor  # int32 [B, NM]: leading kv_index entries with some pair j <= i
    kv_up_start: torch.Tensor  # int32 [B, NM]: first kv_index entry with some pair j > i
    q_up_count: torch.Tensor  # int32 [B, NN]: leading q_index entries with some pair j > i
    q_low_start: torch.Tensor  # int32 [B, NN]: first q_index entry with some pair j <= i


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def classify_blocks(lo: torch.Tensor, hi: torch.Tensor, block_m: int, block_n: int) -> BlockClassification:
    """Classify every (query block, key block) tile of the mask ``lo[b,j] <= i < hi[b,j]``.

    SKIP: no row of the query block sees any key of the key block (sufficient test
    ``r1 <= min lo`` or ``r0 >= max hi``; exact when lo/hi are monotone inside the key block,
    otherwise a skippable tile may come out PARTIAL, which costs time, never correctness).
    FULL: every (valid) row sees every key (exact: ``max lo <= r0`` and ``r1 <= min hi``).
    Query rows past T are ignored; key columns past T count as hidden, so they never make a tile FULL.
    """
    if lo.shape != hi.shape or lo.dim() != 2:
        raise ValueError(f"lo and hi must both be [B, T], got {tuple(lo.shape)} and {tuple(hi.shape)}")
    B, T = lo.shape
    NM, NN = _cdiv(T, block_m), _cdiv(T, block_n)
    lo, hi = lo.to(torch.int32), hi.to(torch.int32)
    big = T + 1
    # Hidden keys (lo >= hi) must neither widen the block's visible range nor allow FULL.
    empty = lo >= hi
    lo_e = torch.where(empty, torch.full_like(lo, big), lo)
    hi_e = torch.where(empty, torch.full_like(hi, -1), hi)
    pad = NN * block_n - T
    if pad:
        lo_e = torch.nn.functional.pad(lo_e, (0, pad), value=big)
        hi_e = torch.nn.functional.pad(hi_e, (0, pad), value=-1)
    lo_b, hi_b = lo_e.view(B, 1, NN, block_n), hi_e.view(B, 1, NN, block_n)
    lo_min, lo_max = lo_b.amin(-1), lo_b.amax(-1)
    hi_min, hi_max = hi_b.amin(-1), hi_b.amax(-1)
    r0 = torch.arange(NM, device=lo.device, dtype=torch.int32).view(1, NM, 1) * block_m
    r1 = torch.clamp(r0 + block_m, max=T)
    skip = (r1 <= lo_min) | (r0 >= hi_max)
    full = (lo_max <= r0) & (r1 <= hi_min)
    cls = torch.where(skip, SKIP, torch.where(full, FULL, PARTIAL)).to(torch.int8)

    live = cls != SKIP
    # Stable sort on "is skipped" puts the live tiles first, in ascending block order.
    kv_index = torch.sort((~live).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    q_index = torch.sort((~live).transpose(1, 2).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    kv_count = live.sum(-1, dtype=torch.int32)
    q_count = live.sum(1, dtype=torch.int32)
    # Longest-processing-time-first launch order: heavy blocks start first, the tail is short ones.
    m_order = torch.sort(kv_count, dim=-1, descending=True, stable=True).indices.to(torch.int32)
    n_order = torch.sort(q_count, dim=-1, descending=True, stable=True).indices.to(torch.int32)
    # Tile (m, n) holds a pair j > i iff its last key is after its first query, and a pair j <= i
    # iff its first key is at or before its last query (the kernels' `up` and `low`).
    n0 = torch.arange(NN, device=lo.device, dtype=torch.int32).view(1, 1, NN) * block_n
    up = n0 + block_n - 1 > r0
    low = n0 < r0 + block_m
    kv_low_count = (live & low).sum(-1, dtype=torch.int32)
    kv_up_start = (live & ~up).sum(-1, dtype=torch.int32)
    q_up_count = (live & up).sum(1, dtype=torch.int32)
    q_low_start = (live & ~low).sum(1, dtype=torch.int32)
    return BlockClassification(
        block_m,
        block_n,
        T,
        cls.contiguous(),
        kv_count.contiguous(),
        kv_index.contiguous(),
        q_count.contiguous(),
        q_index.contiguous(),
        m_order.contiguous(),
        n_order.contiguous(),
        kv_low_count.contiguous(),
        kv_up_start.contiguous(),
        q_up_count.contiguous(),
        q_low_start.contiguous(),
    )
