"""NTP and BICO samples against direct constructions; seeds; options; the registry."""
import random

import pytest
import torch

from bico import IntervalMask
from bico.objectives import IGNORE, Example, build_objective


def example(tokenizer, prompt="Daphne Barrington is", completion=" the director of A Journey Through Time."):
    return Example(prompt, completion, tokenizer(prompt).input_ids,
                   tokenizer(completion, add_special_tokens=False).input_ids)


def test_ntp_targets_every_next_token(tokenizer):
    ex = example(tokenizer)
    s = build_objective("ntp", tokenizer).encode(ex, random.Random(0))
    ids = ex.prompt_ids + ex.completion_ids + [tokenizer.eos_token_id]
    assert s.input_ids.tolist() == ids
    assert s.targets.tolist() == ids[1:] + [IGNORE]
    assert s.mask == IntervalMask.causal(len(ids))
    assert s.position_ids.tolist() == list(range(len(ids))) and s.mask.rope == "standard"


def test_ntp_completion_only(tokenizer):
    ex = example(tokenizer)
    s = build_objective("ntp", tokenizer, {"completion_only": True}).encode(ex, random.Random(0))
    p = len(ex.prompt_ids)
    assert (s.targets[: p - 1] == IGNORE).all()
    assert s.targets[p - 1:-1].tolist() == ex.completion_ids + [tokenizer.eos_token_id]


def _denoise(tokenizer, seed=0, **options):
    obj = build_objective("bico", tokenizer, options)
    ex = example(tokenizer)
    return obj, ex, obj.encode(ex, random.Random(seed), "denoise")


@pytest.mark.parametrize("shift", [True, False])
def test_bico_denoising_sample(tokenizer, shift):
    obj, ex, s = _denoise(tokenizer, seed=3, mask_ratio=0.5, shift=shift)
    original = torch.tensor(ex.prompt_ids + ex.completion_ids + [tokenizer.eos_token_id])
    masked = s.input_ids != original
    assert masked.any()
    assert (s.input_ids[masked] == obj.mask_id).all()
    # Masked positions are hidden keys, everything else is fully bidirectional.
    assert torch.equal(s.mask.dense(), IntervalMask.bico(len(original), masked).dense())
    # Loss only on masked tokens, predicted from t-1 (shift) or t.
    where = masked.nonzero().flatten()
    expected = torch.full_like(original, IGNORE)
    expected[where - 1 if shift else where] = original[where]
    assert torch.equal(s.targets, expected)
    assert s.mask.rope == "mirrored"


def test_bico_never_masks_special_tokens_and_hits_the_ratio(tokenizer):
    obj = build_objective("bico", tokenizer, {"mask_ratio": 0.15})
    ex = example(tokenizer)
    rng = random.Random(0)
    hits = total = 0
    for _ in range(400):
        s = obj.encode(ex, rng, "denoise")
        assert s.input_ids[-1] == tokenizer.eos_token_id  # EOS is special: never masked
        assert s.input_ids[0] != obj.mask_id  # nothing before position 0 could predict it
        hits += int((s.input_ids == obj.mask_id).sum())
        total += len(s) - 2
    assert 0.12 < hits / total < 0.18


def test_bico_batch_modes_follow_ntp_mix_and_ntp_branch_is_ntp(tokenizer):
    obj = build_objective("bico", tokenizer, {"ntp_mix": 0.3})
    rng = random.Random(1)
    modes = [obj.start_batch(rng) for _ in range(2000)]
    assert 0.26 < modes.count("ntp") / len(modes) < 0.34
    ex = example(tokenizer)
    ntp = build_objective("ntp", tokenizer).encode(ex, random.Random(0))
    s = obj.encode(ex, random.Random(0), "ntp")
    assert torch.equal(s.targets, ntp.targets) and s.mask == ntp.mask and s.mask.rope == "standard"


def test_bico_same_seed_same_sample_and_options(tokenizer):
    _, _, a = _denoise(tokenizer, seed=5, mask_ratio=0.4)
    _, _, b = _denoise(tokenizer, seed=5, mask_ratio=0.4)
    _, _, c = _denoise(tokenizer, seed=6, mask_ratio=0.4)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.input_ids, c.input_ids)
    _, _, s = _denoise(tokenizer, rope="standard")
    assert s.mask.rope == "standard"


def test_bico_mask_token_choices(tokenizer):
    assert build_objective("bico", tokenizer).mask_id == tokenizer.unk_token_id
    assert build_objective("bico", tokenizer, {"mask_token": "pad"}).mask_id == tokenizer.pad_token_id
    import copy

    tok = copy.deepcopy(tokenizer)
    n = len(tok)
    obj = build_objective("bico", tok, {"mask_token": "added"})
    assert obj.mask_id == n and len(tok) == n + 1
    with pytest.raises(ValueError, match="does not exist"):
        build_objective("bico", tokenizer, {"mask_token": "<|no such token|>"})


def test_registry_errors(tokenizer):
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        build_objective("nope", tokenizer)
    with pytest.raises(ValueError, match="has no option"):
        build_objective("bico", tokenizer, {"mask_rate": 0.2})
    with pytest.raises(ValueError, match="mask_ratio"):
        build_objective("bico", tokenizer, {"mask_ratio": 1.5})
