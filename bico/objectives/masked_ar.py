"""``masked_ar``: masked finetuning of a causal model (Pan et al. 2025, arXiv 2510.09885, "Closing the
Data-Efficiency Gap Between Autoregressive and Masked Diffusion LLMs"; released code
xup5/masked_arLLM, ``src/masked_ar.py`` and ``src/dataset_util.py::Dataset_AR_mask``).

The attention stays causal. A sample is a corrupted copy of the text, a separator, then the
original text; the model learns to write each token of the original after having read the
whole (corrupted) context, so a name that precedes its description is produced with the
description already seen.

Rules, and where they follow the released code:

* rate: t ~ U[``min_rate``, ``max_rate``] (released ``t_range`` default [0.05, 0.95], ``t_mode``
  "sample"); ``rate_per="batch"`` draws one t per batch as the released loop does
  (``random.uniform`` once per batch), ``"sample"`` one per example.
* corruption: every eligible token (not special, i.e. the text between the leading specials and
  EOS; released: the text tokens, ``maskable``) is replaced by the mask token independently with
  probability t (released ``forward_process_t``: ``rand < t``). ``mask_token`` default ``added``
  = a new ``<|mask|>`` (released: the untrained reserved special token 128013 of Llama 3.1).
* layout: ``lead + corrupted content + separator + content + EOS``. ``separator="instruction"``
  is the released prompt's wording as plain text (``"\\nReturn the recovered masked
  passage.\\nHere is the recovered text:\\n\\n"``); departure: no chat template, because bico
  trains raw text (the released layout wraps the corrupted copy in a Llama-3 user turn and the
  original in the assistant turn, ending with ``<|eot_id|>``; here EOS). ``"token"``: one new
  ``<|recover|>`` special token instead (for word-level vocabularies without those words).
* loss (``loss_on="original"``, released): next-token loss on the original copy and EOS, the
  first original token predicted from the last separator position. ``"both"`` (ours, as the
  issue proposes) also predicts the corrupted copy's unmasked tokens from their left neighbour.
  With loss spans, only the spans' tokens are masked and predicted (in either copy).
* positions: ``"continue"`` (released: one sequence, 0..T-1); ``"shared"`` (ours): the original
  copy takes the positions of the corrupted copy, token for token, and EOS the next one.
"""

from __future__ import annotations

import torch

from bico.masks import IntervalMask
from bico.objectives.base import (
    Example,
    Objective,
    Sample,
    add_special_token,
    next_token_targets,
    resolve_mask_id,
    strip_specials,
)
from bico.objectives.registry import ObjectiveError, register

RELEASED_INSTRUCTION = "\nReturn the recovered masked passage.\nHere is the recovered text:\n\n"
RECOVER_TOKEN = "<|recover|>"
CHOICES = {
    "rate_per": ("batch", "sample"),
    "separator": ("instruction", "token"),
    "positions": ("continue", "shared"),
    "loss_on": ("original", "both"),
}


@register("masked_ar")
class MaskedAR(Objective):
    def __init__(
        self,
        tokenizer,
        min_rate: float = 0.05,
        max_rate: float = 0.95,
        rate_per: str = "batch",
        mask_token: str = "added",
        separator: str = "instruction",
        positions: str = "continue",
        loss_on: str = "original",
    ):
        super().__init__(tokenizer)
        if not 0.0 <= min_rate <= max_rate <= 1.0:
            raise ObjectiveError(f"masked_ar needs 0 <= min_rate <= max_rate <= 1, got {min_rate}, {max_rate}")
        for key, value in (
            ("rate_per", rate_per),
            ("separator", separator),
            ("positions", positions),
            ("loss_on", loss_on),
        ):
            if value not in CHOICES[key]:
                raise ObjectiveError(f"masked_ar.{key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        self.min_rate, self.max_rate, self.rate_per = float(min_rate), float(max_rate), rate_per
        self.mask_token, self.separator, self.positions, self.loss_on = mask_token, separator, positions, loss_on
        self.mask_id = resolve_mask_id(tokenizer, mask_token)
        self.special_ids = self.special_ids | {self.mask_id}
        if separator == "token":
            self.sep_ids = [add_special_token(tokenizer, RECOVER_TOKEN)]
            self.special_ids = self.special_ids | set(self.sep_ids)
        else:
            self.sep_ids = list(tokenizer(RELEASED_INSTRUCTION, add_special_tokens=False).input_ids)

    def start_batch(self, rng):
        return rng.uniform(self.min_rate, self.max_rate) if self.rate_per == "batch" else None

    def encode(self, example: Example, rng, state=None) -> Sample:
        rate = state if isinstance(state, float) else rng.uniform(self.min_rate, self.max_rate)
        text, allowed = self.text_ids(example), self.allowed(example)
        lead, content, tail = strip_specials(text, self.special_ids)
        trained = [True] * len(text) if allowed is None else allowed.tolist()
        trained = trained[len(lead) :]  # content + tail
        # One draw per content token whether or not it may be masked, so spans change no other draw.
        masked = [rng.random() < rate and ok for ok in trained[: len(content)]]
        corrupted = lead + [self.mask_id if m else t for t, m in zip(content, masked)]
        prefix = corrupted + self.sep_ids
        ids = prefix + content + tail
        targets = next_token_targets(
            ids,
            first_target=len(prefix),  # original copy + EOS
            allowed=None if allowed is None else torch.tensor([False] * len(prefix) + trained),
        )
        if self.loss_on == "both":
            for i in range(len(lead) + 1, len(corrupted)):
                if not masked[i - len(lead)] and trained[i - len(lead)]:
                    targets[i - 1] = ids[i]
        n_copy = len(corrupted)
        if self.positions == "shared":
            pos = list(range(len(prefix))) + list(range(len(lead), n_copy)) + list(range(n_copy, n_copy + len(tail)))
        else:
            pos = list(range(len(ids)))
        return Sample(
            input_ids=torch.tensor(ids, dtype=torch.long),
            targets=targets,
            position_ids=torch.tensor(pos, dtype=torch.long),
            mask=IntervalMask.causal(len(ids)),
        )

    def describe(self) -> dict:
        return {
            "name": self.name,
            "min_rate": self.min_rate,
            "max_rate": self.max_rate,
            "rate_per": self.rate_per,
            "mask_token": self.mask_token,
            "mask_id": self.mask_id,
            "separator": self.separator,
            "sep_ids": self.sep_ids,
            "positions": self.positions,
            "loss_on": self.loss_on,
        }
