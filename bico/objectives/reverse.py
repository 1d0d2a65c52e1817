"""``reverse``: reverse training (Golovneva et al. 2024, "Reverse Training to Nurse the Reversal
Curse", arXiv 2403.13799), as data augmentation with plain causal attention.

Every example is seen forward *and* reversed: one sample holds the forward text and its
reversal as two packed documents (each causal, positions restarting at 0, neither seeing the
other; ``IntervalMask.concat``), next-token loss on every token of both (``forward=False``
keeps only the reversed one); with loss spans, on the spans' tokens only, wherever they move.
The content between leading special tokens and the final EOS is cut into units whose order is
reversed, each unit keeping its own token order (:meth:`Objective.units`, shared with ``permute``):

* ``token``: units are single tokens;
* ``word``: units are words (a token whose text starts with whitespace starts a word);
* ``entity``: words, except that entity spans stay one unit in forward order. Entities are
  the fact's ``name`` and ``description`` from ``Example.meta`` (the data layer knows them for
  the reversal data; matched case-insensitively); without them, runs of two or more
  capitalised words (a simple stand-in for the paper's NER);
* ``segment``: consecutive segments of random length 1..``segment_max`` tokens (uniform),
  reversed and joined by a new ``<|rev|>`` special token. The paper's value of k was not
  available to us; 25 is our default.
"""

from __future__ import annotations

import torch

from bico.masks import IntervalMask
from bico.objectives.base import (
    UNIT_SEP_TOKEN,
    Example,
    Objective,
    Sample,
    add_special_token,
    check_units,
    next_token_targets,
    rearranged,
    separated,
    strip_specials,
)
from bico.objectives.registry import register


@register("reverse")
class ReverseTraining(Objective):
    def __init__(self, tokenizer, mode: str = "entity", segment_max: int = 25, forward: bool = True):
        super().__init__(tokenizer)
        check_units("reverse", mode, segment_max)
        self.mode, self.segment_max, self.forward = mode, int(segment_max), bool(forward)
        self.rev_id = add_special_token(tokenizer, UNIT_SEP_TOKEN) if mode == "segment" else None
        if self.rev_id is not None:
            self.special_ids = self.special_ids | {self.rev_id}

    def reverse_ids(self, ids: list[int], meta: dict, rng) -> list[int]:
        return self.reversed_text(ids, None, meta, rng)[0]

    def reversed_text(self, ids: list[int], allowed, meta: dict, rng):
        """The reversal of ``ids`` and its loss flags (see :func:`rearranged`)."""
        lead, content, _ = strip_specials(ids, self.special_ids)
        units = self.units(content, self.mode, meta, rng, self.segment_max)
        return rearranged(ids, allowed, len(lead), len(lead) + len(content), separated(units[::-1], self.rev_id))

    def encode(self, example: Example, rng, state=None) -> Sample:
        ids, allowed = self.text_ids(example), self.allowed(example)
        docs = ([(ids, allowed)] if self.forward else []) + [self.reversed_text(ids, allowed, example.meta, rng)]
        return Sample(
            input_ids=torch.tensor([t for d, _ in docs for t in d], dtype=torch.long),
            targets=torch.cat([next_token_targets(d, allowed=flags) for d, flags in docs]),
            position_ids=torch.cat([torch.arange(len(d)) for d, _ in docs]),
            mask=IntervalMask.concat([IntervalMask.causal(len(d)) for d, _ in docs]),
        )

    def describe(self) -> dict:
        return {
            "name": self.name,
            "mode": self.mode,
            "segment_max": self.segment_max,
            "forward": self.forward,
            "rev_id": self.rev_id,
        }
