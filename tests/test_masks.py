"""IntervalMask: every constructor's dense form against a direct construction; packing never leaks;
the RoPE mode travels with the mask; the kernel's tile classification is cached on the object."""
import pickle
import random

import pytest
import torch

from bico import IntervalMask
from bico.masks import INDEX_DTYPE


def dense_of(mask):
    return mask.dense()[0]


def direct(t, rule):
    return torch.tensor([[rule(i, j) for j in range(t)] for i in range(t)])


@pytest.mark.parametrize("t", [1, 2, 7, 16, 33])
def test_causal_bidirectional_prefix(t):
    assert torch.equal(dense_of(IntervalMask.causal(t)), direct(t, lambda i, j: j <= i))
    assert torch.equal(dense_of(IntervalMask.bidirectional(t)), direct(t, lambda i, j: True))
    for p in {0, 1, t // 2, t}:
        assert torch.equal(dense_of(IntervalMask.prefix_lm(t, p)), direct(t, lambda i, j: j <= i or j < p))
    with pytest.raises(ValueError, match="prefix_length"):
        IntervalMask.prefix_lm(t, t + 1)


def test_bico_hides_keys_from_everyone():
    rng = random.Random(0)
    for _ in range(20):
        t = rng.randint(1, 40)
        hidden = torch.tensor([rng.random() < 0.3 for _ in range(t)])
        expected = direct(t, lambda i, j: not bool(hidden[j]))
        assert torch.equal(dense_of(IntervalMask.bico(t, hidden)), expected)


def _doc_mask(kind, n, rng):
    if kind == "causal":
        return IntervalMask.causal(n)
    if kind == "bidirectional":
        return IntervalMask.bidirectional(n)
    if kind == "prefix":
        return IntervalMask.prefix_lm(n, rng.randint(0, n))
    return IntervalMask.bico(n, torch.tensor([rng.random() < 0.3 for _ in range(n)]))


def test_packing_equals_block_diagonal_and_never_crosses_documents():
    rng = random.Random(1)
    for _ in range(30):
        lengths = [rng.randint(1, 9) for _ in range(rng.randint(1, 5))]
        docs = [_doc_mask(rng.choice(["causal", "bidirectional", "prefix", "bico"]), n, rng) for n in lengths]
        packed = dense_of(IntervalMask.concat(docs))
        t = sum(lengths)
        expected = torch.zeros(t, t, dtype=torch.bool)
        start = 0
        for n, doc in zip(lengths, docs):
            expected[start:start + n, start:start + n] = dense_of(doc)
            start += n
        assert torch.equal(packed, expected)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_hides_padded_keys(side):
    d = dense_of(IntervalMask.causal(5).pad(8, side=side))
    real = slice(0, 5) if side == "right" else slice(3, 8)
    pad = slice(5, 8) if side == "right" else slice(0, 3)
    assert not d[:, pad].any()
    assert torch.equal(d[real, real], direct(5, lambda i, j: j <= i))
    with pytest.raises(ValueError, match="does not fit"):
        IntervalMask.causal(9).pad(8)


def test_intervals_are_int32_stack_and_index():
    m = IntervalMask.stack([IntervalMask.causal(4), IntervalMask.bidirectional(4)])
    assert m.lo.dtype == m.hi.dtype == INDEX_DTYPE and m.lo.shape == (2, 4) and len(m) == 4 and m.batch_size == 2
    assert m[1] == IntervalMask.bidirectional(4) and m[0] != m[1]
    assert m.dense().shape == (2, 4, 4)
    with pytest.raises(ValueError, match="different lengths"):
        IntervalMask.stack([IntervalMask.causal(4), IntervalMask.causal(5)])
    # A batched mask pads every row.
    assert m.pad(6).lo.shape == (2, 6) and not m.pad(6).dense()[:, :, 4:].any()


def test_rope_mode_travels_and_must_agree():
    mirrored = IntervalMask.bico(5, torch.tensor([0, 1, 0, 0, 1]).bool(), rope="mirrored")
    assert mirrored.rope == "mirrored" and mirrored.hide(torch.zeros(5, dtype=torch.bool)).rope == "mirrored"
    assert IntervalMask.concat([mirrored, IntervalMask.bidirectional(3, rope="mirrored")]).rope == "mirrored"
    with pytest.raises(ValueError, match="different RoPE modes"):
        IntervalMask.concat([mirrored, IntervalMask.causal(3)])
    with pytest.raises(ValueError, match="different RoPE modes"):
        IntervalMask.stack([mirrored, IntervalMask.causal(5)])
    with pytest.raises(ValueError, match="rope"):
        IntervalMask.causal(3, rope="sideways")
    with pytest.raises(ValueError, match="block_position_ids"):
        IntervalMask(torch.zeros(3), torch.ones(3), rope="2d")


def test_2d_positions_concatenate_and_pad_with_zeros():
    a = IntervalMask.prefix_lm(4, 2).with_rope("2d", torch.tensor([0, 0, 1, 2]))
    b = IntervalMask.causal(3).with_rope("2d", torch.tensor([0, 1, 2]))
    packed = IntervalMask.concat([a, b]).pad(9)
    assert packed.rope == "2d" and packed.block_position_ids.tolist() == [[0, 0, 1, 2, 0, 1, 2, 0, 0]]
    assert torch.equal(packed.dense()[0, :4, :4], a.dense()[0])


def test_blocks_are_computed_once_per_tile_size_and_kept_on_the_mask(monkeypatch):
    import bico_kernels

    calls = []
    real = bico_kernels.classify_blocks
    monkeypatch.setattr(bico_kernels, "classify_blocks", lambda *a: calls.append(a[2:]) or real(*a))
    m = IntervalMask.stack([IntervalMask.bico(37, torch.rand(37) < 0.2)] * 2)
    first = m.blocks(16, 16)
    assert m.blocks(16, 16) is first and m.blocks(32, 16) is not first
    assert calls == [(16, 16), (32, 16)]
    assert torch.equal(first.cls, real(m.lo, m.hi, 16, 16).cls)


def test_to_keeps_one_copy_per_device_and_pickles_without_caches():
    m = IntervalMask.causal(6)
    assert m.to("cpu") is m
    m.blocks(16, 16)
    clone = pickle.loads(pickle.dumps(m))
    assert clone == m and clone._blocks == {}


def test_isolated_blocks_equal_prefix_lm_with_each_block_cut_off():
    """GLM's isolated spans, as glm.py used to build them (editing ``hi`` of a built mask)."""
    prefix, blocks = 5, [(5, 8), (8, 9), (9, 13)]
    edited = IntervalMask.prefix_lm(13, prefix)
    hi = edited.hi.clone()
    for start, end in blocks:
        hi[0, start:end] = end
    assert IntervalMask.isolated_blocks(13, prefix, blocks) == IntervalMask(edited.lo, hi)
    assert IntervalMask.isolated_blocks(13, prefix, []) == IntervalMask.prefix_lm(13, prefix)
    with pytest.raises(ValueError, match="outside"):
        IntervalMask.isolated_blocks(13, prefix, [(3, 6)])


@pytest.mark.parametrize("lengths", [[4, 4, 4, 1], [3], [2, 5], []])
def test_block_diffusion_equals_bd3lm_s_former_construction(lengths):
    lo, hi, ranges, start = [], [], [], 0
    for k, n in enumerate(lengths):  # bd3lm.py's loop before the constructor
        for clean in (False, True) if k < len(lengths) - 1 else (False,):
            ranges.append((start, start + n, clean))
            start += n
    for a, b, clean in ranges:
        lo += [a] * (b - a)
        hi += [start if clean else b] * (b - a)
    mask = IntervalMask.block_diffusion(lengths)
    assert mask == IntervalMask(torch.tensor(lo, dtype=INDEX_DTYPE), torch.tensor(hi, dtype=INDEX_DTYPE))
    assert mask.seq_len == 2 * sum(lengths) - (lengths[-1] if lengths else 0)
