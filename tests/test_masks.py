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
            expected[start : start + n, start : start + n] = dense_of(doc)
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


# --- debugging aids: to_string, sparsity, visible_pairs, repr ---------------------------------------


def picture(dense):
    """The expected to_string body of a bool [T, T] (query, key) matrix, one character per pair."""
    return ["".join("#" if v else "." for v in row) for row in dense.tolist()]


def tiled_picture(dense, tile):
    """The expected tiled body: each tile's mean over a float64 copy decides '#' (1), '.' (0) or '+'."""
    t = dense.shape[0]
    d = dense.double()
    return [
        "".join(
            "#" if (m := float(d[r : r + tile, c : c + tile].mean())) == 1 else "." if m == 0 else "+"
            for c in range(0, t, tile)
        )
        for r in range(0, t, tile)
    ]


def bd3lm_layout_rule(lengths):
    """BD3LM's visibility on [noisy_0, clean_0, ..., noisy_last] by its definition: (block, clean) per
    position, then a noisy query sees its own noisy block and earlier clean ones; a clean query its own
    and earlier clean blocks."""
    where = [
        (k, clean)
        for k, n in enumerate(lengths)
        for clean in ((False, True) if k < len(lengths) - 1 else (False,))
        for _ in range(n)
    ]

    def rule(i, j):
        (bq, cq), (bk, ck) = where[i], where[j]
        return (bq == bk and cq == ck) or (ck and bk < bq) or (ck and cq and bk <= bq)

    return len(where), rule


def glm_rule(p, blocks):
    def rule(i, j):
        if j < p:
            return True
        end = next((b for a, b in blocks if a <= j < b), None)
        return j <= i and (end is None or i < end)

    return rule


HIDDEN = torch.tensor([0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0]).bool()
PICTURED = {  # every constructor, small: (mask, T, direct rule)
    "causal": (IntervalMask.causal(7), 7, lambda i, j: j <= i),
    "bidirectional": (IntervalMask.bidirectional(5), 5, lambda i, j: True),
    "prefix_lm": (IntervalMask.prefix_lm(9, 3), 9, lambda i, j: j <= i or j < 3),
    "bico": (IntervalMask.bico(11, HIDDEN), 11, lambda i, j: not bool(HIDDEN[j])),
    "glm_isolated_blocks": (
        IntervalMask.isolated_blocks(12, 4, [(4, 7), (7, 8), (8, 12)]),
        12,
        glm_rule(4, [(4, 7), (7, 8), (8, 12)]),
    ),
    "block_diffusion": (IntervalMask.block_diffusion([3, 3, 2]), *bd3lm_layout_rule([3, 3, 2])),
    "packed": (
        IntervalMask.concat([IntervalMask.causal(3), IntervalMask.prefix_lm(4, 2)]),
        7,
        lambda i, j: (j <= i < 3) or (3 <= i and 3 <= j and (j <= i or j < 5)),
    ),
    "padded": (IntervalMask.causal(4).pad(6, side="left"), 6, lambda i, j: 2 <= j <= i),
}


@pytest.mark.parametrize("name", list(PICTURED))
def test_to_string_draws_every_constructor_as_its_direct_construction(name):
    mask, t, rule = PICTURED[name]
    want = direct(t, rule)
    lines = mask.to_string().splitlines()
    assert lines[2:] == picture(want)
    pairs = int(want.sum())
    assert lines[0] == (
        f"IntervalMask B=1 T={t} rope='standard', batch row 0: {pairs} of {t * t} (query, key) "
        f"pairs visible, sparsity {1 - pairs / t**2:.1%}"
    )
    assert lines[1] == f"rows = queries 0..{t - 1}, columns = keys 0..{t - 1}: '#' visible, '.' hidden"
    assert mask.visible_pairs() == pairs and mask.sparsity() == pytest.approx(1 - want.double().mean().item())


