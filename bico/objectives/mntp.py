"""``mntp``: fixed-rate masked next-token prediction (LLM2Vec, BehnamGhader et al. 2024, arXiv 2404.05961).

Rules (LLM2Vec's MNTP recipe, HF's masked-LM collator):

* one draw per token: a non-special token is selected with probability ``mask_ratio``
  (LLM2Vec: 0.2 for Llama, 0.8 all-mask for Mistral). With ``shift`` the first token is
  never selected (nothing precedes it to predict it from).
* ``replacement="80/10/10"``: a selected token becomes the mask token with probability 0.8,
  a uniformly random non-special token with 0.1, stays unchanged with 0.1;
  ``"all_mask"``: every selected token becomes the mask token.
* attention: bidirectional; ``hide_masked=True`` also hides every selected position as a key
  (BICO's rule); LLM2Vec keeps them visible (the default).
* loss on selected tokens only; ``shift=True`` (MNTP): token t is predicted from the output
  at t-1, keeping the pretrained head's next-token alignment; ``shift=False``: at t.
* ``rope``: ``"standard"`` (LLM2Vec) or ``"mirrored"`` (BICO's |i-j| RoPE).

With ``mask_ratio=0.15, replacement=all_mask, hide_masked=true, rope=mirrored`` the denoising
sample is BICO's, draw for draw; ``mix`` with NTP at 0.5 then reproduces ``bico`` exactly.
"""

from __future__ import annotations

import torch

from bico.objectives.base import (
    Example,
    Objective,
    Sample,
    check_rope,
    denoising_sample,
    eligible_tokens,
    masked_targets,
    resolve_mask_id,
)
from bico.objectives.registry import ObjectiveError, register

REPLACEMENTS = ("80/10/10", "all_mask")


@register("mntp")
class MaskedNextTokenPrediction(Objective):
    def __init__(
        self,
        tokenizer,
        mask_ratio: float = 0.2,
        replacement: str = "80/10/10",
        mask_token: str = "unk",
        shift: bool = True,
        hide_masked: bool = False,
        rope: str = "standard",
    ):
        super().__init__(tokenizer)
        if not 0.0 < mask_ratio < 1.0:
            raise ObjectiveError(f"mntp.mask_ratio must be in (0, 1), got {mask_ratio}")
        if replacement not in REPLACEMENTS:
            raise ObjectiveError(f"mntp.replacement must be one of {', '.join(REPLACEMENTS)}, got {replacement!r}")
        check_rope("mntp", rope)
        self.mask_ratio, self.replacement, self.mask_token = mask_ratio, replacement, mask_token
        self.shift, self.hide_masked, self.rope = bool(shift), bool(hide_masked), rope
        self.mask_id = resolve_mask_id(tokenizer, mask_token)
        self.special_ids = self.special_ids | {self.mask_id}
        self.vocab_size = len(tokenizer)

    def _random_token(self, rng) -> int:
        while True:
            token = rng.randrange(self.vocab_size)
            if token not in self.special_ids:
                return token

    def encode(self, example: Example, rng, state=None) -> Sample:
        ids = torch.tensor(self.text_ids(example), dtype=torch.long)
        n = ids.numel()
        eligible = eligible_tokens(ids, self.special_ids, self.shift, self.allowed(example))
        draws = torch.tensor([rng.random() for _ in range(n)])  # one per token, as BICO draws
        selected = eligible & (draws < self.mask_ratio)
        inputs = ids.clone()
        for t in selected.nonzero().flatten().tolist():
            u = 0.0 if self.replacement == "all_mask" else rng.random()
            if u < 0.8:
                inputs[t] = self.mask_id
            elif u < 0.9:
                inputs[t] = self._random_token(rng)
        return denoising_sample(
            inputs, masked_targets(ids, selected, self.shift), selected if self.hide_masked else None, self.rope
        )

    def describe(self) -> dict:
        return {
            "name": self.name,
            "mask_ratio": self.mask_ratio,
            "replacement": self.replacement,
            "mask_token": self.mask_token,
            "mask_id": self.mask_id,
            "shift": self.shift,
            "hide_masked": self.hide_masked,
            "rope": self.rope,
        }
