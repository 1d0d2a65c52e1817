"""Padding hides padded keys; packing keeps documents apart and restarts positions."""

import random

import pytest
import torch

from bico.collate import collate
from bico.objectives import IGNORE, Example, build_objective


def _samples(tokenizer, n=5, seed=0, objective="ntp"):
    rng = random.Random(seed)
    obj = build_objective(objective, tokenizer)
    out = []
    for _ in range(n):
        words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randint(1, 6)))
        ex = Example(words, " end", tokenizer(words).input_ids, tokenizer(" end", add_special_tokens=False).input_ids)
        out.append(obj.encode(ex, rng, obj.start_batch(rng)))
    return out


def test_padding(tokenizer):
    samples = _samples(tokenizer)
    batch = collate(samples, pad_id=tokenizer.pad_token_id)
    t = max(len(s) for s in samples)
    assert batch["input_ids"].shape == (5, t)
    for row, s in enumerate(samples):
        n = len(s)
        dense = batch["bico_mask"].dense()[row]
        assert torch.equal(dense[:n, :n], s.mask.dense()[0])
        assert not dense[:, n:].any()  # padded keys hidden from everyone
        assert (batch["targets"][row, n:] == IGNORE).all()
    assert batch["num_targets"] == sum(int((s.targets != IGNORE).sum()) for s in samples)
    assert batch["num_tokens"] == sum(len(s) for s in samples)


def test_packing_keeps_documents_apart(tokenizer):
    samples = _samples(tokenizer, n=9, seed=1)
    batch = collate(samples, pad_id=tokenizer.pad_token_id, pack=True, max_length=32)
    assert batch["input_ids"].shape[0] < 9
    assert batch["num_targets"] == sum(int((s.targets != IGNORE).sum()) for s in samples)
    for row in range(batch["input_ids"].shape[0]):
        pos = batch["position_ids"][row]
        starts = [i for i in range(len(pos)) if pos[i] == 0]
        doc = torch.zeros(len(pos), dtype=torch.long)
        for k, st in enumerate(starts):
            doc[st:] = k
        dense = batch["bico_mask"].dense()[row]
        cross = doc[:, None] != doc[None, :]
        assert not dense[cross].any()


def test_errors(tokenizer):
    with pytest.raises(ValueError, match="empty batch"):
        collate([], 0)
    samples = _samples(tokenizer)
    with pytest.raises(ValueError, match="max_length"):
        collate(samples, 0, max_length=3)
    mirrored = _samples(tokenizer, n=1)[0]
    mirrored.mask = mirrored.mask.with_rope("mirrored")
    with pytest.raises(ValueError, match="different RoPE modes"):
        collate(samples + [mirrored], 0)
