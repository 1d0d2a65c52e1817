"""permute: orders are permutations of whole units, in the configured proportions; entities stay whole."""

import random

import pytest
import torch

from bico.objectives import IGNORE, build_objective
from helpers import META, example, text


@pytest.mark.parametrize("mode", ["word", "entity", "segment", "token"])
def test_permute_orders_are_unit_permutations(tok, mode):
    obj = build_objective("permute", tok, {"mode": mode, "segment_max": 3})
    reverse = build_objective("reverse", tok, {"mode": mode, "segment_max": 3, "forward": False})
    ex = example(tok, meta=META)
    ids = text(tok, ex)
    counts = {"original": 0, "reversed": 0, "permuted": 0}
    for seed in range(300):
        out, order = obj.arrange(ids, ex.meta, random.Random(seed))
        counts[order] += 1
        assert out[-1] == tok.eos_token_id
        body = [t for t in out[:-1] if t != obj.sep_id]
        assert sorted(body) == sorted(ids[:-1])  # the same tokens, reordered
        if order == "original":
            assert out == ids
        if order == "reversed":  # the shared segmenter: the reverse objective's reversal, draw for draw
            rng = random.Random(seed)
            rng.random()
            assert out == reverse.reverse_ids(ids, ex.meta, rng)
    assert all(abs(c / 300 - 1 / 3) < 0.08 for c in counts.values())
    s = obj.encode(ex, random.Random(1))
    assert torch.equal(s.mask.dense()[0], torch.tril(torch.ones(len(s), len(s), dtype=torch.bool)))
    assert s.targets.tolist() == s.input_ids.tolist()[1:] + [IGNORE]


def test_permute_entities_stay_whole_and_probabilities(tok):
    obj = build_objective("permute", tok, {"original_prob": 0, "reverse_prob": 0, "permute_prob": 1})
    ex = example(tok, meta=META)
    for seed in range(20):
        out = tok.decode(obj.arrange(text(tok, ex), ex.meta, random.Random(seed))[0])
        assert "Daphne Barrington" in out and META["description"] in out
    with pytest.raises(ValueError, match="sum to 1"):
        build_objective("permute", tok, {"original_prob": 0.5, "reverse_prob": 0.5, "permute_prob": 0.5})
    with pytest.raises(ValueError, match="mode must be one of token, word, entity, segment"):
        build_objective("permute", tok, {"mode": "phrase"})
