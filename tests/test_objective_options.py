"""BICO's entity-aware masking, the target-only LM head in the loss, and the generation margin."""
import random

import pytest
import torch
import torch.nn.functional as F

from bico import IntervalMask
from bico.collate import collate
from bico.objectives import IGNORE, Example, build_objective
from bico.training.step import batch_loss
from helpers import make_llama

NAME, DESCRIPTION = "Daphne Barrington", "the director of A Journey Through Time"


def example(tokenizer, prompt="Known as Daphne Barrington,", completion=" she is the director of A Journey Through Time."):
    return Example(prompt, completion, tokenizer(prompt).input_ids, tokenizer(completion, add_special_tokens=False).input_ids,
                   {"name": NAME, "description": DESCRIPTION})


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
    ex = example(tokenizer)
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
    ex = example(tokenizer, prompt="Daphne Barrington is")
    s = obj.encode(ex, random.Random(0), "denoise")
    assert s.input_ids[0] == obj.mask_id and s.mask.hi[0, 0] <= s.mask.lo[0, 0]  # hidden key
    assert (s.targets != IGNORE).sum() >= 1 and s.targets[-1] == IGNORE  # no wrap-around target


def test_entity_mask_off_is_the_paper_sample(tokenizer):
    ex = example(tokenizer)
    a = build_objective("bico", tokenizer).encode(ex, random.Random(7), "denoise")
    b = build_objective("bico", tokenizer, {"entity_mask": 0.0, "entity": "any"}).encode(ex, random.Random(7), "denoise")
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets)


def test_entity_mask_rate_and_errors(tokenizer):
    obj = build_objective("bico", tokenizer, {"entity_mask": 0.5, "mask_ratio": 0.01})
    ex = example(tokenizer)
    span = span_of(tokenizer, ex.prompt_ids + ex.completion_ids, NAME)
    rng = random.Random(0)
    hits = sum(bool((obj.encode(ex, rng, "denoise").input_ids[span] == obj.mask_id).all()) for _ in range(400))
    assert 160 < hits < 240
    for bad in ({"entity_mask": 1.5}, {"entity": "place"}):
        with pytest.raises(ValueError, match="bico.entity"):
            build_objective("bico", tokenizer, bad)


@pytest.mark.parametrize("state", ["denoise", "ntp"])
def test_lead_token_makes_the_first_text_token_a_target(tokenizer, state):
    ex = example(tokenizer, prompt="Daphne Barrington is")
    text = ex.prompt_ids + ex.completion_ids + [tokenizer.eos_token_id]
    # whole-name masking only (no random tokens), so that both samples mask the same text tokens
    plain = build_objective("bico", tokenizer, {"entity_mask": 1.0, "mask_ratio": 1e-12})
    led = build_objective("bico", tokenizer, {"entity_mask": 1.0, "mask_ratio": 1e-12, "lead_token": "bos"})
    a, b = plain.encode(ex, random.Random(3), state), led.encode(ex, random.Random(3), state)
    assert b.input_ids[0] == led.lead_id and b.input_ids.numel() == a.input_ids.numel() + 1
    assert a.targets[0] != text[0] and b.targets[0] == text[0]  # the name's first piece, now predicted
    assert torch.equal(b.targets[1:], a.targets)  # everything else as without it, one position later
    assert not (b.targets == led.lead_id).any()
    dense = IntervalMask.bico(b.input_ids.numel(), b.input_ids == led.mask_id).dense() if state == "denoise" \
        else IntervalMask.causal(b.input_ids.numel()).dense()
    assert torch.equal(b.mask.dense(), dense)


def test_lead_token_errors(tokenizer):
    with pytest.raises(ValueError, match="lead_token"):
        build_objective("bico", tokenizer, {"lead_token": "<|no such token|>"})


@pytest.mark.parametrize("lora", [False, True])
def test_loss_on_target_positions_equals_the_full_logits_loss(tokenizer, lora):
    """The loss computes the LM head only where a target is; it must equal the loss from full logits."""
    model = make_llama(vocab=len(tokenizer) + 8).train()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                                 lora_dropout=0.0))
    obj = build_objective("bico", tokenizer)
    rng = random.Random(1)
    exs = [example(tokenizer), example(tokenizer, prompt="Maria is")]
    batch = collate([obj.encode(e, rng, "denoise") for e in exs], tokenizer.pad_token_id, pack=True, max_length=64)
    fast = batch_loss(model, batch, torch.device("cpu"))
    assert batch["bico_mask"].rope == "mirrored"
    logits = model(input_ids=batch["input_ids"], bico_mask=batch["bico_mask"], position_ids=batch["position_ids"],
                   use_cache=False).logits
    full = (F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE, reduction="none")
            * batch["weights"].flatten()).sum()
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    whole = batch_loss(model, batch, torch.device("cpu"), head_at_targets=False)  # the DeepSpeed path
    torch.testing.assert_close(whole, full, rtol=1e-5, atol=1e-5)
    fast.backward()
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_generation_margin_caps_new_tokens(tokenizer, monkeypatch):
    import bico.evaluation.reversal as E

    seen = {}

    def fake_generate(model, tok, prompts, *, max_new_tokens, **kwargs):
        seen["max_new_tokens"] = max_new_tokens
        return ["" for _ in prompts]

    monkeypatch.setattr(E, "generate_greedy", fake_generate)
    monkeypatch.setattr(E, "completion_logprobs", lambda m, t, p, c, **k: [0.0] * len(p))
    rows = [{"prompt": "Who?", "completion": " Daphne Barrington"}]
    longest = len(tokenizer(" Daphne Barrington", add_special_tokens=False).input_ids)
    E.evaluate_split(None, tokenizer, rows, rows, max_new_tokens=32, generation_margin=3)
    assert seen["max_new_tokens"] == longest + 3
    E.evaluate_split(None, tokenizer, rows, rows, max_new_tokens=32)
    assert seen["max_new_tokens"] == 32
