"""ntp: next-token targets, completion-only loss, against direct constructions."""

import random

from bico import IntervalMask
from bico.objectives import IGNORE, Example, build_objective


def example(tokenizer, prompt="Daphne Barrington is", completion=" the director of A Journey Through Time."):
    return Example(
        prompt, completion, tokenizer(prompt).input_ids, tokenizer(completion, add_special_tokens=False).input_ids
    )


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
    assert s.targets[p - 1 : -1].tolist() == ex.completion_ids + [tokenizer.eos_token_id]
