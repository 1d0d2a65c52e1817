"""``permute``: semantic-aware permutation training (SPT; Guo et al. 2024, "Mitigating Reversal Curse in
Large Language Models via Semantic-aware Permutation Training", arXiv 2403.00758).

Rules:

* the content between leading special tokens and the final EOS is cut into units by the
  segmenters reverse training uses (:meth:`Objective.units`): ``word``, ``entity`` (words, the
  fact's name and description spans whole; the default, our stand-in for SPT's assistant-LLM
  chunking into entities and phrases), ``token`` or random ``segment``s of 1..``segment_max``
  tokens;
* per example one order is drawn (one ``rng.random()``): the original order with probability
  ``original_prob``, the units reversed with ``reverse_prob``, a uniformly random permutation of
  the units (``rng.shuffle``) with ``permute_prob``. The three must sum to 1; SPT gives no values
  ("with a certain probability"), 1/3 each is our default;
* in ``segment`` mode a reordered text joins its units with reverse training's ``<|rev|>``
  token (segments cut words, so the model needs the boundary); words and entities are joined
  as they are, like ``reverse``;
* plain causal attention, standard positions, next-token loss on every token (SPT trains the
  reordered text as ordinary LM data); with loss spans, on the spans' tokens only, wherever
  they move. One sample per example: unlike ``reverse``, the forward copy is not added next to
  the reordered one.

Departures from SPT: no assistant LLM (entity spans come from the facts' metadata, else
capitalised-word runs); SPT's probabilities are not published, so ours are stated above.
"""

from __future__ import annotations

from bico.objectives.base import (
    UNIT_SEP_TOKEN,
    Example,
    Objective,
    Sample,
    add_special_token,
    check_units,
    next_token_sample,
    rearranged,
    separated,
    strip_specials,
)
from bico.objectives.registry import ObjectiveError, register

ORDERS = ("original", "reversed", "permuted")


@register("permute")
class SemanticPermutation(Objective):
    def __init__(
        self,
        tokenizer,
        mode: str = "entity",
        segment_max: int = 25,
        original_prob: float = 1 / 3,
        reverse_prob: float = 1 / 3,
        permute_prob: float = 1 / 3,
    ):
        super().__init__(tokenizer)
        check_units("permute", mode, segment_max)
        probs = [float(original_prob), float(reverse_prob), float(permute_prob)]
        if min(probs) < 0 or abs(sum(probs) - 1) > 1e-6:
            raise ObjectiveError(
                f"permute.original_prob, reverse_prob, permute_prob must be >= 0 and sum to 1, got {probs}"
            )
        self.mode, self.segment_max, self.probs = mode, int(segment_max), probs
        self.sep_id = add_special_token(tokenizer, UNIT_SEP_TOKEN) if mode == "segment" else None
        if self.sep_id is not None:
            self.special_ids = self.special_ids | {self.sep_id}

    def arrange(self, ids: list[int], meta: dict, rng) -> tuple[list[int], str]:
        """(the reordered text, which order was drawn)."""
        out, _, order = self.arranged(ids, None, meta, rng)
        return out, order

    def arranged(self, ids: list[int], allowed, meta: dict, rng):
        """(the reordered text, its loss flags (see :func:`rearranged`), which order was drawn)."""
        u = rng.random()
        order = ORDERS[0] if u < self.probs[0] else ORDERS[1] if u < self.probs[0] + self.probs[1] else ORDERS[2]
        if order == "original":
            return ids, allowed, order
        lead, content, _ = strip_specials(ids, self.special_ids)
        units = self.units(content, self.mode, meta, rng, self.segment_max)
        if order == "reversed":
            units = units[::-1]
        else:
            rng.shuffle(units)
        out, flags = rearranged(ids, allowed, len(lead), len(lead) + len(content), separated(units, self.sep_id))
        return out, flags, order

    def encode(self, example: Example, rng, state=None) -> Sample:
        ids, allowed, _ = self.arranged(self.text_ids(example), self.allowed(example), example.meta, rng)
        return next_token_sample(ids, allowed=allowed)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "mode": self.mode,
            "segment_max": self.segment_max,
            "original_prob": self.probs[0],
            "reverse_prob": self.probs[1],
            "permute_prob": self.probs[2],
            "sep_id": self.sep_id,
        }
