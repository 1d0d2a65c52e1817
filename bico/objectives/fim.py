"""``fim``: fill-in-the-middle (Bavarian et al. 2022, "Efficient Training of Language Models to Fill
in the Middle", arXiv 2207.14255).

Rules: with probability ``fim_rate`` an example is transformed, otherwise it is plain NTP.
The text between its leading special tokens and the final EOS is cut at two points drawn
uniformly (token level here; the paper cuts characters before tokenizing) into prefix,
middle and suffix, and rearranged with sentinel tokens:

* PSM (probability 1 - ``spm_rate``): ``<PRE> prefix <SUF> suffix <MID> middle EOS``
* SPM (probability ``spm_rate``): ``<PRE> <SUF> suffix <MID> prefix middle EOS`` (the paper's
  SPM variant, so the middle continues the prefix)

Causal attention, standard positions, next-token loss on every token (the paper's joint
training, no loss masking); with loss spans, on the spans' tokens only, wherever they move
(the sentinels then get no loss). Sentinels ``<|fim_prefix|>``, ``<|fim_suffix|>``,
``<|fim_middle|>`` are added as special tokens when the tokenizer lacks them.
"""

from __future__ import annotations

from bico.objectives.base import (
    Example,
    Objective,
    Sample,
    add_special_token,
    next_token_sample,
    rearranged,
    strip_specials,
)
from bico.objectives.registry import ObjectiveError, register

SENTINELS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


@register("fim")
class FillInTheMiddle(Objective):
    def __init__(self, tokenizer, fim_rate: float = 0.5, spm_rate: float = 0.5):
        super().__init__(tokenizer)
        for key, value in (("fim_rate", fim_rate), ("spm_rate", spm_rate)):
            if not 0.0 <= value <= 1.0:
                raise ObjectiveError(f"fim.{key} must be in [0, 1], got {value}")
        self.fim_rate, self.spm_rate = float(fim_rate), float(spm_rate)
        self.pre_id, self.suf_id, self.mid_id = (add_special_token(tokenizer, t) for t in SENTINELS)
        self.special_ids = self.special_ids | {self.pre_id, self.suf_id, self.mid_id}

    def arrange(self, ids: list[int], rng) -> tuple[list[int], str]:
        """The (possibly) rearranged text and its mode: ``ntp``, ``psm`` or ``spm``."""
        out, _, mode = self.arranged(ids, None, rng)
        return out, mode

    def arranged(self, ids: list[int], allowed, rng):
        """(the text, its loss flags (see :func:`rearranged`), the mode)."""
        if rng.random() >= self.fim_rate:
            return ids, allowed, "ntp"
        lead, content, _ = strip_specials(ids, self.special_ids)
        i, j = sorted(rng.randint(0, len(content)) for _ in range(2))
        prefix, middle, suffix = (0, i), (i, j), (j, len(content))
        if rng.random() < self.spm_rate:
            pieces, mode = [self.pre_id, self.suf_id, suffix, self.mid_id, prefix, middle], "spm"
        else:
            pieces, mode = [self.pre_id, prefix, self.suf_id, suffix, self.mid_id, middle], "psm"
        out, flags = rearranged(ids, allowed, len(lead), len(lead) + len(content), pieces)
        return out, flags, mode

    def encode(self, example: Example, rng, state=None) -> Sample:
        ids, allowed, _ = self.arranged(self.text_ids(example), self.allowed(example), rng)
        return next_token_sample(ids, allowed=allowed)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "fim_rate": self.fim_rate,
            "spm_rate": self.spm_rate,
            "sentinel_ids": [self.pre_id, self.suf_id, self.mid_id],
        }
