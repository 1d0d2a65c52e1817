"""``mlm_u``: masked LM with a uniformly drawn masking rate (Kitouni et al. 2024, "The Factorization
Curse", arXiv 2406.05183), i.e. the absorbing-state masked-diffusion loss (DiffuLLaMA, Gong et al.
2024, arXiv 2410.17891).

Rules:

* per sequence, a rate r ~ U(``min_rate``, 1) (DiffuLLaMA's epsilon = 1e-3 keeps 1/r finite);
  every non-special token is masked independently with probability r and replaced by the mask
  token (100%, no 80/10/10). With ``shift`` the first token is never masked.
* attention: bidirectional; ``hide_masked=True`` (Kitouni: masked tokens are attended by
  nobody) hides masked positions as keys; ``False`` keeps them visible (DiffuLLaMA, LLaDA).
* loss on masked tokens, each weighted by 1/r; the trainer divides the batch's weighted sum
  by its number of targets, as DiffuLLaMA's ``(dsigma * loss).sum() / loss_mask.sum()``.
* ``shift=True``: masked token t is predicted at t-1 (DiffuLLaMA keeps the AR shift);
  ``shift=False``: at t (LLaDA).
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


@register("mlm_u")
class UniformRateMLM(Objective):
    def __init__(
        self,
        tokenizer,
        mask_token: str = "unk",
        shift: bool = True,
        hide_masked: bool = True,
        min_rate: float = 1e-3,
        rope: str = "standard",
    ):
        super().__init__(tokenizer)
        if not 0.0 < min_rate < 1.0:
            raise ObjectiveError(f"mlm_u.min_rate must be in (0, 1), got {min_rate}")
        check_rope("mlm_u", rope)
        self.mask_token, self.shift, self.hide_masked = mask_token, bool(shift), bool(hide_masked)
        self.min_rate, self.rope = float(min_rate), rope
        self.mask_id = resolve_mask_id(tokenizer, mask_token)
        self.special_ids = self.special_ids | {self.mask_id}

    def encode(self, example: Example, rng, state=None) -> Sample:
        ids = torch.tensor(self.text_ids(example), dtype=torch.long)
        n = ids.numel()
        rate = rng.uniform(self.min_rate, 1.0)
        draws = torch.tensor([rng.random() for _ in range(n)])
        masked = eligible_tokens(ids, self.special_ids, self.shift, self.allowed(example)) & (draws < rate)
        return denoising_sample(
            ids.masked_fill(masked, self.mask_id),
            masked_targets(ids, masked, self.shift),
            masked if self.hide_masked else None,
            self.rope,
            weights=torch.full((n,), 1.0 / rate),
        )

    def describe(self) -> dict:
        return {
            "name": self.name,
            "mask_token": self.mask_token,
            "mask_id": self.mask_id,
            "shift": self.shift,
            "hide_masked": self.hide_masked,
            "min_rate": self.min_rate,
            "rope": self.rope,
        }
