"""``anneal``: attention-mask annealing from causal to the inner objective's mask (DiffuLLaMA, Gong et
al. 2024, arXiv 2410.17891), as a wrapper around any objective.

DiffuLLaMA unlocks each future (query, key) entry with probability ``ratio = min(1, (step+1) /
anneal_steps)``, drawing a Bernoulli per entry. A per-entry random pattern is not an interval
mask, so bico unlocks the same *fraction* in interval form: a key j that the inner mask shows
to earlier rows ``lo_j .. j-1`` is shown to the nearest ``round(ratio * (j - lo_j))`` of them
(``lo_j`` moves down from j towards the inner ``lo_j``); rows >= j and hidden keys are
unchanged. With a bidirectional inner mask a query at i then sees future keys up to about
``i / (1 - ratio)``: a look-ahead that grows with training and reaches the full inner mask at
``steps``. The trainer calls :meth:`set_progress` before every step, so resumed runs anneal
identically.

Options: ``inner`` (an objective name), ``options`` (its options), ``steps`` (anneal steps).
"""

from __future__ import annotations

import torch

from bico.masks import IntervalMask
from bico.objectives.base import Example, Objective, Sample
from bico.objectives.registry import ObjectiveError, build_objective, register


def anneal_intervals(lo: torch.Tensor, hi: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink each key's reach into earlier rows to ``round(ratio * reach)`` rows."""
    keys = torch.arange(lo.shape[-1], dtype=lo.dtype)
    reach = (keys - lo).clamp(min=0)
    opened = torch.floor(reach.double() * ratio + 0.5).to(lo.dtype)
    new_lo = torch.where(lo < hi, keys - opened.clamp(max=reach), lo)
    empty = new_lo >= hi
    return torch.where(empty, 0, new_lo).to(lo.dtype), torch.where(empty, 0, hi).to(hi.dtype)


@register("anneal")
class Anneal(Objective):
    def __init__(self, tokenizer, inner: str = "bico", options: dict | None = None, steps: int = 1000):
        super().__init__(tokenizer)
        if inner == "anneal":
            raise ObjectiveError("anneal.inner cannot be anneal")
        if int(steps) < 1:
            raise ObjectiveError(f"anneal.steps must be >= 1, got {steps}")
        self.inner = build_objective(inner, tokenizer, options or {})
        self.steps = int(steps)
        self.special_ids = self.inner.special_ids
        self.ratio = min(1.0, 1 / self.steps)  # step 0 until the trainer says otherwise

    def set_progress(self, step: int, total_steps: int) -> None:
        self.inner.set_progress(step, total_steps)
        self.ratio = min(1.0, (step + 1) / self.steps)

    def start_batch(self, rng):
        return self.inner.start_batch(rng)

    def encode(self, example: Example, rng, state=None) -> Sample:
        sample = self.inner.encode(example, rng, state)
        if self.ratio < 1.0:
            m = sample.mask
            sample.mask = IntervalMask(*anneal_intervals(m.lo, m.hi, self.ratio), m.rope, m.block_position_ids)
        return sample

    def describe(self) -> dict:
        return {"name": self.name, "steps": self.steps, "inner": self.inner.describe()}
