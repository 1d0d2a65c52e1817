"""What every objective produces, and the base class objectives share.

An objective turns one example (prompt, completion) plus an RNG into a :class:`Sample`:
token ids, per-position prediction targets, position ids and an :class:`~bico.masks.IntervalMask`
(which also says how attention applies RoPE). ``targets[t]`` is the token the model must predict *from the output at
position t* (-100 = no loss there), so the trainer never shifts anything: shifted and
unshifted objectives, and packed documents, line up by construction.

Some choices are per batch (BICO flips a coin per batch between an NTP and a denoising
step), so the trainer calls :meth:`Objective.start_batch` once per batch and hands the state
to :meth:`Objective.encode` for each example of that batch.

Helpers that several objectives share (special tokens, masking eligibility, denoising targets,
entity spans) live here, so that each objective file depends on this base only.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from bico.masks import IntervalMask
from bico.objectives.registry import ObjectiveError

IGNORE = -100
ADDED_MASK_TOKEN = "<|mask|>"
ROPE_CHOICES = ("standard", "mirrored")  # what a denoising objective's `rope` option may say
UNIT_MODES = ("token", "word", "entity", "segment")  # how reverse / permute cut a text into units
UNIT_SEP_TOKEN = "<|rev|>"  # joins random segments (reverse training's separator)


@dataclass
class Example:
    """One training example, tokenized once and reused by every objective and epoch."""

    prompt: str
    completion: str
    prompt_ids: list[int]
    completion_ids: list[int]
    meta: dict = field(default_factory=dict)  # e.g. entity spans, for objectives that use them
    eos: bool = True  # False: the text goes on (a chunk of a longer document) or ends itself (a chat)
    # Token ranges [a, b) of text_ids that carry loss and may be masked (chat: the assistant turns;
    # a chunk: its tokens after the overlap); None = all of them. See loss_tokens.
    loss_spans: list[tuple[int, int]] | None = None

    def with_inserted(self, at: int, token_ids: list[int]) -> Example:
        """A new Example with ``token_ids`` inserted before text token ``at`` (at most the prompt's
        length: they join the prompt). Every transformation of an Example goes through here, so the
        loss spans move with their tokens; the inserted tokens carry loss only if every token does."""
        if not 0 <= at <= len(self.prompt_ids):
            raise ValueError(f"insert position {at} outside the prompt [0, {len(self.prompt_ids)}]")
        k = len(token_ids)
        spans = None
        if self.loss_spans is not None:
            spans = []
            for a, b in self.loss_spans:  # a span that holds `at` is split around the new tokens
                spans += [(a, b)] if b <= at else [(a + k, b + k)] if a >= at else [(a, at), (at + k, b + k)]
        return dataclasses.replace(
            self, prompt_ids=self.prompt_ids[:at] + list(token_ids) + self.prompt_ids[at:], loss_spans=spans
        )


@dataclass
class Sample:
    input_ids: torch.Tensor  # [T] int64
    targets: torch.Tensor  # [T] int64, token predicted from position t, IGNORE = none
    position_ids: torch.Tensor  # [T] int64
    mask: IntervalMask  # B = 1, T keys: who sees what, and the RoPE mode
    weights: torch.Tensor | None = None  # [T] float per-target loss weight (None = 1)

    def __post_init__(self):
        if self.mask.batch_size != 1 or self.mask.seq_len != self.input_ids.numel():
            raise ValueError(
                f"a sample of {self.input_ids.numel()} tokens needs a [1, {self.input_ids.numel()}] "
                f"mask, got {tuple(self.mask.lo.shape)}"
            )

    def __len__(self) -> int:
        return self.input_ids.numel()


def loss_tokens(example: Example, n: int) -> torch.Tensor | None:
    """Which of the example's ``n`` text tokens may be predicted or masked (``Example.loss_spans``);
    None = all. Objectives pass it to :func:`next_token_targets` and :func:`eligible_tokens`."""
    if example.loss_spans is None:
        return None
    keep = torch.zeros(n, dtype=torch.bool)
    for a, b in example.loss_spans:
        keep[a:b] = True
    return keep


def next_token_targets(ids: list[int], first_target: int = 1, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Targets of plain next-token prediction: position t predicts ids[t+1].

    Only tokens at index >= ``first_target`` are predicted (1 = every token after the first), and
    with ``allowed`` (see :func:`loss_tokens`) only the allowed ones.
    """
    targets = torch.full((len(ids),), IGNORE, dtype=torch.long)
    if len(ids) > 1:
        targets[:-1] = torch.tensor(ids[1:], dtype=torch.long)
        targets[: max(first_target - 1, 0)] = IGNORE
        if allowed is not None:
            targets[:-1][~allowed[1:]] = IGNORE
    return targets


