"""``bico``: BICO (Lv et al. 2023, arXiv 2311.07468), as its released code trains.

Per batch, with probability ``ntp_mix`` a plain NTP step (causal, loss on every token);
otherwise a denoising step:

* every non-special token is masked independently with probability ``mask_ratio`` and
  replaced in place by the mask id (100% replacement, no 80/10/10, no spans);
* masked positions are hidden as keys from every query; attention is otherwise fully
  bidirectional;
* mirrored RoPE (``rope="mirrored"``): a key d positions after the query is scored like a
  key d positions before it;
* loss on masked tokens only, shifted (``shift=True``): masked token t is predicted from the
  output at position t-1, keeping the pretrained LM head's next-token alignment. With
  ``shift=False`` token t is predicted at its own position.

Entity-aware masking (not in the paper; off by default): with ``entity_mask`` > 0, in a
denoising step each example, with probability ``entity_mask``, also has one whole entity span
masked — the fact's ``name`` (``entity="name"``), its ``description``, or either at random
(``"any"``) — as found through ``Example.meta`` (the reversal data's ``facts.jsonl``; without it,
runs of capitalised words), its tokens inside the loss spans. The model must then rebuild the
whole name from the description around it, the association a reversed question asks for. With
``shift`` a span token at position 0 is masked but has no target (nothing precedes it; SmolLM2
adds no BOS).

The first token (``lead_token``; not in the paper, default none): SmolLM2's tokenizer adds no
BOS, so under ``shift`` the first token of a row is never a target, in the denoising and the NTP
steps alike — and many p2d rows start with the name. ``lead_token: bos`` (or any existing token)
puts a special token before every example, so that the name's first piece is predicted as
every other token is. The lead token itself is never masked nor predicted.

``mask_token``: ``"unk"`` (the paper: Llama's ``<unk>``), ``"pad"``, ``"added"`` (a new
``<|mask|>`` special token; the trainer resizes the embeddings) or any existing token string.
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
    next_token_sample,
    resolve_mask_id,
)
from bico.objectives.registry import ObjectiveError, register

ENTITIES = ("name", "description", "any")


@register("bico")
class Bico(Objective):
    def __init__(
        self,
        tokenizer,
        mask_ratio: float = 0.15,
        ntp_mix: float = 0.5,
        mask_token: str = "unk",
        rope: str = "mirrored",
        shift: bool = True,
        entity_mask: float = 0.0,
        entity: str = "name",
        lead_token: str | None = None,
    ):
        super().__init__(tokenizer)
        if not 0.0 < mask_ratio < 1.0:
            raise ObjectiveError(f"bico.mask_ratio must be in (0, 1), got {mask_ratio}")
        if not 0.0 <= ntp_mix < 1.0:
            raise ObjectiveError(f"bico.ntp_mix must be in [0, 1), got {ntp_mix}")
        check_rope("bico", rope)
        if not 0.0 <= entity_mask <= 1.0:
            raise ObjectiveError(f"bico.entity_mask must be in [0, 1], got {entity_mask}")
        if entity not in ENTITIES:
            raise ObjectiveError(f"bico.entity must be one of {', '.join(ENTITIES)}, got {entity!r}")
        self.entity_mask, self.entity = float(entity_mask), entity
        self.mask_ratio, self.ntp_mix, self.rope, self.shift = mask_ratio, ntp_mix, rope, bool(shift)
        self.mask_token = mask_token
        self.mask_id = resolve_mask_id(tokenizer, mask_token)
        self.special_ids = self.special_ids | {self.mask_id}
        self.lead_token = lead_token
        self.lead_id = None if lead_token is None else resolve_lead_id(tokenizer, lead_token)
        if self.lead_id is not None:
            self.special_ids = self.special_ids | {self.lead_id}

    def start_batch(self, rng) -> str:
        return "ntp" if rng.random() < self.ntp_mix else "denoise"

    def encode(self, example: Example, rng, state: str | None = None) -> Sample:
        if self.lead_id is not None:  # the text's first token becomes a target like every other
            example = example.with_inserted(0, [self.lead_id])
        if state == "ntp":
            return next_token_sample(self.text_ids(example), allowed=self.allowed(example))
        ids = torch.tensor(self.text_ids(example), dtype=torch.long)
        n = ids.numel()
        draws = torch.tensor([rng.random() for _ in range(n)])
        allowed = self.allowed(example)
        masked = eligible_tokens(ids, self.special_ids, self.shift, allowed) & (draws < self.mask_ratio)
        if self.entity_mask and rng.random() < self.entity_mask:
            span = self.entity_span(ids, example.meta, rng)
            masked |= span if allowed is None else span & allowed
        predicted = masked.clone()
        if self.shift and n:
            predicted[0] = False  # an entity token at position 0: hidden, but nothing precedes it to predict it
        return denoising_sample(
            ids.masked_fill(masked, self.mask_id), masked_targets(ids, predicted, self.shift), masked, self.rope
        )

    def entity_span(self, ids: torch.Tensor, meta: dict, rng) -> torch.Tensor:
        """Boolean mask of one whole entity span of the example (none found: all False)."""
        key = rng.choice(("name", "description")) if self.entity == "any" else self.entity
        span = torch.zeros(ids.numel(), dtype=torch.bool)
        ranges = self.entity_ranges(ids.tolist(), meta or {}, keys=(key,))
        if ranges:
            a, b = ranges[rng.randrange(len(ranges))]
            span[a:b] = True
        special = torch.tensor([int(i) in self.special_ids for i in ids.tolist()], dtype=torch.bool)
        return span & ~special

    def describe(self) -> dict:
        return {
            "name": self.name,
            "mask_ratio": self.mask_ratio,
            "ntp_mix": self.ntp_mix,
            "mask_token": self.mask_token,
            "mask_id": self.mask_id,
            "rope": self.rope,
            "shift": self.shift,
            "entity_mask": self.entity_mask,
            "entity": self.entity,
            "lead_token": self.lead_token,
        }


def resolve_lead_id(tokenizer, lead_token: str) -> int:
    """``"bos"``: the tokenizer's BOS token (its EOS where it has none, as SmolLM2); else a token
    string that must exist in the vocabulary (e.g. ``"<|endoftext|>"``)."""
    if lead_token == "bos":
        token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if token_id is None:
            raise ObjectiveError("bico.lead_token=bos: the tokenizer has neither a BOS nor an EOS token; name a token")
        return int(token_id)
    token_id = tokenizer.convert_tokens_to_ids(lead_token)
    if token_id is None or token_id == tokenizer.unk_token_id and lead_token != tokenizer.unk_token:
        raise ObjectiveError(
            f"bico.lead_token {lead_token!r} is not a token of this tokenizer: use bos or an existing token"
        )
    return int(token_id)
