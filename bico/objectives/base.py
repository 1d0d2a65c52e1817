"""What every objective produces, and the base class objectives share.

An objective turns one example (prompt, completion) plus an RNG into a :class:`Sample`:
token ids, per-position prediction targets, position ids and an interval mask (see
:mod:`bico.masks`). ``targets[t]`` is the token the model must predict *from the output at
position t* (-100 = no loss there), so the trainer never shifts anything: shifted and
unshifted objectives, and packed documents, line up by construction.

Some choices are per batch (BICO flips a coin per batch between an NTP and a denoising
step), so the trainer calls :meth:`Objective.start_batch` once per batch and hands the state
to :meth:`Objective.encode` for each example of that batch.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

IGNORE = -100


@dataclass
class Example:
    """One training example, tokenized once and reused by every objective and epoch."""

    prompt: str
    completion: str
    prompt_ids: list[int]
    completion_ids: list[int]
    meta: dict = field(default_factory=dict)  # e.g. entity spans, for objectives that use them


@dataclass
class Sample:
    input_ids: torch.Tensor  # [T] int64
    targets: torch.Tensor  # [T] int64, token predicted from position t, IGNORE = none
    position_ids: torch.Tensor  # [T] int64
    lo: torch.Tensor  # [T] int32, first query row that sees key t
    hi: torch.Tensor  # [T] int32, one past the last query row that sees key t
    weights: torch.Tensor | None = None  # [T] float per-target loss weight (None = 1)
    mirror_rope: bool = False  # BICO's mirrored RoPE for keys after the query
    # 2-D positions (GLM): a second position per token (e.g. the intra-span position). When
    # set, the upper half of RoPE's frequency pairs rotates by it instead of position_ids.
    block_position_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.numel()


def next_token_targets(ids: list[int], first_target: int = 1) -> torch.Tensor:
    """Targets of plain next-token prediction: position t predicts ids[t+1].

    Only tokens at index >= ``first_target`` are predicted (1 = every token after the first).
    """
    targets = torch.full((len(ids),), IGNORE, dtype=torch.long)
    if len(ids) > 1:
        targets[:-1] = torch.tensor(ids[1:], dtype=torch.long)
        targets[: max(first_target - 1, 0)] = IGNORE
    return targets


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a < out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


class Objective:
    """Base class. Subclasses set ``name`` and implement :meth:`encode`."""

    name: str = ""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token; bico appends EOS to every training text")
        self.eos_id = int(eos)
        self.special_ids = frozenset(int(i) for i in tokenizer.all_special_ids)
        self._pieces: dict[int, str] = {}

    def start_batch(self, rng: random.Random) -> Any:
        """Per-batch decision shared by all examples of the batch (default: none)."""
        return None

    def set_progress(self, step: int, total_steps: int) -> None:
        """Called by the trainer before every optimizer step (schedules such as annealing)."""

    def encode(self, example: Example, rng: random.Random, state: Any = None) -> Sample:
        raise NotImplementedError

    def text_ids(self, example: Example) -> list[int]:
        """prompt + completion + EOS, as the Berglund and BICO training code build it."""
        return example.prompt_ids + example.completion_ids + [self.eos_id]

    def describe(self) -> dict:
        """The options this objective was built with (logged with every run)."""
        return {"name": self.name}

    # Token-level text helpers shared by objectives that work on words or entity spans.
    def piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self.tokenizer.decode([token])
        return self._pieces[token]

    def word_starts(self, content: list[int]) -> list[bool]:
        return [i == 0 or self.piece(t)[:1].isspace() for i, t in enumerate(content)]

    def entity_ranges(self, content: list[int], meta: dict, keys=("name", "description")) -> list[tuple[int, int]]:
        """Token ranges of the example's entities (``meta[key]`` for each key, matched
        case-insensitively), else capitalised-word runs."""
        pieces = [self.piece(t) for t in content]
        ends, total = [], 0
        for p in pieces:
            total += len(p)
            ends.append(total)
        starts = [e - len(p) for e, p in zip(ends, pieces)]
        text = "".join(pieces).lower()
        found = []
        for key in keys:
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
