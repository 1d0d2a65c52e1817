"""``bd3lm``: block diffusion (Arriola et al., ICLR 2025, "Block Diffusion: Interpolating Between
Autoregressive and Diffusion Language Models", arXiv 2503.09573; the dLLM library's
``BD3LMTrainer`` and its ``block_diff_mask``).

Rules:

* the text (prompt + completion + EOS, n tokens) is cut into blocks of ``block_size`` tokens,
  the last one possibly shorter. Block b is noised with rate t_b: ``rate_per="block"`` draws
  one t per block (the paper's NELBO, a t per block), ``"sample"`` one per example (dLLM's
  trainer); t ~ U[``min_rate``, ``max_rate``] (the paper's clipped schedule [beta, omega];
  defaults 1e-3 and 1 as MLM-U, dLLM's time epsilon). Each eligible token (not special, inside
  the loss spans; with ``shift`` not the first) is replaced by the mask token with probability t_b.
* attention, from BD3LM's three masks on [x_t, x_0]: a noisy block sees itself bidirectionally
  (M_BD) and the clean blocks before it (M_OBC); a clean block sees the clean blocks up to and
  including itself (M_BC); nothing sees a noisy block from outside it.
* layout (ours; the paper concatenates [x_t, x_0]): ``[noisy_0, clean_0, noisy_1, clean_1, ...,
  noisy_{B-1}]``. The last clean block is dropped: no noisy block comes after it and it has no
  loss, so it changes nothing but costs tokens. Positions: both copies of block b take the
  original positions of its tokens (dLLM: ``cat([base_pos, base_pos])``); standard RoPE.
* **why every key's visible rows are one interval**: a key in noisy block b is seen by exactly
  the rows of noisy block b, a contiguous range. A key in clean block b is seen by clean blocks
  b' >= b and noisy blocks b' > b; in this layout the rows from clean_b to the end are exactly
  clean_b, noisy_{b+1}, clean_{b+1}, ..., noisy_{B-1}, all of which see it, and every row
  before clean_b (noisy_{<=b}, clean_{<b}) does not. So ``lo, hi`` = (start, end) of noisy_b,
  and (start of clean_b, T) for clean_b. (In [x_t, x_0] order clean_b would be seen by rows of
  noisy_{b+1..} *and* of clean_{b..}: two ranges, not an interval mask.)
* loss on noisy tokens only: masked token p of block b is predicted at its own noisy position
  (``shift=False``, BD3LM/dLLM) or from the output one position to its left (``shift=True``,
  the AR head's alignment, as MLM-U's shift): the previous noisy position inside the block, and
  for a block's first token the last position of clean_{b-1}, whose context is exactly the
  clean prefix that noisy_b sees. Each target is weighted 1/t_b (the linear schedule's
  -alpha'/(1 - alpha) = 1/t, MLM-U's weighting); the trainer divides by the number of targets.
"""

from __future__ import annotations

import torch

from bico.masks import IntervalMask
from bico.objectives.base import IGNORE, Example, Objective, Sample, eligible_tokens, resolve_mask_id
from bico.objectives.registry import ObjectiveError, register

RATE_PER = ("block", "sample")


@register("bd3lm")
class BlockDiffusion(Objective):
    def __init__(
        self,
        tokenizer,
        block_size: int = 4,
        rate_per: str = "block",
        min_rate: float = 1e-3,
        max_rate: float = 1.0,
        mask_token: str = "added",
        shift: bool = True,
    ):
        super().__init__(tokenizer)
        if int(block_size) < 1:
            raise ObjectiveError(f"bd3lm.block_size must be >= 1, got {block_size}")
        if rate_per not in RATE_PER:
            raise ObjectiveError(f"bd3lm.rate_per must be one of {', '.join(RATE_PER)}, got {rate_per!r}")
        if not 0.0 < min_rate <= max_rate <= 1.0:
            raise ObjectiveError(f"bd3lm needs 0 < min_rate <= max_rate <= 1, got {min_rate}, {max_rate}")
        self.block_size, self.rate_per = int(block_size), rate_per
        self.min_rate, self.max_rate, self.mask_token, self.shift = (
            float(min_rate),
            float(max_rate),
            mask_token,
            bool(shift),
        )
        self.mask_id = resolve_mask_id(tokenizer, mask_token)
        self.special_ids = self.special_ids | {self.mask_id}

    def encode(self, example: Example, rng, state=None) -> Sample:
        ids = torch.tensor(self.text_ids(example), dtype=torch.long)
        n, bs = ids.numel(), self.block_size
        blocks = [(a, min(a + bs, n)) for a in range(0, n, bs)]
        if self.rate_per == "sample":
            rates = [rng.uniform(self.min_rate, self.max_rate)] * len(blocks)
        else:
            rates = [rng.uniform(self.min_rate, self.max_rate) for _ in blocks]
        draws = torch.tensor([rng.random() for _ in range(n)])
        rate_of = torch.cat([torch.full((b - a,), r) for (a, b), r in zip(blocks, rates)])
        masked = eligible_tokens(ids, self.special_ids, self.shift, self.allowed(example)) & (draws < rate_of)
        inputs, pos, noisy_at, clean_at = [], [], [0] * n, [0] * n  # layout as IntervalMask.block_diffusion
        for k, (a, b) in enumerate(blocks):
            for clean in (False, True) if k < len(blocks) - 1 else (False,):
                for p in range(a, b):
                    (clean_at if clean else noisy_at)[p] = len(inputs)
                    inputs.append(int(ids[p]) if clean or not masked[p] else self.mask_id)
                    pos.append(p)
        total = len(inputs)
        targets = torch.full((total,), IGNORE, dtype=torch.long)
        weights = torch.ones(total)
        for p in masked.nonzero().flatten().tolist():
            at = noisy_at[p] if not self.shift else noisy_at[p - 1] if p % bs else clean_at[p - 1]
            targets[at], weights[at] = ids[p], 1.0 / float(rate_of[p])
        return Sample(
            input_ids=torch.tensor(inputs, dtype=torch.long),
            targets=targets,
            position_ids=torch.tensor(pos, dtype=torch.long),
            mask=IntervalMask.block_diffusion([b - a for a, b in blocks]),
            weights=weights,
        )

    def describe(self) -> dict:
        return {
            "name": self.name,
            "block_size": self.block_size,
            "rate_per": self.rate_per,
            "min_rate": self.min_rate,
            "max_rate": self.max_rate,
            "mask_token": self.mask_token,
            "mask_id": self.mask_id,
            "shift": self.shift,
        }
