"""Batching samples: right padding, or packing several documents into one row.

Padding and packing both go through :func:`bico.masks.concat`, so padded keys are hidden
from everyone and packed documents never see each other, whatever each one's own mask is.
Positions restart at 0 in every packed document.
"""
from __future__ import annotations

from typing import Sequence

import torch

from bico import masks
from bico.objectives.base import IGNORE, Sample


def _rows_for_packing(samples: Sequence[Sample], max_length: int) -> list[list[Sample]]:
    """First-fit-decreasing bin packing of samples into rows of at most ``max_length``."""
    rows: list[list[Sample]] = []
    room: list[int] = []
    for sample in sorted(samples, key=len, reverse=True):
        for r, free in enumerate(room):
            if len(sample) <= free:
                rows[r].append(sample)
                room[r] -= len(sample)
                break
        else:
            rows.append([sample])
            room.append(max_length - len(sample))
    return rows


def _join(parts: Sequence[Sample], length: int, pad_id: int) -> dict:
    """One batch row: the parts back to back, then padding up to ``length``."""
    used = sum(len(p) for p in parts)
    fill = length - used
    lo, hi = masks.concat([(p.lo, p.hi) for p in parts] + [masks.hidden(fill)])
    weights = [p.weights if p.weights is not None else torch.ones(len(p)) for p in parts]
    row = {}
    if any(p.block_position_ids is not None for p in parts):
        blocks = [p.block_position_ids if p.block_position_ids is not None else p.position_ids for p in parts]
        row["block_position_ids"] = torch.cat(blocks + [torch.zeros(fill, dtype=torch.long)])
    return row | {
        "input_ids": torch.cat([p.input_ids for p in parts] + [torch.full((fill,), pad_id, dtype=torch.long)]),
        "targets": torch.cat([p.targets for p in parts] + [torch.full((fill,), IGNORE, dtype=torch.long)]),
        "position_ids": torch.cat([p.position_ids for p in parts] + [torch.zeros(fill, dtype=torch.long)]),
        "weights": torch.cat(weights + [torch.zeros(fill)]),
        "lo": lo,
        "hi": hi,
    }


def collate(samples: Sequence[Sample], pad_id: int, *, pack: bool = False, max_length: int | None = None) -> dict:
    """Batch samples into ``[B, T]`` tensors.

    Returns ``input_ids``, ``targets``, ``position_ids``, ``lo``, ``hi``, ``weights``,
    ``mirror_rope`` (bool, the same for every sample of a batch), ``num_targets`` and
    ``num_tokens`` (real tokens, padding excluded).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    mirror = {s.mirror_rope for s in samples}
    if len(mirror) > 1:
        raise ValueError("a batch mixes mirrored and standard RoPE; objectives must decide RoPE per batch")
    longest = max(len(s) for s in samples)
    if max_length is not None and longest > max_length:
        raise ValueError(f"a sample has {longest} tokens, more than max_length={max_length}")
    if pack:
        if max_length is None:
            raise ValueError("packing needs max_length (the row length)")
        groups = _rows_for_packing(samples, max_length)
        length = max(sum(len(s) for s in g) for g in groups)
    else:
        groups = [[s] for s in samples]
        length = longest
    rows = [_join(g, length, pad_id) for g in groups]
    if any("block_position_ids" in r for r in rows):  # rows without 2-D positions use 1-D ones
        for r in rows:
            r.setdefault("block_position_ids", r["position_ids"])
    batch = {key: torch.stack([r[key] for r in rows]) for key in rows[0]}
    batch["mirror_rope"] = mirror.pop()
    batch["num_targets"] = int((batch["targets"] != IGNORE).sum())
    batch["num_tokens"] = sum(len(s) for s in samples)
    return batch
