"""``mix``: a per-batch mixture of objectives (UL2's mixture of denoisers, Tay et al. 2023; BICO's
50/50 NTP/denoising batches, Lv et al. 2023, are one instance).

``components`` is a list of ``{"name": ..., "options": {...}, "weight": w, "label": ...}``
(``options`` default {}, ``weight`` default 1, ``label`` default the name). Per batch one
component is drawn with probability proportional to its weight (one ``rng.random()`` draw),
then that component's own per-batch choice is made; every example of the batch uses that
component. Progress (annealing schedules) is forwarded to every component.

BICO as a mixture: ``[{name: ntp, weight: 0.5}, {name: mntp, weight: 0.5, options:
{mask_ratio: 0.15, replacement: all_mask, hide_masked: true, rope: mirrored, mask_token: unk}}]``
gives the same samples as ``bico`` for the same seed.
"""
from __future__ import annotations

from bico.objectives.base import Example, Objective, Sample
from bico.objectives.registry import build_objective, register


class MixState(str):
    """The per-batch state; a ``str`` (``label:mode``) so the trainer logs it as the batch mode."""

    index: int
    inner: object


@register("mix")
class Mix(Objective):
    def __init__(self, tokenizer, components: list | None = None):
        super().__init__(tokenizer)
        if not components:
            raise ValueError("mix.components must list at least one {name, options, weight}")
        self.components, self.weights, self.labels = [], [], []
        for k, comp in enumerate(components):
            if isinstance(comp, str):
                comp = {"name": comp}
            unknown = set(comp) - {"name", "options", "weight", "label"}
            if "name" not in comp or unknown:
                raise ValueError(f"mix.components[{k}] needs a name and only name, options, weight, label; got {comp}")
            weight = float(comp.get("weight", 1.0))
            if weight < 0:
                raise ValueError(f"mix.components[{k}].weight must be >= 0, got {weight}")
            self.components.append(build_objective(comp["name"], tokenizer, comp.get("options") or {}))
            self.weights.append(weight)
            self.labels.append(str(comp.get("label", comp["name"])))
        if sum(self.weights) <= 0:
            raise ValueError("mix.components weights must not all be 0")
        self.special_ids = frozenset().union(*(c.special_ids for c in self.components))

    def start_batch(self, rng) -> MixState:
        index = rng.choices(range(len(self.components)), weights=self.weights)[0]
        inner = self.components[index].start_batch(rng)
        mode = inner if isinstance(inner, str) else self.components[index].name
        state = MixState(f"{self.labels[index]}:{mode}")
        state.index, state.inner = index, inner
        return state

    def set_progress(self, step: int, total_steps: int) -> None:
        for comp in self.components:
            comp.set_progress(step, total_steps)

    def encode(self, example: Example, rng, state: MixState | None = None) -> Sample:
        if not isinstance(state, MixState):
            state = self.start_batch(rng)
        return self.components[state.index].encode(example, rng, state.inner)

    def describe(self) -> dict:
        return {"name": self.name, "components": [
            {"label": label, "weight": w, **c.describe()} for label, w, c in zip(self.labels, self.weights, self.components)
        ]}
