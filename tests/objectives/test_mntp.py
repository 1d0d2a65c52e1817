"""mntp: targets line up with inputs, the mask hides what was masked, the 80/10/10 replacement."""

import random

import pytest
import torch

from bico import IntervalMask
from bico.objectives import IGNORE, build_objective
from helpers import dense, encode, example, text


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("hide", [True, False])
def test_mntp_targets_and_mask(tok, shift, hide):
    obj = build_objective("mntp", tok, {"mask_ratio": 0.5, "shift": shift, "hide_masked": hide})
    ex = example(tok)
    original = torch.tensor(text(tok, ex))
    for seed in range(10):
        s = encode(obj, ex, seed)
        where = (s.targets != IGNORE).nonzero().flatten()
        selected = where + 1 if shift else where
        assert torch.equal(s.targets[where], original[selected])  # labels line up with inputs
        changed = set((s.input_ids != original).nonzero().flatten().tolist())
        assert changed <= set(selected.tolist())
        hidden = torch.zeros(len(original), dtype=torch.bool)
        hidden[selected] = True
        want = (
            IntervalMask.bico(len(original), hidden).dense() if hide else torch.ones(len(s), len(s), dtype=torch.bool)
        )
        assert torch.equal(dense(s), want.reshape(len(s), len(s)))
        if shift:
            assert 0 not in selected.tolist()


def test_mntp_80_10_10_and_all_mask(tok):
    ex = example(tok)
    original = torch.tensor(text(tok, ex))
    counts = {"mask": 0, "random": 0, "same": 0}
    obj = build_objective("mntp", tok, {"mask_ratio": 0.3})
    rng = random.Random(0)
    for _ in range(400):
        s = obj.encode(ex, rng)
        sel = (s.targets != IGNORE).nonzero().flatten() + 1
        for t in sel.tolist():
            got = int(s.input_ids[t])
            counts["mask" if got == obj.mask_id else "same" if got == original[t] else "random"] += 1
    total = sum(counts.values())
    assert abs(counts["mask"] / total - 0.8) < 0.03
    assert abs(counts["random"] / total - 0.1) < 0.03 and abs(counts["same"] / total - 0.1) < 0.03
    all_mask = build_objective("mntp", tok, {"replacement": "all_mask", "mask_ratio": 0.5})
    s = encode(all_mask, ex, 3)
    sel = (s.targets != IGNORE).nonzero().flatten() + 1
    assert (s.input_ids[sel] == all_mask.mask_id).all() and sel.numel() > 0


def test_option_errors(tok):
    with pytest.raises(ValueError, match="replacement"):
        build_objective("mntp", tok, {"replacement": "70/20/10"})
