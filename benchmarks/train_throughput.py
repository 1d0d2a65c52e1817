"""Training throughput of SmolLM2-135M on this CPU, before/after the waste removal of issue 11.

    python benchmarks/train_throughput.py [--steps 24] [--warmup 4] [--out benchmarks/results/throughput-cpu]

Measures, with nothing else running:
* this CPU's fp32 matmul peak with torch (square matmuls, median of repeats, torch's threads);
* tokens/s of the demo's training step (SmolLM2-135M-Instruct, full finetuning, fp32, batch 8,
  the demo's data) for NTP and BICO, in two settings:
  - ``before``: every row padded to the batch's longest, LM head + log-softmax at every position;
  - ``after``: rows packed (``data.pack``), LM head only at positions with a target (bico.train.batch_loss);
* model FLOP/s = 6 x parameters x tokens/s (the usual training-FLOP convention; the ``after``
  setting does fewer FLOPs for the same tokens, so this is useful work per second) and its
  fraction of the matmul peak.
Per setting: seconds of steps warmup+1 .. warmup+steps (from metrics.jsonl), tokens counted
without padding. Writes throughput.json and throughput.png under --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import bico.train as T
from bico.collate import model_inputs
from bico.config import load_recipe
from bico.data import generate_reversal_dataset
from bico.demo import DATA, recipe_path
from bico.machine import cpu_model
from bico.io_utils import atomic_savefig, atomic_write_json


def full_logits_loss(model, batch, device, *_):
    """The loss as computed before: logits (and log-softmax) at every position."""
    logits = model(use_cache=False, **model_inputs(batch, device)).logits
    losses = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].to(device).flatten(), ignore_index=-100,
                             reduction="none")
    return (losses * batch["weights"].to(device).flatten()).sum()


def matmul_peak(sizes=(1024, 2048), repeats=10) -> dict:
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        out[str(n)] = 2 * n ** 3 / statistics.median(times) / 1e9
    return {"gflops_by_size": out, "gflops": max(out.values())}


def measure(objective: str, setting: str, data_dir: Path, steps: int, warmup: int) -> dict:
    T.batch_loss = full_logits_loss if setting == "before" else ORIGINAL_LOSS
    with tempfile.TemporaryDirectory() as out:
        recipe = load_recipe(recipe_path(objective, False), [
            f"data.dir={data_dir}", f"train.output_dir={out}", f"train.max_steps={warmup + steps}",
            "train.log_every=1", "train.save_model=false", "train.progress=false",
            f"data.pack={'false' if setting == 'before' else 'true'}",
        ])
        params = T.train(recipe).summary["total_params"]
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[warmup - 1], rows[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    tokens = last["tokens"] - first["tokens"]
    tps = tokens / seconds
    return {"objective": objective, "setting": setting, "steps": steps, "seconds": round(seconds, 2),
            "tokens": tokens, "tokens_per_s": round(tps, 1), "s_per_step": round(seconds / steps, 3),
            "model_gflops": round(6 * params * tps / 1e9, 1), "params": params}


ORIGINAL_LOSS = T.batch_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/throughput-cpu")
    args = ap.parse_args()
    out = Path(args.out)
    data_dir = Path(tempfile.mkdtemp()) / "data"
    generate_reversal_dataset(data_dir, **DATA)
    peak = matmul_peak()
    runs = [measure(o, s, data_dir, args.steps, args.warmup) for o in ("ntp", "bico") for s in ("before", "after")]
    for r in runs:
        r["fraction_of_peak"] = round(r["model_gflops"] / peak["gflops"], 3)
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "command": "python " + " ".join(sys.argv), "matmul_peak": peak, "runs": runs}
    atomic_write_json(out / "throughput.json", result)
    print(f"{result['cpu']}, {result['threads']} threads: fp32 matmul peak {peak['gflops']:.1f} GFLOP/s")
    print("| objective | setting | s/step | tokens/s | model GFLOP/s | of peak |\n|---|---|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['objective']} | {r['setting']} | {r['s_per_step']} | {r['tokens_per_s']} | {r['model_gflops']} | "
              f"{r['fraction_of_peak']:.0%} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['objective']}\n{r['setting']}" for r in runs]
    bars = ax.bar(labels, [r["tokens_per_s"] for r in runs], color=["#999", "#4a7", "#999", "#4a7"])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("training tokens/s")
    ax.set_title(f"SmolLM2-135M full FT, fp32, {result['cpu']}, {result['threads']} threads", fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, out / "throughput.png", dpi=120)


if __name__ == "__main__":
    main()
