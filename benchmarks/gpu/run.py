#!/usr/bin/env python3
"""The GPU run in one call: versions, kernel correctness on hardware, the tuner's first pass, the
attention benchmark, training throughput and the demo, inside a time budget (default 480 s).

    python benchmarks/gpu/run.py                     # on one H100/H200: benchmarks/results/gpu-<device>/
    python benchmarks/gpu/run.py --dry-run --out D   # the same stages on CPU in about a minute (tiny sizes,
                                                     # TRITON_INTERPRET=1, the reference path), into D

Stages, in order, each with its own budget (``--stage-budgets bench=200,...`` changes them); a stage
over its budget is cut and recorded as cut, and the whole never runs past ``--budget-s``:

1. ``info``: device, driver, CUDA, torch, triton (and the CPU), a bf16 matmul ceiling;
2. ``correctness``: the fused kernel against the float64 reference, forward and backward, every mask
   kind (bico.masks constructors) with and without mirrored RoPE, GQA, odd lengths, bf16 and fp16,
   D = 64 and 128 (``bico_kernels.checks``, the criterion of the interpreter tests). A failure stops
   the rest of the run, and summary.md says so;
3. ``tuner``: the kernel tuner's first pass (every table candidate timed per variant and length
   bucket) for the benchmark's variants, winners kept in tuned.json for the stages after it;
4. ``bench``: ``bico bench`` (bico.tools.bench.run_bench) at N = 1K..16K, bf16, Hq=32, Hkv=8, D=128, against
   SDPA with a dense mask and FlexAttention with a BlockMask of the same mask (plus SDPA without a
   mask and flash-attn where they apply), exact-pair TFLOP/s, mirror overhead, and the targets of
   ../shared/reference/kernels.md;
5. ``training``: SmolLM2-135M's architecture (random init) and a random ~1B Llama (Llama-3.2-1B's
   shape), NTP vs BICO training steps: step time, tokens/s, model FLOP/s;
6. ``demo``: ``python -m bico demo --quick`` if time is left (the full demo when SmolLM2's weights
   are there and there is time for it).

The stages run in a worker process that the parent watches: each stage gets a soft deadline (it
stops starting new work and writes what it has), and a worker still in a stage ``GRACE_S`` past
that is killed; the parent records the stage as cut and starts a fresh worker for the stages left.
Every stage writes ``<stage>.json`` (and PNGs) as it goes; the parent writes ``run.json`` and
``summary.md`` at the end, and ``--archive FILE.tgz`` packs the folder (the device tool brings back
at most 8 files). Every printed timing line carries the device and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("info", "correctness", "tuner", "bench", "training", "demo")
# Seconds per stage on the GPU (sum 480: the demo gets what the others leave, see worker_main).
BUDGETS = {"info": 20, "correctness": 100, "tuner": 50, "bench": 190, "training": 70, "demo": 50}
DRY_BUDGETS = {"info": 20, "correctness": 40, "tuner": 20, "bench": 40, "training": 30, "demo": 60}
GRACE_S = float(
    os.environ.get("BICO_GPU_GRACE_S", 15)
)  # a worker still in a stage this long past its deadline is killed
MIN_START_S = 5  # a stage with less time than this left is not started
MARK = "@@bico-gpu "  # worker -> parent protocol lines
# correctness: a case fails past MARGIN x the interpreter tests' bound (see stage_correctness)
MARGIN = float(os.environ.get("BICO_GPU_CORRECTNESS_MARGIN", 2.0))
CACHE = ROOT / "benchmarks" / "gpu" / ".cache"  # tokenizer (and config) of SmolLM2 for the GPU machine
TARGETS = {  # ../shared/reference/kernels.md, section 7.5 (bf16, N = 8-16K, D = 128)
    "fwd_tflops": 480.0,
    "bwd_tflops": 380.0,
    "vs_flex": 1.3,
    "mirror_overhead": 0.10,
    "vs_flex_cases": ("bico", "glm", "prefix_lm", "packed"),
    "seqlens": (8192, 16384),
    "head_dim": 128,
}


# =================================================================================== the parent


def device_slug() -> str | None:
    """``nvidia-h200`` from nvidia-smi's first GPU name, None without a GPU (imports no torch)."""
    try:
        name = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            .stdout.strip()
            .splitlines()[0]
        )
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or None


def parse_budgets(text: str | None, dry: bool) -> dict:
    budgets = dict(DRY_BUDGETS if dry else BUDGETS)
    for item in filter(None, (text or "").split(",")):
        name, _, value = item.partition("=")
        if name not in budgets:
            raise SystemExit(f"--stage-budgets: unknown stage {name!r} (stages: {', '.join(STAGES)})")
        budgets[name] = float(value)
    return budgets


def worker_env(args, out: Path) -> dict:
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        MPLBACKEND="Agg",
        TOKENIZERS_PARALLELISM="false",
        BICO_KERNEL_TUNE_FILE=str(out / "tuned.json"),
    )
    paths = [str(ROOT), str(ROOT / "kernels")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # runs from a bare checkout (no pip install)
    if "BICO_CACHE" not in env and (CACHE / "smollm2-135m-instruct" / "config.json").is_file():
        env["BICO_CACHE"] = str(CACHE)
    if args.dry_run:  # CPU only, the Triton interpreter, even on a machine with a GPU
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    return env


def run_workers(args, out: Path, stages: list[str], budgets: dict, t_end: float) -> dict:
    """Run ``stages`` in worker processes, restarting after a kill; returns {stage: outcome}."""
    outcomes, left = {}, list(stages)
    log = open(out / "log.txt", "a", encoding="utf-8")
    while left:
        if t_end - time.time() < MIN_START_S:
            for s in left:
                outcomes[s] = {"status": "not run", "note": "no time left in --budget-s"}
            break
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "--out",
            str(out),
            "--stages",
            ",".join(left),
            "--end-time",
            repr(t_end),
            "--stage-budgets",
            ",".join(f"{k}={v}" for k, v in budgets.items()),
        ]
        if args.dry_run:
            cmd.append("--dry-run")
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=worker_env(args, out),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
        current, hard, eof = None, t_end + GRACE_S, False
        while not eof:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                line = ""
            if line is None:
                eof = True
            elif line.startswith(MARK):
                msg = json.loads(line[len(MARK) :])
                if msg["event"] == "start":
                    current = msg["stage"]
                    hard = min(msg["deadline"], t_end) + GRACE_S
                    outcomes[current] = {"status": "running", "started": time.time()}
                elif msg["event"] == "end":
                    outcomes[msg["stage"]] = {**outcomes.get(msg["stage"], {}), **msg["outcome"]}
                    outcomes[msg["stage"]].pop("started", None)
                    left.remove(msg["stage"])
                    current, hard = None, t_end + GRACE_S
            elif line:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                log.flush()
            if not eof and time.time() > hard:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker's own process group (start_new_session)
                proc.wait()
                note = f"killed {GRACE_S:g} s past its deadline (hard time guard)"
                if current:
                    began = outcomes[current].get("started", time.time())
                    outcomes[current] = {"status": "cut", "seconds": round(time.time() - began, 1), "note": note}
                    _mark_cut(out, current, note)
                    left.remove(current)
                print(f"[run] {note}: {current}", flush=True)
                break
        code = proc.wait()
        if current and current in left:  # the worker died inside a stage
            began = outcomes[current].get("started", time.time())
            outcomes[current] = {
                "status": "failed",
                "seconds": round(time.time() - began, 1),
                "note": f"worker exited with code {code} inside the stage (log.txt)",
            }
            left.remove(current)
        if any(o.get("status") == "failed" for s, o in outcomes.items() if s == "correctness"):
            for s in left:
                outcomes[s] = {"status": "not run", "note": "stopped: the kernel failed its correctness check"}
            break
        if code == 0 and left and not current:
            break  # the worker ended normally with stages left: it said why in their outcomes
    log.close()
    for s in stages:
        outcomes.setdefault(s, {"status": "not run", "note": "not reached"})
    return outcomes


