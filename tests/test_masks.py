"""Every mask builder's dense form against a direct construction; packing never leaks."""
import random

import pytest
import torch

from bico import masks


def dense_of(intervals):
    return masks.to_dense(*intervals)[0]


def direct(t, rule):
    return torch.tensor([[rule(i, j) for j in range(t)] for i in range(t)])


@pytest.mark.parametrize("t", [1, 2, 7, 16, 33])
def test_causal_bidirectional_prefix(t):
    assert torch.equal(dense_of(masks.causal(t)), direct(t, lambda i, j: j <= i))
    assert torch.equal(dense_of(masks.bidirectional(t)), direct(t, lambda i, j: True))
    for p in {0, 1, t // 2, t}:
        assert torch.equal(dense_of(masks.prefix_lm(t, p)), direct(t, lambda i, j: j <= i or j < p))


def test_bico_hides_keys_from_everyone():
    rng = random.Random(0)
    for _ in range(20):
        t = rng.randint(1, 40)
        hidden = torch.tensor([rng.random() < 0.3 for _ in range(t)])
        expected = direct(t, lambda i, j: not bool(hidden[j]))
        assert torch.equal(dense_of(masks.bico(t, hidden)), expected)


def _doc_mask(kind, n, rng):
    if kind == "causal":
        return masks.causal(n)
    if kind == "bidirectional":
        return masks.bidirectional(n)
    if kind == "prefix":
        return masks.prefix_lm(n, rng.randint(0, n))
    return masks.bico(n, torch.tensor([rng.random() < 0.3 for _ in range(n)]))


def test_packing_equals_block_diagonal_and_never_crosses_documents():
    rng = random.Random(1)
    for _ in range(30):
        lengths = [rng.randint(1, 9) for _ in range(rng.randint(1, 5))]
        docs = [_doc_mask(rng.choice(["causal", "bidirectional", "prefix", "bico"]), n, rng) for n in lengths]
        packed = dense_of(masks.concat(docs))
        t = sum(lengths)
        expected = torch.zeros(t, t, dtype=torch.bool)
        start = 0
        for n, doc in zip(lengths, docs):
            expected[start:start + n, start:start + n] = dense_of(doc)
            start += n
        assert torch.equal(packed, expected)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_hides_padded_keys(side):
    d = dense_of(masks.pad(masks.causal(5), 8, side=side))
    real = slice(0, 5) if side == "right" else slice(3, 8)
    pad = slice(5, 8) if side == "right" else slice(0, 3)
    assert not d[:, pad].any()
    assert torch.equal(d[real, real], direct(5, lambda i, j: j <= i))
    with pytest.raises(ValueError):
        masks.pad(masks.causal(9), 8)


def test_rows_with_keys_and_additive_form():
    rng = random.Random(2)
    for _ in range(20):
        t = rng.randint(1, 20)
        lo = torch.tensor([rng.randint(0, t) for _ in range(t)], dtype=torch.int32)
        hi = torch.tensor([rng.randint(0, t) for _ in range(t)], dtype=torch.int32)
        dense = masks.to_dense(lo, hi)
        assert torch.equal(masks.rows_with_keys(lo, hi), dense.any(-1))
        add = masks.to_additive(lo, hi)
        assert add.shape == (1, 1, t, t)
        assert torch.equal(add[0, 0] == 0, dense[0])
        assert (add[0, 0][~dense[0]] == torch.finfo(torch.float32).min).all()


def test_intervals_are_int32_and_stack():
    lo, hi = masks.stack([masks.causal(4), masks.bidirectional(4)])
    assert lo.dtype == hi.dtype == torch.int32 and lo.shape == (2, 4)
