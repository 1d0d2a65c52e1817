"""``reverse``: reverse training (Golovneva et al. 2024, "Reverse Training to Nurse the Reversal
Curse", arXiv 2403.13799), as data augmentation with plain causal attention.

Every example is seen forward *and* reversed: one sample holds the forward text and its
reversal as two packed documents (each causal, positions restarting at 0, neither seeing the
other; :func:`bico.masks.concat`), next-token loss on every token of both (``forward=False``
keeps only the reversed one). The content between leading special tokens and the final EOS
is cut into units whose order is reversed, each unit keeping its own token order:

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

from bico import masks
from bico.objectives.base import Example, Objective, Sample, next_token_targets
from bico.objectives.fim import strip_specials
from bico.objectives.glm import add_special_token
from bico.objectives.registry import register

MODES = ("token", "word", "entity", "segment")
REV_TOKEN = "<|rev|>"


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a < out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


@register("reverse")
class ReverseTraining(Objective):
    def __init__(self, tokenizer, mode: str = "entity", segment_max: int = 25, forward: bool = True):
        super().__init__(tokenizer)
        if mode not in MODES:
            raise ValueError(f"reverse.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if int(segment_max) < 1:
            raise ValueError(f"reverse.segment_max must be >= 1, got {segment_max}")
        self.mode, self.segment_max, self.forward = mode, int(segment_max), bool(forward)
        self.rev_id = add_special_token(tokenizer, REV_TOKEN) if mode == "segment" else None
        if self.rev_id is not None:
            self.special_ids = self.special_ids | {self.rev_id}
        self._pieces: dict[int, str] = {}

    def piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self.tokenizer.decode([token])
        return self._pieces[token]

    def word_starts(self, content: list[int]) -> list[bool]:
        return [i == 0 or self.piece(t)[:1].isspace() for i, t in enumerate(content)]

    def entity_ranges(self, content: list[int], meta: dict) -> list[tuple[int, int]]:
        """Token ranges of the example's entities (meta), else capitalised-word runs."""
        pieces = [self.piece(t) for t in content]
        ends, total = [], 0
        for p in pieces:
            total += len(p)
            ends.append(total)
        starts = [e - len(p) for e, p in zip(ends, pieces)]
        text = "".join(pieces).lower()
        found = []
        for key in ("name", "description"):
            entity = str(meta.get(key) or "").strip().lower()
            at = text.find(entity) if entity else -1
            while at >= 0:
                tokens = [i for i in range(len(content)) if starts[i] < at + len(entity) and ends[i] > at]
                found.append((tokens[0], tokens[-1] + 1))
                at = text.find(entity, at + len(entity))
        if found:
            return _merge(found)
        words = self.units_by_words(content)
        caps = [self.piece(content[a]).strip()[:1].isupper() for a, _ in words]
        runs, k = [], 0
        while k < len(words):
            m = k
            while m < len(words) and caps[m]:
                m += 1
            if m - k >= 2:
                runs.append((words[k][0], words[m - 1][1]))
            k = max(m, k + 1)
        return runs

    def units_by_words(self, content: list[int], entities=()) -> list[tuple[int, int]]:
        """Words as token ranges; an entity range is one unit (with any glued punctuation)."""
        starts = self.word_starts(content)
        entity_at = {a: b for a, b in entities}
        units: list[list[int]] = []
        i = 0
        while i < len(content):
            if i in entity_at:
                units.append([i, entity_at[i]])
                i = entity_at[i]
                continue
            if starts[i] or not units:
                units.append([i, i + 1])
            else:
                units[-1][1] = i + 1
            i += 1
        return [(a, b) for a, b in units]

    def reverse_ids(self, ids: list[int], meta: dict, rng) -> list[int]:
        lead, content, tail = strip_specials(ids, self.special_ids)
        if self.mode == "token":
            units = [(i, i + 1) for i in range(len(content))]
        elif self.mode == "word":
            units = self.units_by_words(content)
        elif self.mode == "entity":
            units = self.units_by_words(content, self.entity_ranges(content, meta or {}))
        else:
            units, i = [], 0
            while i < len(content):
                step = rng.randint(1, self.segment_max)
                units.append((i, min(i + step, len(content))))
                i += step
        body: list[int] = []
        for k, (a, b) in enumerate(reversed(units)):
            if k and self.mode == "segment":
                body.append(self.rev_id)
            body += content[a:b]
        return lead + body + tail

    def encode(self, example: Example, rng, state=None) -> Sample:
        ids = self.text_ids(example)
        docs = ([ids] if self.forward else []) + [self.reverse_ids(ids, example.meta, rng)]
        lo, hi = masks.concat([masks.causal(len(d)) for d in docs])
        return Sample(
            input_ids=torch.tensor([t for d in docs for t in d], dtype=torch.long),
            targets=torch.cat([next_token_targets(d) for d in docs]),
            position_ids=torch.cat([torch.arange(len(d)) for d in docs]),
            lo=lo,
            hi=hi,
        )

    def describe(self) -> dict:
        return {"name": self.name, "mode": self.mode, "segment_max": self.segment_max, "forward": self.forward,
                "rev_id": self.rev_id}
