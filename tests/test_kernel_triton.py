"""Triton masked attention (run by the Triton interpreter on CPU) against the float64 reference.

TRITON_INTERPRET must be set before triton is first imported, hence the environment line first.
Sizes are tiny (T <= 64, 16x16 tiles) because the interpreter runs every tile op through numpy.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

# Triton fixes interpreter-or-compiler for its own library functions (tl.zeros, tl.sum, ...) when it
# is first imported. If something imported it before this file set TRITON_INTERPRET (transformers
# pulls in torch._dynamo, which imports triton), the interpreter cannot run in this process: run
# this file again in a fresh one instead (conftest-free; these tests need no fixtures).
STALE_TRITON = not isinstance(tl.zeros, InterpretedFunction)

from bico_kernels import (  # noqa: E402
    FULL,
    PARTIAL,
    SKIP,
    classify_blocks,
    masked_attention,
    reference_masked_attention,
    triton_available,
)
from bico_kernels.checks import compare_to_reference, random_inputs, rope_tables  # noqa: E402
from bico_kernels.checks import grads as _grads  # noqa: E402

pytestmark = pytest.mark.interpreter

BLOCK = 16
# Pass criterion (bico_kernels.checks, shared with benchmarks/gpu/run.py): kernel error <= 2x the error of
# the same-precision PyTorch reference + FLOOR[dtype].
# (dtype, output) -> max kernel error vs float64, max torch same-dtype error, max (kernel - 2 torch);
# docs/kernel.md quotes these.
MEASURED = {}


# ----------------------------------------------------------------------------- mask builders
# Column intervals: key j is visible to query rows lo[b, j] <= i < hi[b, j]. Self-contained on
# purpose (bico/masks.py is written separately).


def _ar(T):
    return torch.arange(T, dtype=torch.int32)


def causal(B, T, g):
    return _ar(T).expand(B, T).clone(), torch.full((B, T), T, dtype=torch.int32)


def bidirectional(B, T, g):
    return torch.zeros(B, T, dtype=torch.int32), torch.full((B, T), T, dtype=torch.int32)


def prefix_lm(B, T, g):
    lo, hi = causal(B, T, g)
    for b in range(B):
        p = int(torch.randint(1, T, (1,), generator=g))
        lo[b, :p] = 0
    return lo, hi


def bico_hidden(B, T, g):  # bidirectional, ~15% of keys hidden from every query
    lo, hi = bidirectional(B, T, g)
    hidden = torch.rand(B, T, generator=g) < 0.15
    hidden[:, 0] = True
    return lo.masked_fill(hidden, 0), hi.masked_fill(hidden, 0)


def _docs(T, g):
    cuts = sorted(set(torch.randint(1, T, (3,), generator=g).tolist()))
    return list(zip([0] + cuts, cuts + [T]))


def packed(B, T, g, is_causal):
    lo, hi = torch.empty(B, T, dtype=torch.int32), torch.empty(B, T, dtype=torch.int32)
    for b in range(B):
        for d0, d1 in _docs(T, g):
            lo[b, d0:d1] = _ar(T)[d0:d1] if is_causal else d0
            hi[b, d0:d1] = d1
    return lo, hi


def packed_causal(B, T, g):
    return packed(B, T, g, True)


def packed_bidirectional(B, T, g):
    return packed(B, T, g, False)


def left_pad(B, T, g, is_causal=True, npad=(20, 5)):
    # Padding keys are hidden; padding query rows see nothing (whole empty tiles when npad >= 16).
    lo, hi = causal(B, T, g) if is_causal else bidirectional(B, T, g)
    for b in range(B):
        n = npad[b % len(npad)]
        lo[b, n:] = torch.maximum(lo[b, n:], torch.tensor(n, dtype=torch.int32))
        lo[b, :n], hi[b, :n] = 0, 0
    return lo, hi


def right_pad(B, T, g, npad=(7, 0)):
    lo, hi = causal(B, T, g)
    for b in range(B):
        n = npad[b % len(npad)]
        hi[b, :] = T - n
        if n:
            lo[b, T - n :], hi[b, T - n :] = 0, 0
    return lo, hi


def random_intervals(B, T, g):
    lo = torch.randint(0, T, (B, T), generator=g, dtype=torch.int32)
    hi = torch.randint(0, T + 1, (B, T), generator=g, dtype=torch.int32)
    return lo, hi  # lo >= hi for about half the keys: hidden


MASKS = {
    f.__name__: f
    for f in (
        causal,
        bidirectional,
        prefix_lm,
        bico_hidden,
        packed_causal,
        packed_bidirectional,
        left_pad,
        right_pad,
        random_intervals,
    )
}


# ----------------------------------------------------------------------------- comparison


def _inputs(B, Hq, Hkv, T, D, dtype, g):
    return random_inputs(B, Hq, Hkv, T, D, g)  # q, k, v, upstream gradient (float64)


def compare(B, Hq, Hkv, T, D, dtype, lo, hi, g, mirror_pos=None, deterministic=False, **kw):
    """Kernel vs float64 reference, forward and dq/dk/dv; returns the kernel results."""
    q, k, v, do = _inputs(B, Hq, Hkv, T, D, dtype, g)
    tables = rope_tables(mirror_pos, D) if mirror_pos is not None else None
    got, report = compare_to_reference(q, k, v, do, lo, hi, dtype, tables, deterministic=deterministic, **kw)
    for name, r in report.items():
        assert r["shape_ok"], name
        assert r["finite"], f"{name}: non-finite values"
        prev = MEASURED.get((dtype, name), (0.0, 0.0, 0.0))
        MEASURED[(dtype, name)] = (
            max(prev[0], r["err"]),
            max(prev[1], r["err_ref"]),
            max(prev[2], r["err"] - 2 * r["err_ref"]),
        )
        assert r["ok"], f"{name}: kernel err {r['err']:.3g} vs torch {dtype} err {r['err_ref']:.3g}"
    return got


@pytest.fixture(autouse=True)
def _fresh_process_only(request):
    if STALE_TRITON and request.node.name != "test_in_fresh_process":
        pytest.skip("triton was imported before TRITON_INTERPRET=1; covered by test_in_fresh_process")


def test_in_fresh_process():
    if not STALE_TRITON:
        pytest.skip("interpreter active in this process; the tests run here")
    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(Path(__file__).resolve()),
        "-q",
        "--noconftest",
        "-p",
        "no:cacheprovider",
    ]
    r = subprocess.run(
        cmd, cwd=root, env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=1200
    )
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-2000:]


def test_triton_available():
    assert triton_available()


# Each mask runs with mirror off and on; shapes rotate over GQA ratio (1, 3, 4), D (32, 64) and
# odd T (17, 37, 50) so that every value appears without a full cartesian product.
SHAPES = [(1, 2, 37, 32), (3, 1, 50, 64), (4, 1, 17, 32), (1, 2, 50, 64), (3, 1, 37, 32), (4, 1, 50, 64)]


@pytest.mark.parametrize("mirror", [False, True], ids=["rope", "mirror"])
@pytest.mark.parametrize("mask", list(MASKS))
def test_masks_fp32(mask, mirror):
    idx = list(MASKS).index(mask) + 3 * mirror
    ratio, hkv, T, D = SHAPES[idx % len(SHAPES)]
    B = 2 if mask in ("packed_causal", "packed_bidirectional", "left_pad", "right_pad", "prefix_lm") else 1
    g = torch.Generator().manual_seed(idx)
    lo, hi = MASKS[mask](B, T, g)
    pos = _ar(T).expand(B, T) + torch.randint(0, 100, (B, 1), generator=g)  # offset positions
    compare(
        B,
        ratio * hkv,
        hkv,
        T,
        D,
        torch.float32,
        lo,
        hi,
        g,
        pos if mirror else None,
        deterministic=idx % 2 == 1,
        block_m=BLOCK,
        block_n=BLOCK,
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "mask,mirror", [("causal", True), ("bico_hidden", True), ("packed_causal", False), ("random_intervals", True)]
)
def test_masks_half(dtype, mask, mirror):
    g = torch.Generator().manual_seed(100 + len(mask))
    B, T = 1, 37
    lo, hi = MASKS[mask](B, T, g)
    compare(
        B,
        4,
        2,
        T,
        64 if mirror else 32,
        dtype,
        lo,
        hi,
        g,
        _ar(T).expand(B, T) if mirror else None,
        deterministic=mask == "bico_hidden",
        block_m=BLOCK,
        block_n=BLOCK,
    )


def test_head_dim_96_and_rectangular_tiles():
    # D = 96 exercises the padded half-tile layout; 32x16 and 16x32 tiles the classification.
    g = torch.Generator().manual_seed(7)
    B, T = 1, 50
    lo, hi = prefix_lm(B, T, g)
    for bm, bn in ((32, 16), (16, 32)):
        compare(B, 2, 1, T, 96, torch.float32, lo, hi, g, _ar(T).expand(B, T), block_m=bm, block_n=bn)


def test_empty_rows_are_exact_zero():
    # Left padding of 20 > one tile: whole query tiles see no key; right padding: trailing rows.
    g = torch.Generator().manual_seed(3)
    B, T = 2, 50
    lo, hi = left_pad(B, T, g, is_causal=False)  # batch 0: rows 0..19 empty; batch 1: rows 0..4
    hi[1, :] = torch.minimum(hi[1, :], torch.tensor(44, dtype=torch.int32))  # and rows 44.. see nothing
    out, dq, dk, dv = compare(
        B, 2, 2, T, 32, torch.float32, lo, hi, g, _ar(T).expand(B, T), block_m=BLOCK, block_n=BLOCK
    )
    empty = ~((lo[:, None, :] <= _ar(T)[None, :, None]) & (_ar(T)[None, :, None] < hi[:, None, :])).any(-1)
    assert empty[0, :20].all() and empty[1, 44:].all() and not empty[0, 20:].any()
    for b in range(B):
        assert (out[b][:, empty[b]] == 0).all() and (dq[b][:, empty[b]] == 0).all()
        hidden = lo[b] >= hi[b]
        assert (dk[b][:, hidden] == 0).all() and (dv[b][:, hidden] == 0).all()


def test_mask_and_mirror_change_the_output():
    g = torch.Generator().manual_seed(5)
    B, H, T, D = 1, 2, 37, 32
    q, k, v, _ = (t.float() for t in _inputs(B, H, H, T, D, torch.float32, g))
    cos, sin = (t.float() for t in rope_tables(_ar(T).expand(B, T), D))
    run = lambda lo_hi, mr=None: masked_attention(
        q,
        k,
        v,
        *lo_hi,
        mirror_rope=mr,  # noqa: E731
        block_m=BLOCK,
        block_n=BLOCK,
    )
    bi = run(bidirectional(B, T, g))
    assert (bi - run(causal(B, T, g))).abs().max() > 1e-2
    assert (bi - run(bidirectional(B, T, g), (cos, sin))).abs().max() > 1e-2
    # Causal attention never scores a key after its query, so mirroring must change nothing.
    torch.testing.assert_close(run(causal(B, T, g), (cos, sin)), run(causal(B, T, g)), rtol=0, atol=1e-6)


def test_deterministic_backward_is_bitwise_reproducible():
    g = torch.Generator().manual_seed(11)
    B, T, D = 1, 37, 32
    lo, hi = bico_hidden(B, T, g)
    q, k, v, do = _inputs(B, 3, 1, T, D, torch.bfloat16, g)
    cos, sin = (t.float() for t in rope_tables(_ar(T).expand(B, T), D))
    runs = [
        _grads(
            lambda a, b, c: masked_attention(
                a, b, c, lo, hi, mirror_rope=(cos, sin), deterministic=True, block_m=BLOCK, block_n=BLOCK
            ),
            q,
            k,
            v,
            do,
            torch.bfloat16,
        )
        for _ in range(2)
    ]
    for x, y in zip(*runs):
        assert torch.equal(x, y)


def test_deterministic_mode_uses_the_separate_dq_pass(monkeypatch):
    # The interpreter runs programs one after another, so atomics cannot show nondeterminism on CPU;
    # check the structure instead: deterministic=True launches the dQ kernel, the default does not.
    impl = importlib.import_module("bico_kernels.triton_attention")

    launches = []

    class Spy:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            launches.append(grid)
            return self.kernel[grid]

    monkeypatch.setattr(impl, "_bwd_dq_kernel", Spy(impl._bwd_dq_kernel))
    g = torch.Generator().manual_seed(23)
    B, T, D = 1, 17, 32
    lo, hi = causal(B, T, g)
    q, k, v, do = _inputs(B, 2, 1, T, D, torch.float32, g)
    grads = {}
    for det in (False, True):
        before = len(launches)
        grads[det] = _grads(
            lambda a, b, c: masked_attention(a, b, c, lo, hi, deterministic=det, block_m=BLOCK, block_n=BLOCK),
            q,
            k,
            v,
            do,
            torch.float32,
        )
        assert (len(launches) > before) == det
    for x, y in zip(grads[False], grads[True]):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_hf_layout_noncontiguous_inputs():
    # HF attention hands over q/k/v as [B, T, H, D].transpose(1, 2): strided, not contiguous.
    g = torch.Generator().manual_seed(13)
    B, T, D = 2, 17, 32
    lo, hi = packed_bidirectional(B, T, g)
    base = [torch.randn(B, T, h, D, generator=g, dtype=torch.float64).requires_grad_() for h in (4, 2, 2)]
    ref = reference_masked_attention(*(t.transpose(1, 2) for t in base), lo, hi)
    ref_grads = torch.autograd.grad(ref.square().sum(), base)
    ts = [t.detach().float().requires_grad_() for t in base]
    out = masked_attention(*(t.transpose(1, 2) for t in ts), lo, hi, block_m=BLOCK, block_n=BLOCK)
    assert not ts[0].transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=0, atol=1e-5)
    for got, want in zip(torch.autograd.grad(out.square().sum(), ts), ref_grads):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)


def test_block_classification_brute_force():
    g = torch.Generator().manual_seed(17)
    for name, fn in MASKS.items():
        for T, bm, bn in ((37, 16, 16), (50, 16, 32), (64, 32, 16), (5, 16, 16)):
            lo, hi = fn(2, T, g) if T > 8 or name not in ("left_pad", "right_pad") else causal(2, T, g)
            blk = classify_blocks(lo, hi, bm, bn)
            vis = (lo[:, None, :] <= _ar(T)[None, :, None]) & (_ar(T)[None, :, None] < hi[:, None, :])
            NM, NN = math.ceil(T / bm), math.ceil(T / bn)
            assert blk.cls.shape == (2, NM, NN)
            # Key columns past T count as hidden (the kernel loads zeros there and must mask them), so a
            # tile holding them is never FULL; query rows past T do not exist and are ignored.
            vis = torch.nn.functional.pad(vis, (0, NN * bn - T), value=False)
            for b in range(2):
                for m in range(NM):
                    for n in range(NN):
                        tile = vis[b, m * bm : (m + 1) * bm, n * bn : (n + 1) * bn]
                        c = blk.cls[b, m, n].item()
                        assert (c == FULL) == bool(tile.all()), (name, T, b, m, n)
                        if c == SKIP:
                            assert not tile.any()
                        elif name != "random_intervals":  # min/max test is exact on monotone blocks
                            assert tile.any(), (name, T, b, m, n, c)
                    live = [n for n in range(NN) if blk.cls[b, m, n] != SKIP]
                    assert blk.kv_count[b, m] == len(live) and blk.kv_index[b, m, : len(live)].tolist() == live
                for n in range(NN):
                    live = [m for m in range(NM) if blk.cls[b, m, n] != SKIP]
                    assert blk.q_count[b, n] == len(live) and blk.q_index[b, n, : len(live)].tolist() == live
                assert sorted(blk.m_order[b].tolist()) == list(range(NM))
                assert sorted(blk.n_order[b].tolist()) == list(range(NN))
                assert blk.kv_count[b][blk.m_order[b].long()].diff().le(0).all()  # longest first


def test_classification_is_used_and_reusable():
    g = torch.Generator().manual_seed(19)
    B, H, T, D = 1, 2, 48, 32  # T a multiple of the tile: no padded key columns
    lo, hi = causal(B, T, g)
    q, k, v, _ = (t.float() for t in _inputs(B, H, H, T, D, torch.float32, g))
    blk = classify_blocks(lo, hi, BLOCK, BLOCK)
    assert (blk.cls == PARTIAL).any() and (blk.cls == SKIP).any()
    ref = masked_attention(q, k, v, lo, hi, block_m=BLOCK, block_n=BLOCK)
    torch.testing.assert_close(masked_attention(q, k, v, lo, hi, blocks=blk), ref, rtol=0, atol=0)
    # FULL tiles really skip the elementwise test: calling every tile FULL turns causal into bidirectional.
    cheat = blk._replace(
        cls=torch.full_like(blk.cls, FULL),
        kv_count=torch.full_like(blk.kv_count, 3),
        kv_index=torch.arange(3, dtype=torch.int32).expand_as(blk.kv_index).contiguous(),
    )
    bi = masked_attention(q, k, v, *bidirectional(B, T, g), block_m=BLOCK, block_n=BLOCK)
    torch.testing.assert_close(masked_attention(q, k, v, lo, hi, blocks=cheat), bi, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        masked_attention(q, k, v, lo, hi, blocks=blk, block_m=32)
    with pytest.raises(ValueError):
        masked_attention(q[..., :20, :], k[..., :20, :], v[..., :20, :], lo[:, :20], hi[:, :20], blocks=blk)


def test_mirror_phase_split_points():
    # The mirrored kernels run the tiles holding pairs j <= i (plain) and those holding pairs j > i
    # (mirrored) as two loops over the compact lists; the split points must cut exactly there.
    g = torch.Generator().manual_seed(29)
    for name in ("causal", "bidirectional", "packed_bidirectional", "random_intervals"):
        for T, bm, bn in ((50, 16, 16), (64, 32, 16), (64, 16, 32), (37, 16, 64)):
            lo, hi = MASKS[name](2, T, g)
            blk = classify_blocks(lo, hi, bm, bn)
            for b in range(2):
                for m in range(blk.cls.shape[1]):
                    listed = blk.kv_index[b, m, : blk.kv_count[b, m]].tolist()
                    low = [n for n in listed if n * bn < m * bm + bm]  # some key j <= some query i
                    up = [n for n in listed if n * bn + bn - 1 > m * bm]  # some key j > some query i
                    assert listed[: blk.kv_low_count[b, m]] == low and listed[blk.kv_up_start[b, m] :] == up
                for n in range(blk.cls.shape[2]):
                    listed = blk.q_index[b, n, : blk.q_count[b, n]].tolist()
                    up = [m for m in listed if n * bn + bn - 1 > m * bm]
                    low = [m for m in listed if n * bn < m * bm + bm]
                    assert listed[: blk.q_up_count[b, n]] == up and listed[blk.q_low_start[b, n] :] == low


@pytest.mark.parametrize("bm,bn", [(16, 32), (32, 16)])
def test_mirror_deterministic_rectangular_tiles(bm, bn):
    # The dQ pass's two phases on tiles where one block spans several of the other (as the dK/dV
    # candidates' 16-row steps under 64/128-row key blocks do): several diagonal crossings per tile.
    g = torch.Generator().manual_seed(31)
    lo, hi = bico_hidden(1, 50, g)
    compare(
        1, 2, 1, 50, 32, torch.float32, lo, hi, g, _ar(50).expand(1, 50), deterministic=True, block_m=bm, block_n=bn
    )


def test_fp32_on_cuda_routes_to_the_reference(monkeypatch, caplog):
    impl = importlib.import_module("bico_kernels.triton_attention")
    monkeypatch.setattr(impl, "_routes_to_reference", lambda q: q.dtype == torch.float32)  # as on CUDA
    monkeypatch.setattr(importlib.import_module("bico_kernels"), "_logged", set())  # log_once forgets
    g = torch.Generator().manual_seed(37)
    B, T, D = 1, 17, 32
    lo, hi = causal(B, T, g)
    q, k, v, _ = (t.float() for t in _inputs(B, 2, 1, T, D, torch.float32, g))
    with caplog.at_level("INFO", logger="bico_kernels.triton_attention"):
        out = [masked_attention(q, k, v, lo, hi) for _ in range(2)]
    assert torch.equal(out[0], reference_masked_attention(q, k, v, lo, hi))
    assert sum("reference path" in r.getMessage() for r in caplog.records) == 1  # one line, once


# ----------------------------------------------------------------------------- launch configs


def test_tuner_picks_the_fastest_and_remembers(monkeypatch, tmp_path):
    from bico_kernels import tuning
    from bico_kernels.configs import KernelConfig, Variant

    variant = Variant("fwd", 128, "bf16", True, False)
    cands = [KernelConfig(128, 64, 8, 3), KernelConfig(64, 64, 4, 3), KernelConfig(64, 32, 4, 2)]
    times = {cands[0]: 2.0, cands[1]: 1.0, cands[2]: 3.0}
    calls = []

    def bench(c):
        calls.append(c)
        if c == cands[2]:
            raise RuntimeError("out of resources: shared memory\nmore")
        return times[c]

    monkeypatch.setattr(tuning, "_tuned", {})
    monkeypatch.setenv("BICO_KERNEL_TUNE_FILE", str(tmp_path / "tuned.json"))
    monkeypatch.delenv("BICO_KERNEL_AUTOTUNE", raising=False)
    assert tuning.tuned_config(variant, 3000, cands, bench, "gpu") == cands[1]  # failures are skipped
    assert len(calls) == 3
    assert tuning.tuned_config(variant, 4096, cands, bench, "gpu") == cands[1]  # same length bucket: cached
    assert len(calls) == 3
    tuning.clear()
    assert tuning.tuned_config(variant, 3000, cands, bench, "gpu") == cands[1]  # from the file
    assert len(calls) == 3
    tuning.tuned_config(variant, 8192, cands, bench, "gpu")  # another bucket is timed again
    assert len(calls) == 6
    monkeypatch.setenv("BICO_KERNEL_AUTOTUNE", "0")
    assert tuning.tuned_config(variant, 100, cands, bench, "gpu") == cands[0]  # off: the table's first
    assert len(calls) == 6


def test_config_table_entries_come_from_the_candidate_space():
    from bico_kernels.config_table import TABLE
    from bico_kernels.configs import KernelConfig, candidate_configs, runtime_variants
    from bico_kernels.tuning import candidates

    variants = {v.key(): v for v in runtime_variants()}
    for key, rows in TABLE.items():
        assert key in variants, key
        assert rows and all(KernelConfig(*r) in candidate_configs(variants[key]) for r in rows), key
    for v in variants.values():
        assert candidates(v)  # a config for every variant the runtime can launch