def random_mask(rng, batch, t):
    """``batch`` rows of length ``t``: packed documents of every kind, padded left or right, or raw
    random intervals (empty ones and ones reaching past [0, T) included)."""
    rows = []
    for _ in range(batch):
        if rng.random() < 0.25:
            lo = torch.tensor([rng.randint(-2, t + 2) for _ in range(t)])
            rows.append(IntervalMask(lo, lo + torch.tensor([rng.randint(-3, t) for _ in range(t)])))
            continue
        docs, used = [], 0
        while used < t and (not docs or rng.random() < 0.7):
            n = rng.randint(1, t - used)
            docs.append(_doc_mask(rng.choice(["causal", "bidirectional", "prefix", "bico"]), n, rng))
            used += n
        rows.append(IntervalMask.concat(docs).pad(t, side=rng.choice(["left", "right"])))
    return IntervalMask.stack(rows)


def test_sparsity_and_visible_pairs_equal_the_dense_mask_on_random_padded_batches():
    rng = random.Random(2)
    for _ in range(40):
        mask = random_mask(rng, rng.randint(1, 4), rng.choice([1, 3, 7, 13, 31, 45]))
        dense = mask.dense()
        assert mask.visible_pairs() == int(dense.sum())
        assert mask.sparsity() == pytest.approx(1 - dense.double().mean().item(), abs=1e-12)
    assert IntervalMask.hidden(5).sparsity() == 1.0 and IntervalMask.bidirectional(5).sparsity() == 0.0
    assert IntervalMask.block_diffusion([]).sparsity() == 0.0  # T = 0: no pairs, none hidden


def test_to_string_tiles_long_masks_and_draws_each_batch_row():
    rng = random.Random(3)
    for _ in range(15):
        t, max_size = rng.choice([37, 45, 101]), rng.choice([4, 7, 10])
        mask = random_mask(rng, 3, t)
        tile = -(-t // max_size)
        for b in range(3):
            lines = mask.to_string(batch=b, max_size=max_size).splitlines()
            assert lines[2:] == tiled_picture(mask.dense()[b], tile)
            assert len(lines) - 2 <= max_size and all(len(line) <= max_size for line in lines[2:])
            assert f"{tile}x{tile} pairs per character" in lines[1] and f"batch row {b}:" in lines[0]
    assert IntervalMask.causal(64).to_string(max_size=64).splitlines()[2:] == picture(
        IntervalMask.causal(64).dense()[0]
    )
    with pytest.raises(ValueError, match=r"batch 2 outside \[0, 2\)"):
        IntervalMask.stack([IntervalMask.causal(3)] * 2).to_string(batch=2)
    with pytest.raises(ValueError, match="max_size"):
        IntervalMask.causal(3).to_string(max_size=0)


def test_repr_shows_the_cached_tile_classification():
    from bico_kernels import FULL, PARTIAL, SKIP

    mask = IntervalMask.stack([IntervalMask.causal(40), IntervalMask.prefix_lm(40, 20)])
    assert repr(mask) == f"IntervalMask(B=2, T=40, rope='standard', device=cpu, sparsity={mask.sparsity():.3f})"
    cls = mask.blocks(16, 16).cls
    counts = [int((cls == kind).sum()) for kind in (SKIP, PARTIAL, FULL)]
    assert repr(mask).endswith(f"tiles 16x16: {counts[0]} skip / {counts[1]} partial / {counts[2]} full)")
    assert sum(counts) == 2 * 3 * 3 and counts[0] and counts[1] and counts[2]


def test_readme_example_output_is_what_the_mask_prints():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split(">>> print(mask.to_string())\n", 1)[1].split(">>> _ = mask.blocks", 1)[0]
    mask = IntervalMask.concat([IntervalMask.prefix_lm(5, 2), IntervalMask.causal(3)]).pad(10)
    assert block == mask.to_string() + "\n"
    mask.blocks(4, 4)
    assert f">>> mask\n{mask!r}\n```" in readme
