"""Contracts every registered objective keeps, checked over the registry (a new objective is covered
without being listed here): reproducible samples with interval masks and in-range targets, loss spans
honoured, and masks never edited after they are built."""

import dataclasses
import random

import pytest
import torch

from bico.masks import INDEX_DTYPE, IntervalMask
from bico.objectives import IGNORE, REGISTRY, Example, build_objective
from bico.objectives.masked_ar import RELEASED_INSTRUCTION
from helpers import META, encode, example, text

# Options beyond the defaults, for objectives whose other modes take other code paths ({} = the defaults;
# mix has no defaults). Every registered objective runs with each of its entries, or with {} if it has none.
VARIANTS = {
    "anneal": [
        {"steps": 10},
        {"inner": "bd3lm", "steps": 10},
        {"inner": "masked_ar", "steps": 10},
        {"inner": "mlm_u", "steps": 10},
    ],
    "bico": [{}, {"entity_mask": 1.0, "entity": "any", "mask_ratio": 0.5}],
    "bd3lm": [{}, {"block_size": 3, "shift": False, "rate_per": "sample"}],
    "fim": [{"fim_rate": 1.0}, {"fim_rate": 1.0, "spm_rate": 1.0}],
    "glm": [
        {},
        {"positions": "flat", "isolated_spans": True, "mask_ratio": 0.5},
        {"positions": "flat", "isolated_spans": True},
    ],
    "masked_ar": [{}, {"positions": "shared", "loss_on": "both", "separator": "token"}],
    "mix": [
        {"preset": "ul2"},
        {"components": [{"name": n, "mode_token": f"[{n}]"} for n in ("ntp", "bico", "reverse")]},
        {"components": [{"name": "ntp", "weight": 1}, {"name": "glm", "weight": 1}]},
    ],
    "mntp": [
        {},
        {"replacement": "all_mask", "shift": False, "mask_ratio": 0.9},
        {"replacement": "all_mask", "shift": False, "hide_masked": True},
    ],
    "mlm_u": [{}, {"shift": False}, {"shift": False, "hide_masked": False}],
    "ntp": [{}, {"completion_only": True}],
    "permute": [
        {},
        {"mode": "segment", "segment_max": 3, "original_prob": 0, "reverse_prob": 0.5, "permute_prob": 0.5},
        {"mode": "segment", "segment_max": 3},
    ],
    "reverse": [{}, {"mode": "segment", "segment_max": 3}, {"mode": "token", "forward": False}, {"mode": "entity"}],
}
CONFIGS = [(name, options) for name in sorted(REGISTRY) for options in VARIANTS.get(name, [{}])]
IDS = [f"{name}-{k}" for name in sorted(REGISTRY) for k in range(len(VARIANTS.get(name, [{}])))]
# Configurations that draw nothing at random: one sample whatever the seed. Any other must vary with it.
DETERMINISTIC = {"ntp-0", "ntp-1", "prefix_lm-0", "reverse-0", "reverse-2", "reverse-3"}


def test_variants_name_registered_objectives():
    assert set(VARIANTS) <= set(REGISTRY) and DETERMINISTIC <= set(IDS)


@pytest.mark.parametrize("name,options", CONFIGS, ids=IDS)
def test_common_contract(tok, name, options, request):
    obj = build_objective(name, tok, options)
    ex = example(tok, meta=META)
    original = text(tok, ex)
    targets = 0
    for seed in range(8):
        a, b = encode(obj, ex, seed), encode(obj, ex, seed)
        for field in ("input_ids", "targets", "position_ids"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field  # fixed seed, same sample
        assert a.mask == b.mask
        n = len(a)
        assert a.mask.lo.dtype == INDEX_DTYPE and a.mask.lo.shape == a.mask.hi.shape == (1, n)
        assert a.targets.shape == a.position_ids.shape == (n,)
        assert ((a.targets == IGNORE) | ((a.targets >= 0) & (a.targets < len(tok)))).all()
        targets += int((a.targets != IGNORE).sum())
        # EOS (special) is never corrupted: the last token of the (first) document is still EOS.
        assert tok.eos_token_id in a.input_ids.tolist()
        if name in ("mntp", "mlm_u"):
            kept = [i for i, t in enumerate(original) if t in obj.special_ids]
            assert all(int(a.input_ids[i]) == original[i] for i in kept)
    # Over the seeds, not per sample: one draw per token at a fixed rate may select nothing (mntp,
    # seed 0: all 24 eligible draws >= 0.2), and the trainer counts such a sample's 0 targets.
    assert targets
    seeds = {
        tuple(encode(obj, ex, s).input_ids.tolist()) + tuple(encode(obj, ex, s).targets.tolist()) for s in range(8)
    }
    if request.node.callspec.id in DETERMINISTIC:
        assert len(seeds) == 1
    else:
        assert len(seeds) > 1  # different seeds, different samples


def spanned_example(tok):
    """A chat-like example: user text (no loss), an answer, user text, an answer + EOS (loss). Every
    text token is a distinct lowercase word, so a target or a lost token names where it came from."""
    avoid = set(tok(RELEASED_INSTRUCTION, add_special_tokens=False).input_ids) | set(tok.all_special_ids)
    words = sorted(
        i
        for t, i in tok.get_vocab().items()
        if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower() and len(t) > 5 and i not in avoid
    )
    user1, answer1, user2, answer2 = words[:6], words[6:12], words[12:16], words[16:24]
    ids = user1 + answer1 + user2 + answer2
    meta = {"name": tok.decode(user1[1:3]).strip(), "description": tok.decode(user2[:2]).strip()}
    spans = [(6, 12), (16, len(ids) + 1)]  # the second answer's span takes the EOS
    return Example("", tok.decode(ids), [], ids, meta, eos=True, loss_spans=spans), set(user1 + user2)


@pytest.mark.parametrize("name,options", CONFIGS, ids=IDS)
def test_no_token_outside_the_loss_spans_is_predicted_or_masked(tok, name, options):
    obj = build_objective(name, tok, options)
    ex, untrained = spanned_example(tok)
    targets = 0
    for seed in range(24):
        rng = random.Random(seed)
        sample = obj.encode(ex, rng, obj.start_batch(rng))
        predicted = set(sample.targets[sample.targets != IGNORE].tolist())
        assert not predicted & untrained, f"seed {seed}: predicts tokens outside the loss spans"
        targets += len(predicted)
        # Each copy of the text the objective lays out keeps every untrained token intact: a masked
        # or replaced one would be missing from a copy, so the counts would differ.
        counts = {t: sample.input_ids.tolist().count(t) for t in untrained}
        assert len(set(counts.values())) == 1 and min(counts.values()) >= 1, f"seed {seed}: masks {counts}"
    assert targets  # the spans themselves are trained


@pytest.mark.parametrize("name,options", CONFIGS, ids=IDS)
def test_masks_are_not_edited_after_they_are_built(tok, name, options, monkeypatch):
    """An edit in place would leave the tile classification cached on the mask stale."""
    built = []
    init = IntervalMask.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append((self, self.lo.clone(), self.hi.clone()))

    monkeypatch.setattr(IntervalMask, "__init__", recording_init)
    obj = build_objective(name, tok, options)
    ex, _ = spanned_example(tok)
    for seed in range(8):
        rng = random.Random(seed)
        obj.encode(ex, rng, obj.start_batch(rng))
        obj.encode(dataclasses.replace(ex, loss_spans=None), rng, obj.start_batch(rng))
    assert built
    for mask, lo, hi in built:
        assert torch.equal(mask.lo, lo) and torch.equal(mask.hi, hi)