def _mark_cut(out: Path, stage: str, note: str) -> None:
    path = out / f"{stage}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {"stage": stage}
    data.update(status="cut", note=note)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def write_summary(out: Path, run: dict) -> Path:
    """summary.md from run.json and each stage's ``summary_md`` (pure Python: no torch here)."""
    info = _load(out / "info.json")
    lines = [
        f"# GPU run{' (DRY RUN: CPU, interpreter, tiny sizes; numbers mean nothing)' if run['dry_run'] else ''}",
        "",
        f"`{run['command']}` on {run['date']}, {run['total_s']:.0f} s of a {run['budget_s']:.0f} s budget.",
        "",
        f"**Machine:** {info.get('machine_line', 'unknown (info stage did not run)')}",
        "",
        "| stage | status | seconds | budget s | note |",
        "|---|---|---:|---:|---|",
    ]
    for s in run["stages"]:
        o = run["outcomes"][s]
        sec = o.get("seconds")
        lines.append(
            f"| {s} | {o.get('status')} | {'' if sec is None else f'{sec:.1f}'} | {run['budgets'][s]:.0f} | "
            f"{o.get('note') or ''} |"
        )
    for s in run["stages"]:
        md = _load(out / f"{s}.json").get("summary_md")
        if md:
            lines += ["", f"## {s}", "", md.rstrip()]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def prepare_cache() -> int:
    """Copy SmolLM2's tokenizer and config (no weights) into benchmarks/gpu/.cache for the GPU machine."""
    sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]
    from bico.models import smollm2_folder

    src = smollm2_folder()
    dst = CACHE / "smollm2-135m-instruct"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, dst / f.name)
    print(f"copied the tokenizer and config of {src} to {dst} (carry benchmarks/gpu/.cache)")
    return 0


