"""mlm_u: the masking rate, 1/t weights and targets, against direct constructions."""

import random

import pytest
import torch

from bico import IntervalMask
from bico.objectives import IGNORE, build_objective
from helpers import dense, example, text


@pytest.mark.parametrize("shift", [True, False])
def test_mlm_u_rate_weights_and_targets(tok, shift):
    obj = build_objective("mlm_u", tok, {"shift": shift})
    ex = example(tok)
    original = torch.tensor(text(tok, ex))
    eligible = len(original) - 1 - int(shift)  # EOS never; position 0 not when shifting
    rates, fractions = [], []
    rng = random.Random(0)
    for _ in range(400):
        s = obj.encode(ex, rng)
        rate = 1.0 / float(s.weights[0])
        assert torch.allclose(s.weights, torch.full_like(s.weights, 1 / rate))
        masked = s.input_ids == obj.mask_id
        where = (s.targets != IGNORE).nonzero().flatten()
        assert torch.equal(where + int(shift), masked.nonzero().flatten())
        assert torch.equal(s.targets[where], original[masked])
        assert torch.equal(dense(s), IntervalMask.bico(len(s), masked).dense()[0])  # masked keys hidden
        rates.append(rate)
        fractions.append(int(masked.sum()) / eligible)
    assert 0.45 < sum(rates) / len(rates) < 0.55 and min(rates) > 1e-3 and max(rates) < 1
    assert abs(sum(fractions) / len(fractions) - 0.5) < 0.05  # masked fraction tracks the rate
