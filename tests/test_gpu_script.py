"""benchmarks/gpu/run.py, the one-call GPU run, checked on CPU: its --dry-run runs every stage's code
(tiny sizes, the Triton interpreter, the reference path), the time guard cuts a stage that overruns
and goes on with the next, a failed correctness check stops the rest, and the target arithmetic."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile

import pytest

from helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu" / "run.py"
STAGES = ("info", "correctness", "tuner", "bench", "training", "demo")


def run_script(args, tmp_path, timeout=400, **env):
    full = dict(os.environ, **env)
    full.pop("TRITON_INTERPRET", None)  # the script sets it for its worker itself
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out"), *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    run = json.loads((tmp_path / "out" / "run.json").read_text()) if (tmp_path / "out" / "run.json").is_file() else {}
    return r, run


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-dry")
    r, run = run_script(["--archive", str(tmp / "results.tgz")], tmp)
    return r, run, tmp / "out", tmp / "results.tgz"


def test_dry_run_runs_every_stage(dry_run):
    r, run, out, _ = dry_run
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert run["dry_run"] and run["stages"] == list(STAGES)
    for stage in STAGES:
        assert run["outcomes"][stage]["status"] == "ok", (stage, run["outcomes"][stage])
        data = json.loads((out / f"{stage}.json").read_text())
        assert data["status"] == "ok" and data["summary_md"] and "torch" in data["machine_line"]
    assert run["total_s"] < run["budget_s"]


def test_dry_run_results(dry_run):
    _, _, out, archive = dry_run
    corr = json.loads((out / "correctness.json").read_text())
    masks = {c["mask"] for c in corr["cases"]}
    assert corr["passed"] == corr["total"] == len(masks) >= 12  # one case per mask kind in the dry run
    assert {(c["mirror"], c["dtype"], c["D"]) for c in corr["cases"]} >= {
        (m, d, D) for m in (False, True) for d in ("bf16", "fp16") for D in (32, 64)
    }
    assert json.loads((out / "tuner.json").read_text())["events"]  # the recorder saw the tuner time candidates
    bench = json.loads((out / "bench.json").read_text())["result"]
    providers = {r["provider"] for r in bench["records"]}
    assert {"bico-triton", "bico-triton-mirror", "sdpa-dense", "flex", "sdpa-nomask"} <= providers
    assert {r["mode"] for r in bench["records"]} == {"fwd", "fwd+bwd"}
    runs = json.loads((out / "training.json").read_text())["runs"]
    assert {r["objective"] for r in runs} == {"ntp", "bico"} and all(r["tokens_per_s"] > 0 for r in runs)
    assert json.loads((out / "demo.json").read_text())["runs"][0]["exit"] == 0
    for png in ("bench-ms.png", "bench-tflops.png", "training.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    summary = (out / "summary.md").read_text()
    assert "DRY RUN" in summary and "**Machine:** CPU only" in summary and "## bench" in summary
    with tarfile.open(archive) as tar:
        assert "out/summary.md" in tar.getnames()


def test_time_guard_kills_an_overrunning_stage_and_goes_on(tmp_path):
    # bench's first unit (interpreter checks and timings of three providers, seconds) outlasts a 0.5 s budget +
    # 0.5 s grace: killed, recorded as cut, then info runs in a new worker.
    r, run = run_script(
        ["--stages", "bench,info", "--stage-budgets", "bench=0.5"], tmp_path, timeout=200, BICO_GPU_GRACE_S="0.5"
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert run["outcomes"]["bench"]["status"] == "cut" and "killed" in run["outcomes"]["bench"]["note"]
    assert run["outcomes"]["info"]["status"] == "ok"
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["status"] == "cut"


def test_a_correctness_failure_stops_the_rest(tmp_path):
    r, run = run_script(
        ["--stages", "correctness,info", "--stage-budgets", "correctness=2"],
        tmp_path,
        timeout=200,
        BICO_GPU_CORRECTNESS_MARGIN="0",
    )  # no error is small enough: every case fails
    assert r.returncode == 1
    assert run["outcomes"]["correctness"]["status"] == "failed"
    assert run["outcomes"]["info"]["status"] == "not run" and "correctness" in run["outcomes"]["info"]["note"]
    assert "FAILED" in (tmp_path / "out" / "summary.md").read_text()


def test_targets_from_bench_records():
    gpu = load_script()
    base = {"D": 128, "Hq": 32, "visible_pairs": 10**8, "T": 8192}

    def rec(case, provider, mode, ms):
        return {
            **base,
            "case": case,
            "provider": provider,
            "mode": mode,
            "median_ms": ms,
            "tflops": 4.0 * 128 * 32 * 10**8 * (2.5 if mode == "fwd+bwd" else 1) / (ms * 1e-3) / 1e12,
        }

    records = [
        rec("bico", "bico-triton", "fwd", 2.0),
        rec("bico", "bico-triton", "fwd+bwd", 6.0),
        rec("bico", "bico-triton-mirror", "fwd", 2.1),
        rec("bico", "bico-triton-mirror", "fwd+bwd", 6.9),
        rec("bico", "flex", "fwd", 3.0),
        rec("bico", "flex", "fwd+bwd", 9.0),
    ]
    (row,) = gpu.target_rows(records)
    fwd = 4.0 * 128 * 32 * 10**8 / 2e-3 / 1e12  # 819 TFLOP/s
    assert row["fwd_tflops"] == pytest.approx(fwd)
    assert row["bwd_tflops"] == pytest.approx(2.5 * fwd * 2.0 / 4.0)  # 2.5x the FLOPs in 4 ms beyond the fwd's 2
    assert row["vs_flex_fwd"] == pytest.approx(1.5) and row["vs_flex_fwd+bwd"] == pytest.approx(1.5)
    assert row["mirror_overhead_fwd"] == pytest.approx(0.05) and row["mirror_overhead_fwd+bwd"] == pytest.approx(0.15)
    assert row["meets"] == {"fwd_tflops": True, "bwd_tflops": True, "mirror": False, "vs_flex": True}
    assert "✗" in gpu.targets_md([row])