def next_token_sample(ids: list[int], first_target: int = 1, allowed: torch.Tensor | None = None) -> Sample:
    """A causal next-token sample of ``ids`` (positions 0..T-1, standard RoPE)."""
    return Sample(
        input_ids=torch.tensor(ids, dtype=torch.long),
        targets=next_token_targets(ids, first_target, allowed),
        position_ids=torch.arange(len(ids)),
        mask=IntervalMask.causal(len(ids)),
    )


def add_special_token(tokenizer, token: str) -> int:
    """Id of ``token``, adding it as a special token if the tokenizer lacks it (keeping any special
    tokens added before, e.g. by another objective of a mixture)."""
    if token not in tokenizer.get_vocab():
        try:
            tokenizer.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False)
        except TypeError:  # transformers < 5 names the flag differently
            tokenizer.add_special_tokens(
                {"additional_special_tokens": [token]}, replace_additional_special_tokens=False
            )
    return int(tokenizer.convert_tokens_to_ids(token))


def resolve_mask_id(tokenizer, mask_token: str) -> int:
    """The id of the mask token: ``unk``, ``pad``, ``added`` (adds ``<|mask|>``) or a token string."""
    if mask_token == "unk":
        token_id = tokenizer.unk_token_id
    elif mask_token == "pad":
        token_id = tokenizer.pad_token_id
    elif mask_token == "added":
        token_id = add_special_token(tokenizer, ADDED_MASK_TOKEN)
    else:
        token_id = tokenizer.convert_tokens_to_ids(mask_token)
        if token_id == tokenizer.unk_token_id and mask_token != tokenizer.unk_token:
            token_id = None
    if token_id is None:
        raise ObjectiveError(
            f"mask_token {mask_token!r} does not exist in this tokenizer; use unk, pad, added or an existing token"
        )
    return int(token_id)


