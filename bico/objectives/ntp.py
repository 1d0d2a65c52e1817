"""``ntp``: plain next-token prediction, the baseline of Berglund et al. and of BICO.

Text = prompt + completion + EOS, causal attention, standard RoPE, loss on every token
(as in both papers' code: no loss masking of the prompt); ``completion_only=True`` restricts
the loss to the completion and EOS.
"""

from __future__ import annotations

from bico.objectives.base import Example, Objective, Sample, next_token_sample
from bico.objectives.registry import register


@register("ntp")
class NextTokenPrediction(Objective):
    def __init__(self, tokenizer, completion_only: bool = False):
        super().__init__(tokenizer)
        self.completion_only = bool(completion_only)

    def encode(self, example: Example, rng=None, state=None) -> Sample:
        first = len(example.prompt_ids) if self.completion_only else 1
        return next_token_sample(self.text_ids(example), first_target=first, allowed=self.allowed(example))

    def describe(self) -> dict:
        return {"name": self.name, "completion_only": self.completion_only}
