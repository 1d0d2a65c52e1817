"""masked_ar: layout, targets and positions against a direct construction; rates and separators."""

import random

import pytest
import torch

from bico.objectives import IGNORE, build_objective
from helpers import META, example, text


@pytest.mark.parametrize("positions", ["continue", "shared"])
@pytest.mark.parametrize("loss_on", ["original", "both"])
def test_masked_ar_layout_targets_positions(tok, positions, loss_on):
    obj = build_objective("masked_ar", tok, {"positions": positions, "loss_on": loss_on})
    ex = example(tok, meta=META)
    ids = text(tok, ex)
    content, n = ids[:-1], len(ids) - 1  # the SmolLM2 tokenizer adds no BOS: content = all but EOS
    sep = obj.sep_ids
    assert tok.decode(sep) == "\nReturn the recovered masked passage.\nHere is the recovered text:\n\n"
    fractions = []
    for seed in range(30):
        s = obj.encode(ex, random.Random(seed), obj.start_batch(random.Random(seed)))
        got = s.input_ids.tolist()
        corrupted = got[:n]
        assert got[n : n + len(sep)] == sep and got[n + len(sep) :] == ids  # original copy + EOS
        assert all(c == t or c == obj.mask_id for c, t in zip(corrupted, content))
        fractions.append(sum(c == obj.mask_id for c in corrupted) / n)
        want = [IGNORE] * len(got)
        first = n + len(sep)
        for i in range(first, len(got)):
            want[i - 1] = got[i]  # the original copy, from the last separator token on
        if loss_on == "both":
            for i in range(1, n):
                if corrupted[i] != obj.mask_id:
                    want[i - 1] = got[i]
        assert s.targets.tolist() == want
        assert torch.equal(s.mask.dense()[0], torch.tril(torch.ones(len(got), len(got), dtype=torch.bool)))
        pos = s.position_ids.tolist()
        if positions == "continue":
            assert pos == list(range(len(got)))
        else:
            assert pos[:first] == list(range(first)) and pos[first : first + n] == list(range(n))
            assert pos[-1] == n  # EOS after the copy
    assert 0.3 < sum(fractions) / len(fractions) < 0.7  # t ~ U[0.05, 0.95]: mean 0.5


def test_masked_ar_rate_per_batch_and_token_separator(tok):
    obj = build_objective("masked_ar", tok, {"rate_per": "batch", "min_rate": 0.3, "max_rate": 0.3})
    assert obj.start_batch(random.Random(0)) == pytest.approx(0.3)
    tokens = build_objective("masked_ar", tok, {"separator": "token", "rate_per": "sample"})
    assert tokens.start_batch(random.Random(0)) is None and len(tokens.sep_ids) == 1
    assert tokens.sep_ids[0] in set(tok.all_special_ids)
    with pytest.raises(ValueError, match="positions must be one of continue, shared"):
        build_objective("masked_ar", tok, {"positions": "restart"})
    with pytest.raises(ValueError, match="min_rate <= max_rate"):
        build_objective("masked_ar", tok, {"min_rate": 0.9, "max_rate": 0.1})
