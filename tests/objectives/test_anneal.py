"""anneal: the interval schedule from causal to the inner objective's mask, against a direct construction."""

import math

import pytest
import torch

from bico import IntervalMask
from bico.objectives import build_objective
from bico.objectives.anneal import anneal_intervals
from helpers import dense, encode, example, text


def test_anneal_interval_schedule(tok):
    obj = build_objective("anneal", tok, {"inner": "mlm_u", "steps": 4})
    inner = build_objective("mlm_u", tok)
    ex = example(tok)
    n = len(text(tok, ex))
    fractions = []
    for step in range(5):
        obj.set_progress(step, 10)
        ratio = min(1.0, (step + 1) / 4)
        s, ref = encode(obj, ex, 7), encode(inner, ex, 7)
        assert torch.equal(s.input_ids, ref.input_ids) and torch.equal(s.targets, ref.targets)
        # Direct construction: inner mask, restricted to rows >= j - round(ratio * (j - lo_j)).
        want = dense(ref).clone()
        for j in range(n):
            if ref.mask.lo[0, j] < ref.mask.hi[0, j]:
                reach = j - int(ref.mask.lo[0, j])
                want[: j - math.floor(ratio * reach + 0.5), j] = False
        assert torch.equal(dense(s), want)
        future = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        fractions.append(float((dense(s) & future).sum() / (dense(ref) & future).sum()))
    assert fractions[-1] == fractions[-2] == 1.0 and fractions[0] < 0.4
    assert all(a < b for a, b in zip(fractions[:3], fractions[1:4]))
    full = IntervalMask.bidirectional(6)
    assert IntervalMask(*anneal_intervals(full.lo, full.hi, 0.0)) == IntervalMask.causal(6)


def test_option_errors(tok):
    with pytest.raises(ValueError, match="inner"):
        build_objective("anneal", tok, {"inner": "anneal"})