def parent_main(args) -> int:
    if args.prepare_cache:
        return prepare_cache()
    t0 = time.time()
    dry = args.dry_run
    slug = None if dry else device_slug()
    if not dry and slug is None:
        print(
            "benchmarks/gpu/run.py: no NVIDIA GPU (nvidia-smi) here; use --dry-run for the CPU check", file=sys.stderr
        )
        return 2
    out = (
        Path(args.out)
        if args.out
        else (
            Path(tempfile.mkdtemp(prefix="bico-gpu-dry-")) if dry else ROOT / "benchmarks" / "results" / f"gpu-{slug}"
        )
    )
    out.mkdir(parents=True, exist_ok=True)
    stages = [s.strip() for s in (args.stages or ",".join(STAGES)).split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        print(f"--stages: unknown {', '.join(bad)} (stages: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    budgets = parse_budgets(args.stage_budgets, dry)
    t_end = t0 + args.budget_s
    print(
        f"[run] {'dry run' if dry else 'GPU run'}: stages {', '.join(stages)}; budget {args.budget_s:.0f} s; out {out}",
        flush=True,
    )
    outcomes = run_workers(args, out, stages, budgets, t_end)
    run = {
        "command": " ".join(["python benchmarks/gpu/run.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
        "dry_run": dry,
        "budget_s": args.budget_s,
        "budgets": budgets,
        "stages": stages,
        "outcomes": outcomes,
        "total_s": round(time.time() - t0, 1),
    }
    (out / "run.json").write_text(json.dumps(run, indent=1, default=str) + "\n")
    summary = write_summary(out, run)
    print(summary.read_text(), flush=True)
    if args.archive:
        archive = Path(args.archive)
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(out, arcname=out.name)
        print(f"[run] archived {out} to {archive}")
    print(f"[run] done in {run['total_s']:.0f} s; results in {out}")
    failed = [s for s in stages if outcomes[s]["status"] == "failed"]
    return 1 if failed else 0


# =================================================================================== the worker


class Ctx:
    """What a stage gets: where to write, dry run or not, its deadline, the machine line."""

    def __init__(self, out: Path, dry: bool, stage: str, deadline: float, machine_line: str):
        self.out, self.dry, self.stage, self.deadline, self.machine_line = out, dry, stage, deadline, machine_line
        self.t0 = time.time()
        self.device = "cpu" if dry else "cuda"

    def left(self) -> float:
        return self.deadline - time.time()

    def log(self, msg: str) -> None:
        print(f"[{self.stage} +{time.time() - self.t0:5.1f}s] {msg}", flush=True)

    def timing(self, msg: str) -> None:
        """A timing line: always with the device and versions."""
        self.log(f"{msg}  [{self.machine_line}]")

    def write(self, data: dict, name: str | None = None) -> Path:
        path = self.out / f"{name or self.stage}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(
            json.dumps({"stage": self.stage, "machine_line": self.machine_line, **data}, indent=1, default=str) + "\n"
        )
        tmp.replace(path)
        return path


def machine_facts() -> dict:
    import torch

    from bico.machine import machine_info

    facts = machine_info()
    facts["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=p.name,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            sm_count=p.multi_processor_count,
            compute_capability=f"{p.major}.{p.minor}",
        )
        try:
            q = "driver_version,clocks.max.sm,power.limit"
            row = (
                subprocess.run(
                    ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                .stdout.strip()
                .splitlines()[0]
            )
            facts.update(zip(("driver", "max_sm_clock", "power_limit"), (x.strip() for x in row.split(","))))
        except (OSError, subprocess.SubprocessError, IndexError):
            facts["driver"] = None
    facts["flash_attn"] = _version("flash_attn") or _version("flash-attn")
    facts["triton_interpret"] = os.environ.get("TRITON_INTERPRET")
    return facts


def _version(name: str):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_line(f: dict) -> str:
    v = f["versions"]
    dev = (
        f"{f['gpu']} (driver {f.get('driver')}, CUDA {f.get('torch_cuda')})"
        if f.get("gpu")
        else "CPU only (dry run: TRITON_INTERPRET=1)"
        if f.get("triton_interpret")
        else "CPU only"
    )
    return (
        f"{dev}; CPU {f['cpu']}; torch {v.get('torch')}, triton {v.get('triton')}, "
        f"transformers {v.get('transformers')}, python {v.get('python')}"
    )


# ----------------------------------------------------------------------------- 1. info


def stage_info(ctx: Ctx, facts: dict) -> dict:
    import torch

    n, reps = (256, 3) if ctx.dry else (8192, 10)
    dtype = torch.bfloat16
    a, b = (torch.randn(n, n, device=ctx.device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        if ctx.device == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            a @ b
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        else:
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
    tflops = 2 * n**3 / statistics.median(times) / 1e12
    ctx.timing(f"bf16 matmul {n}^3: {tflops:.1f} TFLOP/s (median of {reps})")
    flex = _importable("torch.nn.attention.flex_attention")
    md = (
        f"{ctx.machine_line}\n\nbf16 matmul {n}x{n}x{n}: **{tflops:.1f} TFLOP/s** (the ceiling the kernel targets "
        f"are read against; kernels.md measured ~790 on H100). FlexAttention importable: {flex}; flash-attn: "
        f"{facts.get('flash_attn') or 'not installed'}."
    )
    return {
        "status": "ok",
        "facts": facts,
        "matmul_bf16": {"n": n, "tflops": round(tflops, 1)},
        "flex_importable": flex,
        "summary_md": md,
    }


def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False


# ----------------------------------------------------------------------------- 2. correctness


def _doc_lengths(T: int, g, n: int = 3) -> list[int]:
    import torch

    cuts = sorted(set(torch.randint(1, T, (n,), generator=g).tolist()))
    return [b - a for a, b in zip([0] + cuts, cuts + [T])]


def mask_kinds() -> dict:
    """Every mask kind bico trains with, built by bico.masks' constructors: ``(T, g) -> IntervalMask`` (B=1)."""
    import torch

    from bico.masks import IntervalMask as M

    def rand_int(lo, hi, g):
        return int(torch.randint(lo, hi, (1,), generator=g))

    def glm_isolated(T, g):
        p = max(1, T // 3)
        cuts = sorted(set(torch.randint(p + 1, T, (3,), generator=g).tolist()))
        return M.isolated_blocks(T, p, list(zip([p] + cuts, cuts + [T])))

    def block_diffusion(T, g):
        s = max(1, T // 7)
        return M.block_diffusion([s] * 4).pad(T)  # 7s tokens, padded: hidden keys after

    def random_intervals(T, g):
        lo = torch.randint(0, T, (T,), generator=g, dtype=torch.int32)
        return M(lo, torch.randint(0, T + 1, (T,), generator=g, dtype=torch.int32))  # ~half the keys hidden

    return {
        "causal": lambda T, g: M.causal(T),
        "bidirectional": lambda T, g: M.bidirectional(T),
        "prefix_lm": lambda T, g: M.prefix_lm(T, rand_int(1, T, g)),
        "bico": lambda T, g: M.bico(T, torch.rand(T, generator=g) < 0.15),
        "glm_isolated": glm_isolated,
        "block_diffusion": block_diffusion,
        "packed_causal": lambda T, g: M.concat([M.causal(n) for n in _doc_lengths(T, g)]),
        "packed_bidirectional": lambda T, g: M.concat([M.bidirectional(n) for n in _doc_lengths(T, g)]),
        "packed_prefix_lm": lambda T, g: M.concat([M.prefix_lm(n, n // 2) for n in _doc_lengths(T, g)]),
        "left_pad": lambda T, g: M.causal(T - T // 3).pad(T, "left"),
        "right_pad": lambda T, g: M.bidirectional(T - T // 5).pad(T),
        "random_intervals": random_intervals,
    }


def correctness_cases(dry: bool) -> list[dict]:
    """The interpreter matrix, natively: every mask kind x mirror x dtype x D on the GPU, with GQA ratios,
    odd lengths and the deterministic backward rotating; the dry run takes one row per mask kind, the
    (mirror, dtype, D) values rotating so that each appears."""
    kinds = list(mask_kinds())
    heads = [(2, 2), (4, 1), (3, 1)] if dry else [(4, 4), (8, 2), (6, 2)]  # GQA ratios 1, 4, 3
    lengths = [17, 23, 33] if dry else [77, 333, 1000, 515]
    dims = (32, 64) if dry else (64, 128)  # the dry run: the interpreter's tile ops are numpy, D=128 is slow there
    combos = [(m, dt, d) for m in (False, True) for dt in ("bf16", "fp16") for d in dims]
    cases = []
    if dry:
        rows = [(k, *combos[(i * 3) % len(combos)]) for i, k in enumerate(kinds)]
    else:
        rows = [(k, *c) for k in kinds for c in combos]
    for i, (kind, mirror, dtype, D) in enumerate(rows):
        hq, hkv = heads[i % len(heads)]
        cases.append(
            {
                "id": i,
                "mask": kind,
                "mirror": mirror,
                "dtype": dtype,
                "D": D,
                "B": 1 if dry else 2,
                "Hq": hq,
                "Hkv": hkv,
                "T": lengths[i % len(lengths)],
                "deterministic": i % 2 == 1,
            }
        )
    return cases


def stage_correctness(ctx: Ctx) -> dict:
    import torch

    from bico.masks import IntervalMask
    from bico_kernels.checks import compare_to_reference, random_inputs, rope_tables

    os.environ["BICO_KERNEL_AUTOTUNE"] = "0"  # the table's first config per variant: one compile each
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    kinds, cases, results = mask_kinds(), correctness_cases(ctx.dry), []
    status = "ok"
    for c in cases:
        if ctx.left() <= 0:
            status = "cut"
            break
        g = torch.Generator().manual_seed(1000 + c["id"])
        mask = IntervalMask.stack([kinds[c["mask"]](c["T"], g) for _ in range(c["B"])])
        lo, hi = mask.lo.to(ctx.device), mask.hi.to(ctx.device)
        q, k, v, do = random_inputs(c["B"], c["Hq"], c["Hkv"], c["T"], c["D"], g, ctx.device)
        pos = torch.arange(c["T"]).expand(c["B"], c["T"]) + torch.randint(0, 100, (c["B"], 1), generator=g)
        tables = rope_tables(pos.to(ctx.device), c["D"]) if c["mirror"] else None
        t = time.perf_counter()
        try:
            _, report = compare_to_reference(
                q, k, v, do, lo, hi, dtypes[c["dtype"]], tables, deterministic=c["deterministic"]
            )
            # Fails (and stops the run) only past MARGIN x the tests' bound: one unlucky draw of a low-precision
            # case lands a little over 2x torch's error (seen on random_intervals in bf16); a wrong mask or
            # mirror is off by far more.
            ok = all(r["shape_ok"] and r["finite"] and r["err"] <= MARGIN * r["bound"] for r in report.values())
            error = None
        except Exception as err:  # noqa: BLE001 - a crash is a failure of this case, recorded
            report, ok, error = {}, False, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:400]
        marginal = ok and not all(r["ok"] for r in report.values())
        results.append(
            {
                **c,
                "ok": ok,
                "marginal": marginal,
                "error": error,
                "seconds": round(time.perf_counter() - t, 2),
                "report": report,
            }
        )
        label = (
            f"{c['mask']} {'mirror' if c['mirror'] else 'rope'} {c['dtype']} D={c['D']} Hq/Hkv={c['Hq']}/{c['Hkv']} "
            f"T={c['T']}{' det' if c['deterministic'] else ''}"
        )
        worst = max(report.items(), key=lambda kv: kv[1]["err"] / kv[1]["bound"])[0] if report else None
        ctx.log(
            f"{'FAIL' if not ok else 'ok~ ' if marginal else 'ok  '} {label}"
            + (
                f"  worst {worst}: {report[worst]['err']:.2e} <= {report[worst]['bound']:.2e}"
                if worst
                else f"  {error}"
            )
        )
        ctx.write({"status": "running", "cases": results})
    os.environ.pop("BICO_KERNEL_AUTOTUNE", None)
    failed = [r for r in results if not r["ok"]]
    if failed:
        status = "failed"
    marginal = [r for r in results if r.get("marginal")]
    md = [
        f"{len(results) - len(failed)} of {len(cases)} cases passed"
        + (f" ({len(cases) - len(results)} not reached: stage cut)" if len(results) < len(cases) else "")
        + f", {len(marginal)} of them marginal (kernel vs float64 reference, out/dq/dk/dv; the tests' bound is "
        f"err <= 2 x same-dtype torch err + floor; a case fails past {MARGIN:g} x that bound, between 1 and "
        f"{MARGIN:g} x it is marginal).",
        "",
    ]
    if marginal:
        md += [
            "Marginal: "
            + "; ".join(
                f"{r['mask']} {'mirror' if r['mirror'] else 'rope'} {r['dtype']} D={r['D']} T={r['T']}: "
                + ", ".join(f"{n} {x['err']:.2e} > {x['bound']:.2e}" for n, x in r["report"].items() if not x["ok"])
                for r in marginal
            ),
            "",
        ]
    if failed:
        md += [
            "**FAILED: the kernel is wrong on this hardware; the stages after this one did not run.**",
            "",
            "| mask | mirror | dtype | D | Hq/Hkv | T | det | what |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in failed:
            what = r["error"] or ", ".join(
                f"{n} {x['err']:.2e} > {MARGIN:g} x {x['bound']:.2e}"
                for n, x in r["report"].items()
                if x["err"] > MARGIN * x["bound"]
            )
            md.append(
                f"| {r['mask']} | {r['mirror']} | {r['dtype']} | {r['D']} | {r['Hq']}/{r['Hkv']} | {r['T']} | "
                f"{r['deterministic']} | {what} |"
            )
    worst = {}
    for r in results:
        for name, x in r["report"].items():
            key = (r["dtype"], name)
            if key not in worst or x["err"] > worst[key][0]:
                worst[key] = (x["err"], x["err_ref"])
    if worst:
        md += ["", "| dtype | output | max kernel err | max torch same-dtype err |", "|---|---|---:|---:|"]
        md += [f"| {d} | {n} | {e:.2e} | {r:.2e} |" for (d, n), (e, r) in sorted(worst.items())]
    return {
        "status": status,
        "cases": results,
        "failed": len(failed),
        "passed": len(results) - len(failed),
        "marginal": len(marginal),
        "total": len(cases),
        "summary_md": "\n".join(md),
    }


# ----------------------------------------------------------------------------- 3. tuner


class TuningRecorder:
    """Wraps the tuner the kernel calls (``triton_attention.tuned_config``) to record each timing."""

    def __init__(self):
        self.events = []

    def install(self):
        from bico_kernels import triton_attention as ta

        original = ta.tuned_config
        if getattr(original, "_recorder", None):
            return
        ta.tuned_config = self.wrap(original)

    def wrap(self, original):
        def recorded(variant, seq_len, cands, bench, scope=""):
            from bico_kernels.tuning import tuning_key

            times = {}

            def timed(c):
                try:
                    times[c.label()] = float(bench(c))
                except Exception as err:  # noqa: BLE001 - recorded, then re-raised for the tuner's own handling
                    times[c.label()] = f"failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"[:200]
                    raise
                return times[c.label()]

            t = time.perf_counter()
            best = original(variant, seq_len, cands, timed, scope)
            if times:  # empty: a cached or stored winner, nothing timed
                self.events.append(
                    {
                        "key": tuning_key(variant, seq_len),
                        "seq_len": seq_len,
                        "winner": best.label(),
                        "candidates_ms": times,
                        "seconds": round(time.perf_counter() - t, 2),
                    }
                )
            return best

        recorded._recorder = True
        return recorded


def stage_tuner(ctx: Ctx, seqlens: list[int], tokens: int, heads: tuple, D: int) -> dict:
    import torch

    import bico_kernels
    from bico.tools.bench import build_case, synthetic_rope_tables
    from bico_kernels import tuning

    rec = TuningRecorder()
    rec.install()
    dtype, (hq, hkv) = torch.bfloat16, heads
    passes, status = [], "ok"
    for T in seqlens:
        for mirror in (False, True):
            if ctx.left() <= 0:
                status = "cut"
                break
            B = max(1, tokens // T)
            lo, hi = (x.to(ctx.device) for x in build_case("bico", B, T))
            g = torch.Generator(device=ctx.device).manual_seed(0)
            q, k, v = (
                torch.randn(B, h, T, D, generator=g, device=ctx.device, dtype=dtype).requires_grad_()
                for h in (hq, hkv, hkv)
            )
            tables = synthetic_rope_tables(B, T, D, ctx.device, dtype) if mirror else None
            walls = []
            for _ in range(2):  # first call: compile + tuning; second: the chosen configs
                t = time.perf_counter()
                out = bico_kernels.masked_attention(q, k, v, lo, hi, mirror_rope=tables)
                out.backward(torch.ones_like(out))
                if ctx.device == "cuda":
                    torch.cuda.synchronize()
                walls.append(time.perf_counter() - t)
            passes.append(
                {
                    "T": T,
                    "B": B,
                    "mirror": mirror,
                    "first_call_s": round(walls[0], 3),
                    "second_call_s": round(walls[1], 4),
                }
            )
            ctx.timing(
                f"T={T} B={B} {'mirror' if mirror else 'plain'}: first fwd+bwd {walls[0]:.2f} s "
                f"(compile + tuning), second {walls[1] * 1e3:.1f} ms"
            )
            del q, k, v, out
    note = None
    if ctx.dry:
        # The interpreter bypasses the tuner (fixed 16x16 tiles): drive it directly with explicit configs,
        # so that the recorder and the report run as on the GPU.
        from bico_kernels.configs import Variant

        variant = Variant("fwd", 64, "bf16", False, False)  # a head dim the pruned table covers
        T = seqlens[0]
        lo, hi = (x.to(ctx.device) for x in build_case("bico", 1, T))
        q, k, v = (torch.randn(1, h, T, 64, dtype=dtype) for h in (hq, hkv, hkv))

        def bench(c):
            t = time.perf_counter()
            bico_kernels.masked_attention(q, k, v, lo, hi, block_m=min(c.block_m, 32), block_n=min(c.block_n, 32))
            return (time.perf_counter() - t) * 1e3

        tuning.clear()
        rec.wrap(tuning.tuned_config)(variant, T, tuning.candidates(variant)[:2], bench, "dry-run")
        note = (
            "dry run: the interpreter bypasses the tuner, so tuning.tuned_config was driven directly over two "
            "table candidates (tiles capped at 32) to exercise the recorder"
        )
    md = ["| T | B | mirror | first fwd+bwd s (compile + tuning) | second ms |", "|---:|---:|---|---:|---:|"]
    md += [
        f"| {p['T']} | {p['B']} | {p['mirror']} | {p['first_call_s']:.2f} | {p['second_call_s'] * 1e3:.1f} |"
        for p in passes
    ]
    md += ["", "| tuning key | winner | candidates (ms) | s |", "|---|---|---|---:|"]
    md += [
        f"| {e['key']} | {e['winner']} | "
        + ", ".join(f"{c}: {m:.3f}" if isinstance(m, float) else f"{c}: {m}" for c, m in e["candidates_ms"].items())
        + f" | {e['seconds']:.2f} |"
        for e in rec.events
    ]
    if note:
        md += ["", note]
    return {
        "status": status,
        "passes": passes,
        "events": rec.events,
        "note": note,
        "tune_file": os.environ.get("BICO_KERNEL_TUNE_FILE"),
        "summary_md": "\n".join(md),
    }


# ----------------------------------------------------------------------------- 4. bench

BENCH_PRIORITY = ("bico", "glm", "prefix_lm", "packed", "bidirectional", "causal")


def bench_config(dry: bool) -> dict:
    from bico.tools.bench_options import CHECK_MAX_T

    seqlens = [16, 32] if dry else [1024, 2048, 4096, 8192, 16384]
    return {
        "cases": list(BENCH_PRIORITY[:1] if dry else BENCH_PRIORITY),
        "providers": ["bico-triton", "bico-triton-mirror", "sdpa-dense", "flex"],
        "modes": ["fwd", "fwd+bwd"],
        "seqlens": seqlens,
        "batch": 1 if dry else None,
        "heads": 2 if dry else 32,
        "kv_heads": 1 if dry else 8,
        "head_dim": 32 if dry else 128,
        "dtype": "bf16",
        "device": "cpu" if dry else "cuda",
        "repeats": 1 if dry else 10,
        "warmup": 0 if dry else 2,
        "seed": 0,
        "check_T": min(min(seqlens), CHECK_MAX_T),
        "check_batch": 1 if dry else 2,
    }


def _dry_bench_patches():
    """Dry run only: let the kernel providers run under the interpreter and flex run eagerly on CPU (they
    are CUDA-only in ``bico bench``), so that their code paths run; the numbers mean nothing."""
    import torch

    import bico.tools.bench as bench

    original = bench.unavailable

    def unavailable(provider, device):
        if provider in ("bico-triton", "bico-triton-mirror"):
            return None
        if provider == "flex":
            return None if _importable("torch.nn.attention.flex_attention") else "flex does not import"
        return original(provider, device)

    bench.unavailable = unavailable
    torch.compile = lambda fn, **kw: fn  # flex_attention eager (its CPU reference path), no inductor compile


def extra_providers(cfg: dict, ctx: Ctx) -> tuple[list, list]:
    """SDPA without a mask (flash/cuDNN backends) and flash-attn, on the masks they express (causal,
    bidirectional): the dense-kernel references. Timed like ``bico bench``; error of the forward against
    the float64 reference at the check length."""
    import torch

    import bico.tools.bench as bench
    from bico.masks import IntervalMask
    from bico_kernels import reference_masked_attention

    F = torch.nn.functional
    records, skipped = [], []
    flash = None
    try:
        from flash_attn import flash_attn_func as flash
    except Exception as err:  # noqa: BLE001
        skipped.append(
            {
                "provider": "flash-attn",
                "case": None,
                "mode": None,
                "T": None,
                "reason": f"flash-attn does not import ({type(err).__name__})",
            }
        )
    dtype = bench.DTYPES[cfg["dtype"]]
    Hq, Hkv, D = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    for case in ("causal", "bidirectional"):
        causal = case == "causal"
        fns = {
            "sdpa-nomask": lambda q, k, v, c=causal: F.scaled_dot_product_attention(
                q, k, v, is_causal=c, enable_gqa=True
            )
        }
        if flash is not None and ctx.device == "cuda":
            fns["flash-attn"] = lambda q, k, v, c=causal: flash(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=c
            ).transpose(1, 2)
        for name, fn in fns.items():
            try:
                lo, hi = (x.to(ctx.device) for x in bench.build_case(case, 1, cfg["check_T"]))
                xs = bench._qkv(1, cfg["check_T"], Hq, Hkv, D, dtype, lo.device, 1)
                ref = reference_masked_attention(*(x.double() for x in xs), lo, hi)
                err = float((fn(*xs).double() - ref).abs().max())
            except Exception as e:  # noqa: BLE001
                skipped.append(
                    {"provider": name, "case": case, "mode": None, "T": cfg["check_T"], "reason": bench._why(e)}
                )
                continue
            for T in cfg["seqlens"]:
                if ctx.left() <= 0:
                    break
                B = cfg["batch"] or max(1, bench.TOKENS_PER_CALL // T)
                lo, hi = (x.to(ctx.device) for x in bench.build_case(case, B, T))
                pairs = IntervalMask(lo, hi).visible_pairs()
                q, k, v = bench._qkv(B, T, Hq, Hkv, D, dtype, lo.device, 0)
                for mode in cfg["modes"]:
                    try:
                        stats = bench.time_provider(fn, q, k, v, mode, cfg["warmup"], cfg["repeats"])
                    except Exception as e:  # noqa: BLE001
                        skipped.append({"provider": name, "case": case, "mode": mode, "T": T, "reason": bench._why(e)})
                        continue
                    tflops = bench.attention_flops(pairs, D, Hq, mode) / (stats["median_ms"] * 1e-3) / 1e12
                    records.append(
                        {
                            "case": case,
                            "provider": name,
                            "mode": mode,
                            "T": T,
                            "B": B,
                            "Hq": Hq,
                            "Hkv": Hkv,
                            "D": D,
                            "dtype": cfg["dtype"],
                            **stats,
                            "tflops": tflops,
                            "visible_pairs": pairs,
                            "max_abs_err": err,
                        }
                    )
    return records, skipped


def bwd_tflops(fwd: dict, fb: dict) -> float | None:
    """Backward TFLOP/s from a fwd and a fwd+bwd record: 2.5 x the forward's exact-pair FLOPs over the
    time fwd+bwd takes beyond fwd (``bico bench`` counts its fwd+bwd mode as 2.5 x fwd over the whole call)."""
    extra = fb["median_ms"] - fwd["median_ms"]
    if extra <= 0:
        return None
    return 2.5 * 4.0 * fwd["D"] * fwd["Hq"] * fwd["visible_pairs"] / (extra * 1e-3) / 1e12


def target_rows(records: list) -> list[dict]:
    at = {(r["case"], r["provider"], r["mode"], r["T"]): r for r in records}
    rows = []
    for (case, provider, mode, T), r in sorted(at.items()):
        if provider != "bico-triton" or mode != "fwd" or T not in TARGETS["seqlens"] or r["D"] != TARGETS["head_dim"]:
            continue
        fb = at.get((case, provider, "fwd+bwd", T))
        mirror = {m: at.get((case, "bico-triton-mirror", m, T)) for m in ("fwd", "fwd+bwd")}
        flex = {m: at.get((case, "flex", m, T)) for m in ("fwd", "fwd+bwd")}
        row = {"case": case, "T": T, "fwd_tflops": r["tflops"], "bwd_tflops": bwd_tflops(r, fb) if fb else None}
        for m in ("fwd", "fwd+bwd"):
            mine = at.get((case, provider, m, T))
            row[f"mirror_overhead_{m}"] = (
                (mirror[m]["median_ms"] / mine["median_ms"] - 1) if mirror[m] and mine else None
            )
            row[f"vs_flex_{m}"] = (flex[m]["median_ms"] / mine["median_ms"]) if flex[m] and mine else None
        checks = {
            "fwd_tflops": row["fwd_tflops"] >= TARGETS["fwd_tflops"],
            "bwd_tflops": None if row["bwd_tflops"] is None else row["bwd_tflops"] >= TARGETS["bwd_tflops"],
            "mirror": None
            if row["mirror_overhead_fwd+bwd"] is None
            else (max(row["mirror_overhead_fwd"] or 0, row["mirror_overhead_fwd+bwd"]) <= TARGETS["mirror_overhead"]),
        }
        if case in TARGETS["vs_flex_cases"]:
            vs = [row[f"vs_flex_{m}"] for m in ("fwd", "fwd+bwd")]
            checks["vs_flex"] = None if None in vs else min(vs) >= TARGETS["vs_flex"]
        row["meets"] = checks
        rows.append(row)
    return rows


def targets_md(rows: list) -> str:
    fmt = lambda x, f="{:.0f}": "-" if x is None else f.format(x)  # noqa: E731
    mark = lambda ok: "" if ok is None else (" ✓" if ok else " ✗")  # noqa: E731
    lines = [
        f"Targets (kernels.md 7.5; bf16, D={TARGETS['head_dim']}, N = 8-16K): fwd >= {TARGETS['fwd_tflops']:.0f} and "
        f"bwd >= {TARGETS['bwd_tflops']:.0f} exact-pair TFLOP/s, >= {TARGETS['vs_flex']}x FlexAttention on "
        f"{', '.join(TARGETS['vs_flex_cases'])}, mirrored RoPE <= {TARGETS['mirror_overhead']:.0%}. bwd TFLOP/s = "
        "2.5 x fwd FLOPs / (fwd+bwd ms - fwd ms).",
        "",
        "| case | T | fwd TFLOP/s | bwd TFLOP/s | vs flex fwd | vs flex fwd+bwd | mirror +% fwd | mirror +% fwd+bwd |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["meets"]
        lines.append(
            f"| {r['case']} | {r['T']} | {fmt(r['fwd_tflops'])}{mark(m['fwd_tflops'])} | "
            f"{fmt(r['bwd_tflops'])}{mark(m['bwd_tflops'])} | {fmt(r['vs_flex_fwd'], '{:.2f}x')} | "
            f"{fmt(r['vs_flex_fwd+bwd'], '{:.2f}x')}{mark(m.get('vs_flex'))} | "
            f"{fmt(r['mirror_overhead_fwd'] and 100 * r['mirror_overhead_fwd'], '{:+.1f}')} | "
            f"{fmt(r['mirror_overhead_fwd+bwd'] and 100 * r['mirror_overhead_fwd+bwd'], '{:+.1f}')}"
            f"{mark(m['mirror'])} |"
        )
    if not rows:
        lines.append("| (no bico-triton records at the target lengths and head dim) |||||||| ")
    return "\n".join(lines)


def plot_tflops(result: dict, path: Path) -> None:
    from bico.io_utils import atomic_savefig, pyplot

    plt = pyplot()

    recs, cfg = result["records"], result["config"]
    cases = list(dict.fromkeys(r["case"] for r in recs)) or cfg["cases"]
    modes = cfg["modes"]
    fig, axes = plt.subplots(len(cases), len(modes), figsize=(4.6 * len(modes), 3.1 * len(cases)), squeeze=False)
    for i, case in enumerate(cases):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for p in dict.fromkeys(r["provider"] for r in recs):
                rs = sorted(
                    (r for r in recs if (r["case"], r["mode"], r["provider"]) == (case, mode, p)), key=lambda r: r["T"]
                )
                if rs:
                    ax.plot([r["T"] for r in rs], [r["tflops"] for r in rs], marker="o", ms=3, label=p)
            if mode == "fwd" and cfg["head_dim"] == TARGETS["head_dim"]:
                ax.axhline(TARGETS["fwd_tflops"], color="k", ls=":", lw=0.8, label="fwd target")
            ax.set(xscale="log", title=f"{case} / {mode}", xlabel="T", ylabel="exact-pair TFLOP/s")
            ax.set_xticks(cfg["seqlens"], [str(t) for t in cfg["seqlens"]])
            ax.set_xticks([], minor=True)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    fig.suptitle(
        f"{result['device']}, {cfg['dtype']}, Hq={cfg['heads']} Hkv={cfg['kv_heads']} D={cfg['head_dim']}", fontsize=9
    )
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


def stage_bench(ctx: Ctx) -> dict:
    import bico.tools.bench as bench

    if ctx.dry:
        _dry_bench_patches()
    cfg = bench_config(ctx.dry)
    result = {**bench.metadata(cfg), "skipped": [], "records": []}
    groups = [[p for p in cfg["providers"] if p != "flex"], ["flex"]]  # flex's compiles last: they cannot eat the rest
    units = [(case, g) for g in groups for case in cfg["cases"]]
    status, cut = "ok", []
    for case, providers in units:
        if ctx.left() <= 0:
            cut.append(f"{case}/{'+'.join(providers)}")
            continue
        t = time.perf_counter()
        part = bench.run_bench({**cfg, "cases": [case], "providers": providers}, progress=False)
        result["records"] += part["records"]
        result["skipped"] += part["skipped"]
        for r in part["records"]:
            ctx.timing(
                f"{r['case']} T={r['T']} {r['provider']} {r['mode']}: {r['median_ms']:.3f} ms, "
                f"{r['tflops']:.1f} TFLOP/s, err {r['max_abs_err']:.1e}"
            )
        ctx.log(f"{case} with {', '.join(providers)}: {time.perf_counter() - t:.1f} s")
        ctx.write({"status": "running", "result": result})
    if ctx.left() > 0:
        recs, skipped = extra_providers(cfg, ctx)
        result["records"] += recs
        result["skipped"] += skipped
        for r in recs:
            ctx.timing(
                f"{r['case']} T={r['T']} {r['provider']} {r['mode']}: {r['median_ms']:.3f} ms, "
                f"{r['tflops']:.1f} TFLOP/s"
            )
    else:
        cut.append("sdpa-nomask/flash-attn")
    if cut:
        status = "cut"
        result["skipped"] += [
            {"provider": u, "case": None, "mode": None, "T": None, "reason": "cut: stage over budget"} for u in cut
        ]
    rows = target_rows(result["records"])
    pngs = []
    if result["records"]:
        bench.plot_bench(result, ctx.out / "bench-ms.png")
        plot_tflops(result, ctx.out / "bench-tflops.png")
        pngs = ["bench-ms.png", "bench-tflops.png"]
    md = [
        targets_md(rows),
        "",
        "All records (median ms, exact-pair TFLOP/s, max abs err at the check length):",
        "",
        bench.bench_table(result) if result["records"] else "(none)",
    ]
    if result["skipped"]:
        md += ["", "Skipped:"] + [
            f"- {s['provider']}"
            + "".join(f" {k}={s[k]}" for k in ("case", "mode", "T") if s[k] is not None)
            + f": {s['reason']}"
            for s in result["skipped"]
        ]
    if cut:
        md += ["", f"Cut (stage budget): {', '.join(cut)}"]
    return {"status": status, "result": result, "targets": rows, "cut": cut, "pngs": pngs, "summary_md": "\n".join(md)}


# ----------------------------------------------------------------------------- 5. training


def model_configs(dry: bool) -> dict:
    from transformers import LlamaConfig

    if dry:
        tiny = LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
        return {"tiny-llama (dry run)": tiny}
    smollm2 = LlamaConfig(  # SmolLM2-135M-Instruct's config.json
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
    )
    llama_1b = LlamaConfig(  # Llama-3.2-1B's shape (plain RoPE: bico's mirrored RoPE needs attention_scaling 1)
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
    )
    return {"smollm2-135m (random init)": smollm2, "llama-1b (random init)": llama_1b}


def training_batch(objective: str, B: int, T: int, vocab: int, g, device) -> dict:
    """A synthetic batch as bico's collate makes it: NTP (causal, loss on every next token) or BICO's
    denoising step (15% of tokens replaced by a mask id and hidden as keys, mirrored RoPE, loss on the
    masked tokens, shifted)."""
    import torch

    from bico.masks import IntervalMask
    from bico.objectives.base import IGNORE

    ids = torch.randint(3, vocab, (B, T), generator=g)
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
    if objective == "ntp":
        targets[:, :-1] = ids[:, 1:]
        mask = IntervalMask.stack([IntervalMask.causal(T)] * B)
    else:
        hidden = torch.rand(B, T, generator=g) < 0.15
        hidden[:, 0] = False
        targets[:, :-1] = torch.where(hidden[:, 1:], ids[:, 1:], IGNORE)
        ids = ids.masked_fill(hidden, 0)
        mask = IntervalMask.stack([IntervalMask.bico(T, hidden[b], rope="mirrored") for b in range(B)])
    return {
        "input_ids": ids.to(device),
        "position_ids": torch.arange(T).expand(B, T).to(device),
        "bico_mask": mask.to(device),
        "targets": targets.to(device),
        "weights": torch.ones(B, T, device=device),
        "num_targets": int((targets != IGNORE).sum()),
    }


def stage_training(ctx: Ctx) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    import bico
    from bico.training.step import batch_loss

    bico.register()  # the models below are built with attn_implementation="bico"
    device = torch.device(ctx.device)
    if ctx.dry:
        os.environ["BICO_ATTENTION_BACKEND"] = "triton"  # the GPU's path, under the interpreter
    B, T = (1, 24) if ctx.dry else (8, 2048)
    warmup, steps = (1, 1) if ctx.dry else (2, 5)
    runs, status = [], "ok"
    for name, config in model_configs(ctx.dry).items():
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM._from_config(config, attn_implementation="bico", dtype=torch.float32)
        model.train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        for objective in ("ntp", "bico"):
            if ctx.left() <= 0:
                status = "cut"
                break
            g = torch.Generator().manual_seed(1)
            batch = training_batch(objective, B, T, config.vocab_size, g, device)
            times = []
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for step in range(warmup + steps):
                if ctx.left() <= 0:
                    status = "cut"
                    break
                t = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loss = batch_loss(model, batch, device) / batch["num_targets"]
                loss.backward()
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if step >= warmup:
                    times.append(time.perf_counter() - t)
            if not times:
                break
            s = statistics.median(times)
            tps = B * T / s
            L, H, D = config.num_hidden_layers, config.num_attention_heads, config.head_dim
            pairs = int((batch["bico_mask"].hi - batch["bico_mask"].lo).clamp(min=0).sum())
            attn_flops = 3.5 * 4 * D * H * pairs * L  # fwd + bwd, exact pairs
            run = {
                "model": name,
                "objective": objective,
                "params": params,
                "B": B,
                "T": T,
                "steps": len(times),
                "step_s": round(s, 4),
                "tokens_per_s": round(tps, 1),
                "model_tflops": round(6 * params * tps / 1e12, 3),
                "attention_tflops": round(attn_flops / s / 1e12, 3),
                "loss": round(float(loss), 4),
                "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
            }
            runs.append(run)
            ctx.timing(
                f"{name} {objective}: {s * 1e3:.1f} ms/step, {tps:,.0f} tokens/s, "
                f"{run['model_tflops']:.1f} model TFLOP/s (6N)"
            )
            ctx.write({"status": "running", "runs": runs})
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for r in runs:
        base = next((b for b in runs if b["model"] == r["model"] and b["objective"] == "ntp"), None)
        r["vs_ntp"] = round(base["step_s"] / r["step_s"], 3) if base else None
    pngs = []
    if runs:
        plot_training(runs, ctx, ctx.out / "training.png")
        pngs.append("training.png")
    os.environ.pop("BICO_ATTENTION_BACKEND", None)
    md = [
        f"bf16 autocast, fp32 master weights, fused AdamW, {B} x {T} tokens per step, random tokens; "
        f"median of {steps} steps after {warmup} warm-up. model FLOP/s = 6 x params x tokens/s; attention = "
        "3.5 x 4 x D x H x visible pairs x layers per step.",
        "",
        "| model | params | objective | ms/step | tokens/s | model TFLOP/s | attention TFLOP/s | NTP/this step time | "
        "peak GiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    md += [
        f"| {r['model']} | {r['params'] / 1e6:.0f}M | {r['objective']} | {r['step_s'] * 1e3:.1f} | "
        f"{r['tokens_per_s']:,.0f} | {r['model_tflops']:.1f} | {r['attention_tflops']:.1f} | {r['vs_ntp']} | "
        f"{r['peak_mem_gib']} |"
        for r in runs
    ]
    return {"status": status, "runs": runs, "pngs": pngs, "summary_md": "\n".join(md)}


def plot_training(runs: list, ctx: Ctx, path: Path) -> None:
    from bico.io_utils import atomic_savefig, pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    labels = [f"{r['model'].split(' ')[0]}\n{r['objective']}" for r in runs]
    bars = ax.bar(
        labels, [r["tokens_per_s"] for r in runs], color=["#27c" if r["objective"] == "ntp" else "#c72" for r in runs]
    )
    ax.bar_label(bars, labels=[f"{r['tokens_per_s']:,.0f}\n{r['model_tflops']:.0f} TF" for r in runs], fontsize=7)
    ax.set_ylabel("training tokens/s")
    ax.set_title(ctx.machine_line[:110], fontsize=6)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- 6. demo


def stage_demo(ctx: Ctx) -> dict:
    from bico.models import ModelError, smollm2_folder
    from bico.paths import cache_dir

    try:
        folder = smollm2_folder()
    except ModelError as err:
        note = (
            f"no SmolLM2 tokenizer here ({err}); on the GPU machine, run `python benchmarks/gpu/run.py "
            "--prepare-cache` beforehand and carry benchmarks/gpu/.cache"
        )
        return {"status": "skipped", "note": note, "summary_md": note}
    weights = any(folder.glob("*.safetensors"))
    runs = []
    plan = [("quick", ["--quick"] + (["--arms", "ntp"] if ctx.dry else []))]
    for label, extra in plan + ([("full", [])] if weights and not ctx.dry else []):
        if label == "full" and ctx.left() < 120:
            runs.append({"demo": label, "status": "skipped", "note": f"{ctx.left():.0f} s left (< 120 s)"})
            continue
        out = ctx.out / f"demo-{label}"
        cmd = [sys.executable, "-m", "bico", "demo", *extra, "--out", str(out)]
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, ctx.left()))
            code, tail = p.returncode, (p.stdout + p.stderr)[-3000:]
        except subprocess.TimeoutExpired as e:
            code, tail = (
                "timeout",
                ((e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""))[-3000:],
            )
        seconds = round(time.perf_counter() - t, 1)
        for line in tail.splitlines()[-12:]:
            ctx.log(line)
        md_file = out / "demo.md"
        runs.append(
            {
                "demo": label,
                "command": " ".join(cmd[1:]),
                "exit": code,
                "seconds": seconds,
                "status": "ok" if code == 0 else "cut" if code == "timeout" else "failed",
                "tail": tail,
                "report_md": md_file.read_text() if md_file.is_file() else None,
            }
        )
        ctx.timing(f"demo {label}: exit {code} in {seconds:.0f} s")
    if not weights and not ctx.dry:
        runs.append(
            {
                "demo": "full",
                "status": "skipped",
                "note": f"no SmolLM2 weights in {cache_dir()} (the GGUF is not on the GPU machine)",
            }
        )
    statuses = [r["status"] for r in runs]
    status = "failed" if "failed" in statuses else "cut" if "cut" in statuses else "ok"
    md = []
    for r in runs:
        md.append(
            f"- {r['demo']}: {r['status']}"
            + (f", {r['seconds']:.0f} s (`{r['command']}`)" if "seconds" in r else "")
            + (f" - {r['note']}" if r.get("note") else "")
        )
        if r.get("report_md"):
            md += ["", r["report_md"].strip(), ""]
    return {"status": status, "runs": runs, "summary_md": "\n".join(md)}


# ----------------------------------------------------------------------------- the worker's loop


def emit(event: str, **kw) -> None:
    print(MARK + json.dumps({"event": event, **kw}, default=str), flush=True)


def worker_main(args) -> int:
    out, dry = Path(args.out), args.dry_run
    budgets = parse_budgets(args.stage_budgets, dry)
    stages = args.stages.split(",")
    t_end = float(args.end_time)
    facts = machine_facts()
    line = machine_line(facts)
    print(f"[worker] {line}", flush=True)
    if not dry:
        import torch

        if not torch.cuda.is_available():
            print("[worker] torch sees no CUDA device", flush=True)
    bcfg = bench_config(dry)
    for i, stage in enumerate(stages):
        left = t_end - time.time()
        budget = left if stage == "demo" else min(budgets[stage], left)  # the demo gets whatever is left
        if stage == "demo":
            budget = min(budget, max(budgets["demo"], left))
        if left < MIN_START_S:  # (a stage's own budget may be smaller: it then does one unit of work)
            emit("start", stage=stage, deadline=time.time())
            emit(
                "end",
                stage=stage,
                outcome={"status": "not run", "seconds": 0.0, "note": f"{max(left, 0):.0f} s left of --budget-s"},
            )
            continue
        deadline = time.time() + budget
        emit("start", stage=stage, deadline=deadline)
        ctx = Ctx(out, dry, stage, deadline, line)
        ctx.log(f"budget {budget:.0f} s; {line}")
        t = time.time()
        try:
            if stage == "info":
                data = stage_info(ctx, facts)
            elif stage == "correctness":
                data = stage_correctness(ctx)
            elif stage == "tuner":
                data = stage_tuner(
                    ctx, bcfg["seqlens"], 1 if dry else 16384, (bcfg["heads"], bcfg["kv_heads"]), bcfg["head_dim"]
                )
            elif stage == "bench":
                data = stage_bench(ctx)
            elif stage == "training":
                data = stage_training(ctx)
            else:
                data = stage_demo(ctx)
        except Exception as err:  # noqa: BLE001 - a crashed stage is recorded; the next one still runs
            import traceback

            traceback.print_exc()
            data = {
                "status": "failed",
                "note": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:400],
            }
        seconds = round(time.time() - t, 1)
        if data["status"] == "cut" and not data.get("note"):
            data["note"] = f"over its {budget:.0f} s budget: stopped starting new work"
        ctx.write({**data, "seconds": seconds, "budget_s": round(budget, 1), "dry_run": dry})
        emit("end", stage=stage, outcome={"status": data["status"], "seconds": seconds, "note": data.get("note")})
        if stage == "correctness" and data["status"] == "failed":
            for rest in stages[i + 1 :]:
                emit("start", stage=rest, deadline=time.time())
                emit(
                    "end",
                    stage=rest,
                    outcome={"status": "not run", "note": "stopped: the kernel failed its correctness check"},
                )
            return 3
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton interpreter (seconds)")
    ap.add_argument("--out", help="results folder (default benchmarks/results/gpu-<device>; dry run: a temp folder)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="the whole run's limit in seconds (480)")
    ap.add_argument("--stages", help=f"comma list of {','.join(STAGES)} (all)")
    ap.add_argument("--stage-budgets", help="e.g. bench=200,training=60 (seconds)")
    ap.add_argument("--archive", help="also pack the results folder into this .tgz")
    ap.add_argument(
        "--prepare-cache",
        action="store_true",
        help="copy SmolLM2's tokenizer and config (no weights) to benchmarks/gpu/.cache, to carry",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--end-time", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    return worker_main(args) if args.worker else parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
