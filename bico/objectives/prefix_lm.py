"""``prefix_lm``: prefix language modelling (Raffel et al. 2020, T5; the S-denoiser of UL2, Tay et al. 2023).

Rules: text = prompt + completion + EOS; attention is bidirectional over the prompt tokens
and causal over the completion (``IntervalMask.prefix_lm``); standard RoPE; loss on the
completion and EOS only, shifted (token t predicted at t-1, the last prompt position predicts
the first completion token). The prompt gets no loss: with bidirectional attention its
tokens would be visible to the positions that predict them.
"""

from __future__ import annotations

import torch

from bico.masks import IntervalMask
from bico.objectives.base import Example, Objective, Sample, next_token_targets
from bico.objectives.registry import register


@register("prefix_lm")
class PrefixLM(Objective):
    def encode(self, example: Example, rng=None, state=None) -> Sample:
        ids = self.text_ids(example)
        prefix = len(example.prompt_ids)
        return Sample(
            input_ids=torch.tensor(ids, dtype=torch.long),
            targets=next_token_targets(ids, first_target=max(prefix, 1), allowed=self.allowed(example)),
            position_ids=torch.arange(len(ids)),
            mask=IntervalMask.prefix_lm(len(ids), prefix),
        )
