"""Batching samples: right padding, or packing several documents into one row.

Padding and packing both go through :meth:`IntervalMask.concat`, so padded keys are hidden
from everyone and packed documents never see each other, whatever each one's own mask is.
Positions restart at 0 in every packed document.
"""

from __future__ import annotations

from typing import Sequence

import torch

from bico.masks import IntervalMask
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


def _join(parts: Sequence[tuple[Sample, IntervalMask]], length: int, pad_id: int) -> dict:
    """One batch row: the parts back to back, then padding up to ``length``."""
    fill = length - sum(len(p) for p, _ in parts)
    weights = [p.weights if p.weights is not None else torch.ones(len(p)) for p, _ in parts]
    return {
        "input_ids": torch.cat([p.input_ids for p, _ in parts] + [torch.full((fill,), pad_id, dtype=torch.long)]),
        "targets": torch.cat([p.targets for p, _ in parts] + [torch.full((fill,), IGNORE, dtype=torch.long)]),
        "position_ids": torch.cat([p.position_ids for p, _ in parts] + [torch.zeros(fill, dtype=torch.long)]),
        "weights": torch.cat(weights + [torch.zeros(fill)]),
        "bico_mask": IntervalMask.concat([m for _, m in parts]).pad(length),
    }


def collate(samples: Sequence[Sample], pad_id: int, *, pack: bool = False, max_length: int | None = None) -> dict:
    """Batch samples into ``[B, T]`` tensors.

    Returns ``input_ids``, ``position_ids``, ``bico_mask`` (one :class:`IntervalMask`), the
    keyword arguments of the model's forward (so ``model(**model_inputs(batch))``), and
    ``targets``, ``weights``, ``num_targets`` and ``num_tokens`` (real tokens, padding excluded)
    for the loss.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    longest = max(len(s) for s in samples)
    if max_length is not None and longest > max_length:
        raise ValueError(f"a sample has {longest} tokens, more than max_length={max_length}")
    sample_masks = [s.mask for s in samples]
    if any(m.rope == "2d" for m in sample_masks):  # samples without 2-D positions use their 1-D ones
        sample_masks = [
            m if m.rope == "2d" else m.with_rope("2d", s.position_ids) for m, s in zip(sample_masks, samples)
        ]
    masked = list(zip(samples, sample_masks))
    if pack:
        if max_length is None:
            raise ValueError("packing needs max_length (the row length)")
        by_id = {id(s): (s, m) for s, m in masked}
        groups = [[by_id[id(s)] for s in g] for g in _rows_for_packing(samples, max_length)]
        length = max(sum(len(s) for s, _ in g) for g in groups)
    else:
        groups = [[sm] for sm in masked]
        length = longest
    rows = [_join(g, length, pad_id) for g in groups]
    batch = {key: torch.stack([r[key] for r in rows]) for key in ("input_ids", "targets", "position_ids", "weights")}
    batch["bico_mask"] = IntervalMask.stack([r["bico_mask"] for r in rows])
    batch["num_targets"] = int((batch["targets"] != IGNORE).sum())
    batch["num_tokens"] = sum(len(s) for s in samples)
    return batch


MODEL_KEYS = ("input_ids", "position_ids", "bico_mask")


def model_inputs(batch: dict, device: torch.device | str | None = None) -> dict:
    """The forward kwargs of a batch (on ``device``): ``input_ids``, ``position_ids``, ``bico_mask``."""
    out = {k: batch[k] for k in MODEL_KEYS}
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out
