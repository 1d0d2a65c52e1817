"""glm: layout, targets and mask, 2-D and flat positions, span lengths, special tokens, against direct
constructions."""

import math
import random

import pytest
import torch

from bico.objectives import IGNORE, build_objective
from helpers import dense, encode, example, text


def glm_parts(obj, s):
    """Part A length and the Part B spans as (start, end) blocks of the sample."""
    ids = s.input_ids.tolist()
    sep = ids.index(obj.sop_id)
    starts = [i for i, t in enumerate(ids) if t == obj.sop_id] + [len(ids)]
    return sep, list(zip(starts[:-1], starts[1:]))


@pytest.mark.parametrize("isolated", [False, True])
def test_glm_layout_targets_and_mask(tok, isolated):
    obj = build_objective("glm", tok, {"isolated_spans": isolated})
    ex = example(tok)
    original = text(tok, ex)
    for seed in range(20):
        s = encode(obj, ex, seed)
        ids, targets = s.input_ids.tolist(), s.targets.tolist()
        sep, blocks = glm_parts(obj, s)
        part_a = ids[:sep]
        assert part_a.count(obj.mask_id) == len(blocks) >= 1
        assert targets[:sep] == [IGNORE] * sep  # loss on Part B only
        for a, b in blocks:  # [S] s1..sl -> s1..sl [E]
            assert targets[a:b] == ids[a + 1 : b] + [obj.eop_id]
        # Filling the masks (in Part A order) with the spans gives back the text: spans cover
        # contiguous tokens, and Part B's block order is a permutation of them.
        span_of_mask = {s.position_ids[a].item(): ids[a + 1 : b] for a, b in blocks}
        rebuilt = []
        for i, t in enumerate(part_a):
            rebuilt += span_of_mask[i] if t == obj.mask_id else [t]
        assert rebuilt == original
        # Spans: >= 1 token apart (no two masks adjacent), none at position 0 or on EOS.
        assert all(not (x == y == obj.mask_id) for x, y in zip(part_a, part_a[1:]))
        assert part_a[0] == original[0] and part_a[-1] == tok.eos_token_id
        covered = sum(b - a - 1 for a, b in blocks)
        assert covered >= max(1, int(0.15 * (len(original) - 2)))
        # Mask, built directly: A sees A; B sees A and earlier B (its own span only, if isolated).
        n = len(ids)
        want = torch.zeros(n, n, dtype=torch.bool)
        want[:, :sep] = True
        for q in range(sep, n):
            block = next((a, b) for a, b in blocks if a <= q < b)
            want[q, (block[0] if isolated else sep) : q + 1] = True
        assert torch.equal(dense(s), want)


def test_glm_positions_2d_and_flat(tok):
    ex = example(tok)
    original = text(tok, ex)
    two_d = build_objective("glm", tok, {"positions": "2d"})
    flat = build_objective("glm", tok, {"positions": "flat"})
    for seed in range(10):
        s, f = encode(two_d, ex, seed), encode(flat, ex, seed)
        assert torch.equal(s.input_ids, f.input_ids) and torch.equal(s.targets, f.targets)
        sep, blocks = glm_parts(two_d, s)
        assert s.mask.rope == "2d"
        pos, block = s.position_ids.tolist(), s.mask.block_position_ids[0].tolist()
        assert pos[:sep] == list(range(sep)) and block[:sep] == [0] * sep
        for a, b in blocks:
            assert block[a:b] == list(range(1, b - a + 1))
            assert len(set(pos[a:b])) == 1 and s.input_ids[pos[a]] == two_d.mask_id
        # flat: every Part B token sits at its original position, [S] one before the span.
        assert f.mask.block_position_ids is None and f.mask.rope == "standard"
        fp = f.position_ids.tolist()
        for a, b in blocks:
            assert [original[p] for p in fp[a + 1 : b]] == s.input_ids[a + 1 : b].tolist()
            assert fp[a] == fp[a + 1] - 1
        part_a_tokens = [(p, t) for p, t in zip(fp[:sep], s.input_ids[:sep].tolist()) if t != two_d.mask_id]
        assert all(original[p] == t for p, t in part_a_tokens)


def test_glm_span_lengths_follow_truncated_poisson(tok):
    obj = build_objective("glm", tok, {"shuffle": False})
    words = " ".join(["alpha beta gamma delta"] * 60)
    ex = example(tok, prompt="Start", completion=" " + words)
    lengths, rng = [], random.Random(0)
    for _ in range(40):
        s = obj.encode(ex, rng)
        _, blocks = glm_parts(obj, s)
        lengths += [b - a - 1 for a, b in blocks]
    expected = 3 / (1 - math.exp(-3))  # mean of a zero-truncated Poisson(3): 3.16
    assert abs(sum(lengths) / len(lengths) - expected) < 0.25
    assert min(lengths) >= 1


def test_glm_adds_special_tokens(tok):
    n = len(tok)
    obj = build_objective("glm", tok)
    assert {obj.mask_id, obj.sop_id, obj.eop_id} == {n, n + 1, n + 2}
    assert {obj.sop_id, obj.eop_id} <= set(tok.all_special_ids)


def test_option_errors(tok):
    with pytest.raises(ValueError, match="positions"):
        build_objective("glm", tok, {"positions": "3d"})
