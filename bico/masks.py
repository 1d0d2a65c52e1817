"""Attention masks as column intervals.

A mask of one sequence of length T is two int32 vectors ``lo``, ``hi`` of length T: query
row ``i`` may see key ``j`` iff ``lo[j] <= i < hi[j]``. An empty range (``lo >= hi``) hides
key ``j`` from everyone (padding, BICO's masked tokens). Every mask bico uses (causal,
bidirectional, prefix-LM, GLM, packed documents) is of this form, costs O(T) memory instead
of O(T^2), and lets the fused kernel classify whole tiles from per-block min/max.

Builders return 1-D tensors for one sequence; :func:`concat` packs documents (shifting each
document's intervals by its offset, so no document ever sees another) and :func:`pad`
appends hidden keys. Batches are stacked ``[B, T]`` tensors.
"""
from __future__ import annotations

from typing import Sequence

import torch

Intervals = tuple[torch.Tensor, torch.Tensor]
INDEX_DTYPE = torch.int32


def _full(length: int, value: int) -> torch.Tensor:
    return torch.full((length,), value, dtype=INDEX_DTYPE)


def causal(length: int) -> Intervals:
    """Key j is seen by rows j..T-1."""
    return torch.arange(length, dtype=INDEX_DTYPE), _full(length, length)


def bidirectional(length: int) -> Intervals:
    """Every row sees every key."""
    return _full(length, 0), _full(length, length)


def prefix_lm(length: int, prefix_length: int) -> Intervals:
    """Bidirectional over the first ``prefix_length`` tokens, causal after them."""
    if not 0 <= prefix_length <= length:
        raise ValueError(f"prefix_length {prefix_length} outside [0, {length}]")
    lo, hi = causal(length)
    lo[:prefix_length] = 0
    return lo, hi


def hide_keys(intervals: Intervals, hidden: torch.Tensor) -> Intervals:
    """Hide the keys where ``hidden`` is True from every query (empty range)."""
    lo, hi = intervals[0].clone(), intervals[1].clone()
    hidden = hidden.to(torch.bool)
    lo[hidden] = 0
    hi[hidden] = 0
    return lo, hi


def bico(length: int, hidden: torch.Tensor) -> Intervals:
    """BICO's denoising mask: bidirectional, with the masked positions hidden as keys."""
    return hide_keys(bidirectional(length), hidden)


def concat(documents: Sequence[Intervals]) -> Intervals:
    """Pack documents into one sequence; each keeps its own mask and sees nothing outside."""
    los, his, offset = [], [], 0
    for lo, hi in documents:
        n = lo.numel()
        empty = lo >= hi
        # Shift the row range into this document's slot; empty ranges stay empty (0, 0).
        los.append(torch.where(empty, 0, lo + offset).to(INDEX_DTYPE))
        his.append(torch.where(empty, 0, hi + offset).to(INDEX_DTYPE))
        offset += n
    if not los:
        return _full(0, 0), _full(0, 0)
    return torch.cat(los), torch.cat(his)


def hidden(length: int) -> Intervals:
    """``length`` keys that nobody sees (padding)."""
    return _full(length, 0), _full(length, 0)


def pad(intervals: Intervals, length: int, side: str = "right") -> Intervals:
    """Pad one sequence's mask to ``length`` with hidden keys on ``side``."""
    n = intervals[0].numel()
    if n > length:
        raise ValueError(f"sequence of {n} tokens does not fit in {length}")
    filler = hidden(length - n)
    return concat([intervals, filler] if side == "right" else [filler, intervals])


def stack(masks: Sequence[Intervals]) -> Intervals:
    """Stack equal-length masks into ``[B, T]`` tensors."""
    return torch.stack([m[0] for m in masks]), torch.stack([m[1] for m in masks])


def to_dense(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``[B, T, T]`` indexed (batch, query, key); True = may attend."""
    if lo.dim() == 1:
        lo, hi = lo[None], hi[None]
    rows = torch.arange(lo.shape[-1], device=lo.device).view(1, -1, 1)
    return (lo[:, None, :] <= rows) & (rows < hi[:, None, :])


def to_additive(lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float additive mask ``[B, 1, T, T]``: 0 where allowed, the dtype's minimum elsewhere.

    A float mask (not a boolean one) because eager attention adds the mask to the scores.
    """
    allowed = to_dense(lo, hi)[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=lo.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def rows_with_keys(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: which query rows see at least one key (others output 0).

    O(T): +1 at each key's ``lo``, -1 at its ``hi``, then a running sum counts the keys
    each row sees.
    """
    if lo.dim() == 1:
        lo, hi = lo[None], hi[None]
    t = lo.shape[-1]
    nonempty = (lo < hi).to(torch.int64)
    delta = torch.zeros(lo.shape[0], t + 1, dtype=torch.int64, device=lo.device)
    delta.scatter_add_(1, lo.clamp(0, t).long(), nonempty)
    delta.scatter_add_(1, hi.clamp(0, t).long(), -nonempty)
    return delta.cumsum(dim=1)[:, :t] > 0
