"""``bico bench`` on CPU at tiny sizes: JSON fields, skipped CUDA-only providers, PNG, pair counts, errors."""

import contextlib
import io
import json

import pytest

from bico.cli import main
from bico.masks import INDEX_DTYPE, IntervalMask
from bico.tools.bench import CASES, MODES, PROVIDERS, build_case
from bico_kernels import dense_visibility

TINY = ["--seqlens", "32,48", "--repeats", "2", "--warmup", "1", "--device", "cpu", "--no-progress"]
CUDA_ONLY = [p for p in PROVIDERS if p != "sdpa-dense"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["bench", *TINY, "--out", str(out)]) == 0
    return json.loads((out / "attention-cpu.json").read_text()), out, stdout.getvalue()


def test_metadata(bench):
    result, _, _ = bench
    for key in ("device", "versions", "command", "date", "git_commit", "config", "skipped", "records"):
        assert key in result
    assert result["device"].startswith("cpu")
    assert set(result["versions"]) >= {"torch", "triton", "transformers", "python"}
    assert result["config"]["seqlens"] == [32, 48] and result["config"]["dtype"] == "fp32"


def test_sdpa_records_for_every_case_and_mode(bench):
    result, _, _ = bench
    at = {(r["case"], r["mode"], r["T"]): r for r in result["records"] if r["provider"] == "sdpa-dense"}
    for case in CASES:
        for mode in MODES:
            for T in (32, 48):
                r = at[case, mode, T]
                assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
                assert r["tflops"] > 0 and r["peak_mem_mb"] is None
                assert (r["B"], r["Hq"], r["Hkv"], r["D"], r["dtype"]) == (1, 4, 2, 64, "fp32")
                assert r["max_abs_err"] < 1e-4  # fp32 SDPA vs the float64 reference (padding rows excluded)


def test_cuda_only_providers_are_skipped_with_a_reason(bench):
    result, _, stdout = bench
    reasons = {s["provider"]: s["reason"] for s in result["skipped"] if s["case"] is None}
    for p in CUDA_ONLY:
        assert "CUDA" in reasons[p]
        assert not [r for r in result["records"] if r["provider"] == p]
        assert f"skipped {p}: " in stdout
    assert "| causal | fwd | 32 | 1 |" in stdout and "only the PyTorch reference" in stdout


def test_png_is_written(bench):
    _, out, _ = bench
    assert (out / "attention-cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", list(CASES))
def test_visible_pairs_match_the_dense_mask(case):
    for T in (32, 48):
        lo, hi = build_case(case, 2, T)
        assert lo.shape == (2, T) and lo.dtype == INDEX_DTYPE
        assert IntervalMask(lo, hi).visible_pairs() == int(dense_visibility(lo, hi).sum())


# (B, T) -> visible pairs of each case, as bench counted them before the count moved to IntervalMask.
PAIRS_BEFORE = {
    (2, 48): {"causal": 2352, "bidirectional": 4608, "bico": 4080, "prefix_lm": 2904, "packed": 1053, "glm": 2985},
    (3, 257): {
        "causal": 99459,
        "bidirectional": 198147,
        "bico": 170391,
        "prefix_lm": 123843,
        "packed": 34749,
        "glm": 129044,
    },
    (1, 4096): {
        "causal": 8390656,
        "bidirectional": 16777216,
        "bico": 14266368,
        "prefix_lm": 10486784,
        "packed": 4134355,
        "glm": 10382934,
    },
}


def test_pair_counts_behind_tflops_are_unchanged(bench):
    for (B, T), want in PAIRS_BEFORE.items():
        assert {case: IntervalMask(*build_case(case, B, T)).visible_pairs() for case in CASES} == want
    result, _, _ = bench
    for r in result["records"]:  # what the JSON reports is the same count
        assert r["visible_pairs"] == IntervalMask(*build_case(r["case"], r["B"], r["T"])).visible_pairs()


def test_json_path_and_subset(tmp_path):
    path = tmp_path / "sub" / "run.json"
    args = ["bench", *TINY, "--cases", "packed", "--providers", "sdpa-dense", "--modes", "fwd", "--out", str(path)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    result = json.loads(path.read_text())
    assert {(r["case"], r["provider"], r["mode"]) for r in result["records"]} == {("packed", "sdpa-dense", "fwd")}
    assert result["skipped"] == [] and path.with_suffix(".png").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cases", "causal,nope"], "unknown case 'nope'"),
        (["--providers", "cudnn"], "unknown provider 'cudnn'"),
        (["--heads", "4", "--kv-heads", "3"], "not a multiple of --kv-heads 3"),
        (["--seqlens", "32,x"], "comma-separated integers"),
    ],
)
def test_bad_arguments_are_one_line_errors(extra, message, capsys, tmp_path):
    assert main(["bench", *TINY, "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bico: error: ") and message in err[0]
    assert not list(tmp_path.iterdir())


def test_the_command_line_names_what_bench_times():
    from bico.tools.bench import DTYPES
    from bico.tools.bench_options import CASE_NAMES, DTYPE_NAMES

    assert tuple(CASES) == CASE_NAMES and tuple(DTYPES) == DTYPE_NAMES
