"""``mix``: a per-batch mixture of objectives (UL2's mixture of denoisers, Tay et al. 2023; BICO's
50/50 NTP/denoising batches, Lv et al. 2023, are one instance).

``components`` is a list of ``{"name": ..., "options": {...}, "weight": w, "label": ...,
"mode_token": ...}`` (``options`` default {}, ``weight`` default 1, ``label`` default the name,
``mode_token`` default none). Per batch one component is drawn with probability proportional
to its weight (one ``rng.random()`` draw), then that component's own per-batch choice is made;
every example of the batch uses that component. Progress (annealing schedules) is forwarded to
every component. ``weights`` ({label: weight}) overrides the weights by label.

``mode_token`` (UL2's paradigm tokens): a special token (added with ``add_special_token``
before the components are built, so every component treats it as special and never masks it)
inserted after the example's leading special tokens, i.e. at the start of the prompt, for that
component's batches. It is part of the input the component encodes: bidirectional context
under ``prefix_lm`` and GLM's Part A, an ordinary first token under causal objectives.

``preset: ul2`` (Tay et al. 2023, "UL2: Unifying Language Learning Paradigms") fills
``components`` with UL2's three denoiser families, each with its mode token and weight 1:

* ``R`` = ``glm`` span corruption, mean span 3 (``poisson_lambda: 3``), rate 15%, ``[R]``;
* ``S`` = ``prefix_lm`` (prefix = the prompt), ``[S]``;
* ``X`` = ``glm`` span corruption, mean span 32 (``poisson_lambda: 32``, ``max_span: 128``),
  rate 50%, ``[X]``.

Departures from UL2: its final mixture has seven denoisers (R: mu 3 and 8 at 15%; X: mu 3/8 at
50% and mu 64 at 15%/50%; S) with S at about 20%; we keep one per family and equal weights
(change them with ``weights: {R: .., S: .., X: ..}``). Spans are GLM's blank infilling (one mask
per span in a bidirectional Part A, the spans generated after it) rather than T5's sentinels;
UL2's decoder-only variant is likewise a prefix-LM over inputs then targets. On short rows a
span is capped by the room left (``glm``'s rule), so X's long spans cover what the row allows.

BICO as a mixture: ``[{name: ntp, weight: 0.5}, {name: mntp, weight: 0.5, options:
{mask_ratio: 0.15, replacement: all_mask, hide_masked: true, rope: mirrored, mask_token: unk}}]``
gives the same samples as ``bico`` for the same seed.
"""

from __future__ import annotations

from bico.objectives.base import Example, Objective, Sample, add_special_token, strip_specials
from bico.objectives.registry import ObjectiveError, build_objective, register

PRESETS = {
    "ul2": [
        {"label": "R", "name": "glm", "options": {"mask_ratio": 0.15, "poisson_lambda": 3}, "mode_token": "[R]"},
        {"label": "S", "name": "prefix_lm", "mode_token": "[S]"},
        {
            "label": "X",
            "name": "glm",
            "options": {"mask_ratio": 0.5, "poisson_lambda": 32, "max_span": 128},
            "mode_token": "[X]",
        },
    ],
}
COMPONENT_KEYS = {"name", "options", "weight", "label", "mode_token"}


class MixState(str):
    """The per-batch state; a ``str`` (``label:mode``) so the trainer logs it as the batch mode."""

    index: int
    inner: object


def with_mode_token(example: Example, token_id: int, special_ids) -> Example:
    """``example`` with ``token_id`` after the prompt's leading special tokens (a new Example:
    the tokenized examples are reused across epochs and must stay as they are; its loss spans
    move with their tokens, and the mode token carries no loss where spans are set)."""
    return example.with_inserted(len(strip_specials(example.prompt_ids, special_ids)[0]), [token_id])


@register("mix")
class Mix(Objective):
    def __init__(
        self, tokenizer, components: list | None = None, preset: str | None = None, weights: dict | None = None
    ):
        super().__init__(tokenizer)
        if preset is not None:
            if preset not in PRESETS:
                raise ObjectiveError(f"mix.preset must be one of {', '.join(PRESETS)}, got {preset!r}")
            if components:
                raise ObjectiveError("mix takes a preset or components, not both")
            components = PRESETS[preset]
        if not components:
            raise ObjectiveError("mix.components must list at least one {name, options, weight} (or set mix.preset)")
        comps = [{"name": c} if isinstance(c, str) else dict(c) for c in components]
        for k, comp in enumerate(comps):
            if "name" not in comp or set(comp) - COMPONENT_KEYS:
                raise ObjectiveError(
                    f"mix.components[{k}] needs a name and only {', '.join(sorted(COMPONENT_KEYS))}; got {comp}"
                )
        # Mode tokens first: components built afterwards count them among their special tokens.
        self.mode_ids = [
            add_special_token(tokenizer, str(c["mode_token"])) if c.get("mode_token") else None for c in comps
        ]
        self.labels = [str(c.get("label", c["name"])) for c in comps]
        unknown = sorted(set(weights or {}) - set(self.labels))
        if unknown:
            raise ObjectiveError(
                f"mix.weights names no component {', '.join(unknown)}; labels: {', '.join(self.labels)}"
            )
        self.components, self.weights = [], []
        for k, comp in enumerate(comps):
            weight = float((weights or {}).get(self.labels[k], comp.get("weight", 1.0)))
            if weight < 0:
                raise ObjectiveError(f"mix.components[{k}].weight must be >= 0, got {weight}")
            self.components.append(build_objective(comp["name"], tokenizer, comp.get("options") or {}))
            self.weights.append(weight)
        if sum(self.weights) <= 0:
            raise ObjectiveError("mix.components weights must not all be 0")
        self.special_ids = frozenset().union(*(c.special_ids for c in self.components))
        self.preset = preset

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
        if self.mode_ids[state.index] is not None:
            example = with_mode_token(example, self.mode_ids[state.index], self.special_ids)
        return self.components[state.index].encode(example, rng, state.inner)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "preset": self.preset,
            "components": [
                {"label": label, "weight": w, "mode_id": m, **c.describe()}
                for label, w, m, c in zip(self.labels, self.weights, self.mode_ids, self.components)
            ],
        }
