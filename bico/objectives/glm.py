"""``glm``: autoregressive blank infilling (Du et al., ACL 2022, arXiv 2103.10360) on a decoder-only model.

Rules (GLM's paper and released code, ``blocklm_utils.py``):

* maskable tokens: not special and not the first token of the text. Let n be their count.
* span lengths: zero-truncated Poisson(``poisson_lambda``=3) capped at ``max_span``=39
  (weights pmf(1..39)); spans are drawn until at least ``max(1, int(mask_ratio * n))``
  tokens are covered (``mask_ratio``=0.15). A length that no longer fits in the room left is
  redrawn from the same distribution truncated to that room.
* placement: uniformly at random, no overlap, at least one unmasked token between spans.
* Part A = the text with each span replaced by one mask token. Part B = the spans in
  shuffled order (``shuffle``), each as ``[S] s_1 .. s_l`` with targets ``s_1 .. s_l [E]``.
  Loss on Part B only (its layout is already "next token": no extra shift).
* attention: Part A bidirectional and blind to Part B; Part B sees all of Part A and
  earlier Part B causally (exactly ``IntervalMask.prefix_lm`` with prefix = Part A).
  ``isolated_spans=True``: a span sees Part A and itself only.
* positions ``"2d"`` (GLM's 2-D positions as ChatGLM's 2-D RoPE): ``position_ids`` = index
  in Part A, a span's Part B tokens take the index of its mask; ``block_position_ids`` = 0 in
  Part A and 1..l+1 over a span's Part B tokens; the lower half of RoPE's frequency pairs
  rotates by the first, the upper half by the second. ``"flat"``: one RoPE, every token at
  its original-text position (a mask at its span's start, ``[S]`` at the position just
  before the span, so each Part B position predicts the token one position after it, as in
  pretraining).

Special tokens: the mask (``mask_token``, default ``"added"`` = a new ``<|mask|>``; see
:func:`bico.objectives.bico.resolve_mask_id`) and new ``<|sop|>`` / ``<|eop|>``.
"""

from __future__ import annotations

import math

import torch

from bico.masks import IntervalMask
from bico.objectives.base import IGNORE, Example, Objective, Sample, add_special_token, resolve_mask_id
from bico.objectives.registry import ObjectiveError, register

SOP_TOKEN, EOP_TOKEN = "<|sop|>", "<|eop|>"


def poisson_weights(lam: float, cap: int) -> list[float]:
    """Zero-truncated Poisson(lam) on 1..cap (unnormalised pmf)."""
    return [math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1)) for k in range(1, cap + 1)]


def sample_spans(eligible: list[bool], rng, *, ratio: float, weights: list[float]) -> list[tuple[int, int]]:
    """Non-overlapping ``[start, end)`` spans over the eligible positions, in text order."""
    where = [i for i, ok in enumerate(eligible) if ok]
    if not where:
        return []
    first, last = where[0], where[-1] + 1
    n = len(where)
    target = max(1, int(ratio * n))
    lengths: list[int] = []
    while sum(lengths) < target:
        room = (last - first) - sum(lengths) - len(lengths)  # one unmasked token between spans
        if room <= 0:
            break
        w = weights[: min(room, len(weights))]
        lengths.append(rng.choices(range(1, len(w) + 1), weights=w)[0])
    # Stars and bars: the free tokens fall into the gaps before, between and after spans.
    free = (last - first) - sum(lengths) - (len(lengths) - 1)
    places = sorted(rng.randrange(free + 1) for _ in lengths)
    spans, offset = [], first
    for place, length in zip(places, lengths):
        start = offset + place
        spans.append((start, start + length))
        offset += length + 1
    # A special token inside [first, last) (never the case for prompt + completion) voids its span.
    return [(a, b) for a, b in spans if all(eligible[a:b])]


