"""bico: denoising samples against direct constructions, seeds, batch modes, mask tokens, entity-aware
masking and the lead token."""

import random

import pytest
import torch

from bico import IntervalMask
from bico.objectives import IGNORE, Example, build_objective

NAME, DESCRIPTION = "Daphne Barrington", "the director of A Journey Through Time"


def example(tokenizer, prompt="Daphne Barrington is", completion=" the director of A Journey Through Time."):
    return Example(
        prompt, completion, tokenizer(prompt).input_ids, tokenizer(completion, add_special_tokens=False).input_ids
    )


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


# --- entity-aware masking, the lead token -------------------------------------------------------


def entity_example(
    tokenizer, prompt="Known as Daphne Barrington,", completion=" she is the director of A Journey Through Time."
):
    return Example(
        prompt,
        completion,
        tokenizer(prompt).input_ids,
        tokenizer(completion, add_special_tokens=False).input_ids,
        {"name": NAME, "description": DESCRIPTION},
    )


def span_of(tokenizer, ids, text):
    """Token positions whose text overlaps ``text`` (a direct construction, character offsets)."""
    pieces = [tokenizer.decode([t]) for t in ids]
    full = "".join(pieces).lower()
    at = full.index(text.lower())
    out, pos = [], 0
    for i, p in enumerate(pieces):
        if pos < at + len(text) and pos + len(p) > at:
            out.append(i)
        pos += len(p)
    return out


@pytest.mark.parametrize("entity,text", [("name", NAME), ("description", DESCRIPTION)])
@pytest.mark.parametrize("shift", [True, False])
def test_entity_mask_hides_and_predicts_the_whole_span(tokenizer, entity, text, shift):
    obj = build_objective("bico", tokenizer, {"entity_mask": 1.0, "entity": entity, "mask_ratio": 0.01, "shift": shift})
    ex = entity_example(tokenizer)
    original = torch.tensor(ex.prompt_ids + ex.completion_ids + [tokenizer.eos_token_id])
    for seed in range(5):
        s = obj.encode(ex, random.Random(seed), "denoise")
        masked = s.input_ids != original
        span = span_of(tokenizer, original.tolist(), text)
        assert masked[span].all(), "every token of the entity is masked"
        assert torch.equal(s.mask.dense(), IntervalMask.bico(len(original), masked).dense())
        where = masked.nonzero().flatten()
        expected = torch.full_like(original, IGNORE)
        expected[where - 1 if shift else where] = original[where]
        assert torch.equal(s.targets, expected)


def test_entity_mask_at_position_zero_is_hidden_but_not_predicted(tokenizer):
    obj = build_objective("bico", tokenizer, {"entity_mask": 1.0, "mask_ratio": 0.01})
    ex = entity_example(tokenizer, prompt="Daphne Barrington is")
    s = obj.encode(ex, random.Random(0), "denoise")
    assert s.input_ids[0] == obj.mask_id and s.mask.hi[0, 0] <= s.mask.lo[0, 0]  # hidden key
    assert (s.targets != IGNORE).sum() >= 1 and s.targets[-1] == IGNORE  # no wrap-around target


def test_entity_mask_off_is_the_paper_sample(tokenizer):
    ex = entity_example(tokenizer)
    a = build_objective("bico", tokenizer).encode(ex, random.Random(7), "denoise")
    b = build_objective("bico", tokenizer, {"entity_mask": 0.0, "entity": "any"}).encode(
        ex, random.Random(7), "denoise"
    )
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets)


def test_entity_mask_rate_and_errors(tokenizer):
    obj = build_objective("bico", tokenizer, {"entity_mask": 0.5, "mask_ratio": 0.01})
    ex = entity_example(tokenizer)
    span = span_of(tokenizer, ex.prompt_ids + ex.completion_ids, NAME)
    rng = random.Random(0)
    hits = sum(bool((obj.encode(ex, rng, "denoise").input_ids[span] == obj.mask_id).all()) for _ in range(400))
    assert 160 < hits < 240
    for bad in ({"entity_mask": 1.5}, {"entity": "place"}):
        with pytest.raises(ValueError, match="bico.entity"):
            build_objective("bico", tokenizer, bad)


@pytest.mark.parametrize("state", ["denoise", "ntp"])
def test_lead_token_makes_the_first_text_token_a_target(tokenizer, state):
    ex = entity_example(tokenizer, prompt="Daphne Barrington is")
    text = ex.prompt_ids + ex.completion_ids + [tokenizer.eos_token_id]
    # whole-name masking only (no random tokens), so that both samples mask the same text tokens
    plain = build_objective("bico", tokenizer, {"entity_mask": 1.0, "mask_ratio": 1e-12})
    led = build_objective("bico", tokenizer, {"entity_mask": 1.0, "mask_ratio": 1e-12, "lead_token": "bos"})
    a, b = plain.encode(ex, random.Random(3), state), led.encode(ex, random.Random(3), state)
    assert b.input_ids[0] == led.lead_id and b.input_ids.numel() == a.input_ids.numel() + 1
    assert a.targets[0] != text[0] and b.targets[0] == text[0]  # the name's first piece, now predicted
    assert torch.equal(b.targets[1:], a.targets)  # everything else as without it, one position later
    assert not (b.targets == led.lead_id).any()
    dense = (
        IntervalMask.bico(b.input_ids.numel(), b.input_ids == led.mask_id).dense()
        if state == "denoise"
        else IntervalMask.causal(b.input_ids.numel()).dense()
    )
    assert torch.equal(b.mask.dense(), dense)


def test_lead_token_errors(tokenizer):
    with pytest.raises(ValueError, match="lead_token"):
        build_objective("bico", tokenizer, {"lead_token": "<|no such token|>"})