def eligible_tokens(ids: torch.Tensor, special_ids, shift: bool, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Which positions may be masked: non-special, allowed (:func:`loss_tokens`), not position 0 when shifting."""
    eligible = torch.tensor([int(i) not in special_ids for i in ids.tolist()], dtype=torch.bool)
    if allowed is not None:
        eligible &= allowed
    if shift and eligible.numel():
        eligible[0] = False  # nothing precedes position 0 to predict it from
    return eligible


def masked_targets(ids: torch.Tensor, selected: torch.Tensor, shift: bool) -> torch.Tensor:
    """Targets of a denoising sample: selected token t at position t-1 (shift) or t."""
    targets = torch.full_like(ids, IGNORE)
    where = selected.nonzero().flatten()
    targets[where - 1 if shift else where] = ids[where]
    return targets


def check_rope(name: str, rope: str) -> None:
    if rope not in ROPE_CHOICES:
        raise ObjectiveError(f"{name}.rope must be 'standard' or 'mirrored', got {rope!r}")


def denoising_sample(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    hidden: torch.Tensor | None,
    rope: str,
    weights: torch.Tensor | None = None,
) -> Sample:
    """A bidirectional denoising sample (BICO, MNTP, MLM-U): ``hidden`` keys (None = none) are
    seen by nobody; positions 0..T-1."""
    n = inputs.numel()
    mask = IntervalMask.bidirectional(n, rope)
    return Sample(
        input_ids=inputs,
        targets=targets,
        position_ids=torch.arange(n),
        mask=mask.hide(hidden) if hidden is not None else mask,
        weights=weights,
    )


def strip_specials(ids: list[int], special_ids) -> tuple[list[int], list[int], list[int]]:
    """(leading special tokens, content, trailing special tokens)."""
    a, b = 0, len(ids)
    while a < b and ids[a] in special_ids:
        a += 1
    while b > a and ids[b - 1] in special_ids:
        b -= 1
    return ids[:a], ids[a:b], ids[b:]


def check_units(name: str, mode: str, segment_max: int) -> None:
    if mode not in UNIT_MODES:
        raise ObjectiveError(f"{name}.mode must be one of {', '.join(UNIT_MODES)}, got {mode!r}")
    if int(segment_max) < 1:
        raise ObjectiveError(f"{name}.segment_max must be >= 1, got {segment_max}")


def separated(units: list[tuple[int, int]], sep: int | None = None) -> list:
    """``units`` as pieces for :func:`rearranged`, with the token ``sep`` (None = nothing) between them."""
    pieces: list = []
    for k, unit in enumerate(units):
        if k and sep is not None:
            pieces.append(sep)
        pieces.append(unit)
    return pieces


def rearranged(
    ids: list[int], allowed: torch.Tensor | None, start: int, end: int, pieces: list
) -> tuple[list[int], torch.Tensor | None]:
    """``ids`` with its content ``ids[start:end]`` replaced by ``pieces``: a tuple ``(a, b)`` is the
    content's tokens ``a..b-1``, an int a token the objective inserts (a separator, a sentinel).

    Returns the new ids and their loss flags (None when ``allowed`` is None: every token trains).
    A text token keeps its flag wherever it moves; an inserted token gets none (with loss spans,
    exactly the spans' tokens train, as with :meth:`Example.with_inserted`).
    """
    content = ids[start:end]
    body, flags = [], []
    for piece in pieces:
        if isinstance(piece, tuple):
            body += content[piece[0] : piece[1]]
            flags += [] if allowed is None else allowed[start + piece[0] : start + piece[1]].tolist()
        else:
            body.append(piece)
            flags.append(False)
    out = ids[:start] + body + ids[end:]
    if allowed is None:
        return out, None
    return out, torch.tensor(allowed[:start].tolist() + flags + allowed[end:].tolist(), dtype=torch.bool)


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
            raise ObjectiveError("the tokenizer has no EOS token; bico appends EOS to every training text")
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
        """prompt + completion + EOS, as the Berglund and BICO training code build it (no EOS where
        ``example.eos`` is False)."""
        return example.prompt_ids + example.completion_ids + ([self.eos_id] if example.eos else [])

    def allowed(self, example: Example) -> torch.Tensor | None:
        """:func:`loss_tokens` of the example's :meth:`text_ids`."""
        return loss_tokens(example, len(example.prompt_ids) + len(example.completion_ids) + int(example.eos))

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
        case-insensitively, and any of the surface forms listed in ``meta[key + "s"]``, e.g. the
        alt-style data's paraphrased ``descriptions``), else capitalised-word runs."""
        pieces = [self.piece(t) for t in content]
        ends, total = [], 0
        for p in pieces:
            total += len(p)
            ends.append(total)
        starts = [e - len(p) for e, p in zip(ends, pieces)]
        text = "".join(pieces).lower()
        found = []
        for key in keys:
            forms = [meta.get(key)] + list(meta.get(key + "s") or [])
            for entity in dict.fromkeys(str(f or "").strip().lower() for f in forms):
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

    def units(self, content: list[int], mode: str, meta: dict | None, rng, segment_max: int) -> list[tuple[int, int]]:
        """``content`` cut into units, in text order (reverse training's segmenters, Golovneva et al.):
        ``token``, ``word``, ``entity`` (words, entity spans whole) or random ``segment``s of
        1..``segment_max`` tokens (one ``rng.randint`` per segment)."""
        if mode == "token":
            return [(i, i + 1) for i in range(len(content))]
        if mode == "word":
            return self.units_by_words(content)
        if mode == "entity":
            return self.units_by_words(content, self.entity_ranges(content, meta or {}))
        units, i = [], 0
        while i < len(content):
            step = rng.randint(1, segment_max)
            units.append((i, min(i + step, len(content))))
            i += step
        return units

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
