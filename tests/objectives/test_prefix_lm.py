"""prefix_lm: mask and targets against a direct construction."""

import random

import torch

from bico.objectives import IGNORE, build_objective
from helpers import dense, example, text


def test_prefix_lm_mask_and_targets(tok):
    ex = example(tok)
    ids = text(tok, ex)
    s = build_objective("prefix_lm", tok).encode(ex, random.Random(0))
    p, n = len(ex.prompt_ids), len(ids)
    want = torch.tril(torch.ones(n, n, dtype=torch.bool))
    want[:, :p] = True
    assert torch.equal(dense(s), want)
    assert s.targets.tolist() == [IGNORE] * (p - 1) + ids[p:] + [IGNORE]