@register("glm")
class BlankInfilling(Objective):
    def __init__(
        self,
        tokenizer,
        mask_ratio: float = 0.15,
        poisson_lambda: float = 3.0,
        max_span: int = 39,
        positions: str = "2d",
        isolated_spans: bool = False,
        shuffle: bool = True,
        mask_token: str = "added",
    ):
        super().__init__(tokenizer)
        if not 0.0 < mask_ratio < 1.0:
            raise ObjectiveError(f"glm.mask_ratio must be in (0, 1), got {mask_ratio}")
        if positions not in ("2d", "flat"):
            raise ObjectiveError(f"glm.positions must be '2d' or 'flat', got {positions!r}")
        if poisson_lambda <= 0 or int(max_span) < 1:
            raise ObjectiveError("glm.poisson_lambda must be > 0 and glm.max_span >= 1")
        self.mask_ratio, self.poisson_lambda, self.max_span = mask_ratio, float(poisson_lambda), int(max_span)
        self.positions, self.isolated_spans, self.shuffle = positions, bool(isolated_spans), bool(shuffle)
        self.mask_token = mask_token
        self.mask_id = resolve_mask_id(tokenizer, mask_token)
        self.sop_id = add_special_token(tokenizer, SOP_TOKEN)
        self.eop_id = add_special_token(tokenizer, EOP_TOKEN)
        self.special_ids = self.special_ids | {self.mask_id, self.sop_id, self.eop_id}
        self.weights = poisson_weights(self.poisson_lambda, self.max_span)

    def spans(self, ids: list[int], rng, runs=None) -> list[tuple[int, int]]:
        """``runs``: the example's ``loss_spans`` (None = the whole text); spans are drawn inside each
        run, so that none is lost by crossing text outside it (a chat's user turns)."""
        eligible = [i > 0 and t not in self.special_ids for i, t in enumerate(ids)]
        out = []
        for a, b in runs or [(0, len(ids))]:
            out += sample_spans(
                [ok and a <= i < b for i, ok in enumerate(eligible)], rng, ratio=self.mask_ratio, weights=self.weights
            )
        return out

    def encode(self, example: Example, rng, state=None) -> Sample:
        ids = self.text_ids(example)
        spans = self.spans(ids, rng, example.loss_spans)
        starts = {a: k for k, (a, _) in enumerate(spans)}
        # Part A: the corrupted text; remember each span's mask index.
        part_a, orig_pos, mask_index = [], [], [0] * len(spans)
        i = 0
        while i < len(ids):
            if i in starts:
                k = starts[i]
                mask_index[k] = len(part_a)
                part_a.append(self.mask_id)
                orig_pos.append(i)
                i = spans[k][1]
            else:
                part_a.append(ids[i])
                orig_pos.append(i)
                i += 1
        order = list(range(len(spans)))
        if self.shuffle:
            rng.shuffle(order)
        sep = len(part_a)
        inputs, targets = list(part_a), [IGNORE] * sep
        pos_2d, block, flat = list(range(sep)), [0] * sep, list(orig_pos)
        blocks = []
        for k in order:
            a, b = spans[k]
            tokens = ids[a:b]
            blocks.append((len(inputs), len(inputs) + len(tokens) + 1))
            inputs += [self.sop_id] + tokens
            targets += tokens + [self.eop_id]
            pos_2d += [mask_index[k]] * (len(tokens) + 1)
            block += list(range(1, len(tokens) + 2))
            flat += list(range(a - 1, b))
        total = len(inputs)
        if self.isolated_spans:
            mask = IntervalMask.isolated_blocks(total, sep, blocks)
        else:
            mask = IntervalMask.prefix_lm(total, sep)
        two_d = self.positions == "2d"
        if two_d:
            mask = mask.with_rope("2d", torch.tensor(block, dtype=torch.long))
        return Sample(
            input_ids=torch.tensor(inputs, dtype=torch.long),
            targets=torch.tensor(targets, dtype=torch.long),
            position_ids=torch.tensor(pos_2d if two_d else flat, dtype=torch.long),
            mask=mask,
        )

    def describe(self) -> dict:
        return {
            "name": self.name,
            "mask_ratio": self.mask_ratio,
            "poisson_lambda": self.poisson_lambda,
            "max_span": self.max_span,
            "positions": self.positions,
            "isolated_spans": self.isolated_spans,
            "shuffle": self.shuffle,
            "mask_token": self.mask_token,
            "mask_id": self.mask_id,
            "sop_id": self.sop_id,
            "eop_id": self.eop_id,
        }
