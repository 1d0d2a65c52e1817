"""Training throughput of SmolLM2-135M on this CPU: the demo's step in fp32 as it was, fp32 with the
fused AdamW, and bf16 autocast, against this CPU's own fp32 and bf16 matmul peaks.

    python benchmarks/train_throughput.py [--steps 16] [--warmup 4] [--repeats 1] [--out benchmarks/results/throughput-cpu]

Measures, with nothing else running (the settings interleave per objective, so that slow drift
hits all alike):
* this CPU's fp32 and bf16 matmul peaks with torch (square 2048 matmuls and SmolLM2's MLP and LM
  head shapes, median of repeats, torch's threads);
* tokens/s of the demo's training step (SmolLM2-135M-Instruct, full finetuning, batch 8, packed
  rows, the demo's data; LM head only where a target is) for NTP and BICO (the demo's bico_names
  recipe), in three settings:
  - ``fp32-before``: fp32 with the per-tensor AdamW loop (bico before the bf16 work, b330f0d);
  - ``fp32-fused-adamw``: fp32 with the fused AdamW, freed memory returned to the OS as glibc does
    (bico before 2026-12-07 evening);
  - ``fp32``: that, with freed memory kept for reuse (``bico.machine.keep_freed_memory``): what
    ``train.precision=auto`` picks on CPUs without bf16 hardware;
  - ``bf16-attn-bf16``: bf16 autocast with the attention in bf16 too, glibc's freeing (bico before
    2026-12-07);
  - ``bf16-glibc-free``: bf16 autocast with the attention in fp32, glibc's freeing (bico on the
    afternoon of 2026-12-07);
  - ``bf16``: bf16 autocast with fp32 master weights (what auto picks on CPUs with AMX or
    AVX512-BF16), the masked attention in fp32;
  - ``bf16-compile``: the same with ``train.compile=true`` (its compile time reported apart: the
    warm-up steps' excess over steady steps);
  - ``bf16-frozen-embedding``: bf16 with ``finetune.freeze=[model.embed_tokens.*]`` (a recipe change,
    issue 23's grid 5: no gradient or optimizer step for the tied 49,152 x 576 table);
  - ``bf16-batch32``: bf16 with 32 examples per step instead of 8 (not the demo's recipe: it shows
    how much of the step is fixed cost that a larger batch amortises);
* model FLOP/s = 6 x parameters x tokens/s and its fraction of the matmul peak of that precision.
Per setting: the median of the seconds of steps warmup+1 .. warmup+steps (from metrics.jsonl; the
median, because this workplace's CPUs are shared and single steps can be slow), tokens per step
counted without padding, their mean. ``--repeats N`` runs N whole rounds over the settings and keeps
each setting's median round (of two, the slower). Writes throughput.json and throughput.png under --out.
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

import bico.attention
import bico.machine
import bico.training.engine as E
import bico.training.train as T
from bico.config import load_recipe
from bico.data import generate_reversal_dataset
from bico.io_utils import atomic_savefig, atomic_write_json, pyplot
from bico.machine import machine_info
from bico.tools.demo import DATA, recipe_path


def matmul_peak(dtype: torch.dtype, repeats: int = 10) -> dict:
    shapes = {
        "2048^3": (2048, 2048, 2048),
        "MLP 256x576x1536": (256, 576, 1536),
        "LM head 512x576x49152": (512, 576, 49152),
    }
    out = {}
    for label, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        out[label] = round(2 * m * k * n / statistics.median(times) / 1e9, 1)
    return {"gflops_by_shape": out, "gflops": max(out.values())}


def old_adamw(params, cfg, device):
    """The optimizer as bico built it before (b330f0d): the per-tensor loop on CPU."""
    return torch.optim.AdamW(
        params,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        betas=tuple(cfg.betas),
        eps=E.ADAM_EPS,
        foreach=device.type == "cuda",
    )


def measure(objective: str, setting: str, data_dir: Path, steps: int, warmup: int) -> dict:
    E.adamw = old_adamw if setting == "fp32-before" else FUSED_ADAMW
    precision = "bf16" if setting.startswith("bf16") else "fp32"
    extra = {
        "bf16-compile": ["train.compile=true"],
        "bf16-frozen-embedding": ["finetune.freeze=[model.embed_tokens.*]"],
        "bf16-batch32": ["train.batch_size=32"],
    }.get(setting, [])
    bico.attention.CPU_AUTOCAST_FP32 = setting != "bf16-attn-bf16"
    before = setting in ("fp32-before", "fp32-fused-adamw", "bf16-attn-bf16", "bf16-glibc-free")
    bico.machine.KEEP_FREED_MEMORY = not before
    bico.machine.keep_freed_memory(not before)  # training only ever turns it on
    torch._dynamo.reset()
    with tempfile.TemporaryDirectory() as out:
        recipe = load_recipe(
            recipe_path(objective, False),
            [
                f"data.dir={data_dir}",
                f"train.output_dir={out}",
                f"train.max_steps={warmup + steps}",
                "train.log_every=1",
                "train.save_model=false",
                "train.progress=false",
                f"train.precision={precision}",
            ]
            + extra,
        )
        params = T.train(recipe).summary["total_params"]
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    timed = rows[warmup - 1 :]
    step_s = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(timed, timed[1:])]
    step_tokens = [b["tokens"] - a["tokens"] for a, b in zip(timed, timed[1:])]
    seconds = statistics.median(step_s) * steps
    tokens = sum(step_tokens)
    tps = tokens / seconds
    # the warm-up's excess over steady steps: compile time where compiled, else start-up noise
    warmup_excess = timed[0]["elapsed_s"] - warmup * seconds / steps
    return {
        "objective": objective,
        "setting": setting,
        "precision": precision,
        "steps": steps,
        "warmup_excess_s": round(warmup_excess, 1),
        "seconds": round(seconds, 2),
        "tokens": tokens,
        "tokens_per_s": round(tps, 1),
        "s_per_step": round(seconds / steps, 3),
        "model_gflops": round(6 * params * tps / 1e9, 1),
        "params": params,
    }


def median_run(same: list[dict]) -> dict:
    """The run of median speed among one setting's repeats, with every repeat's tokens/s beside it."""
    ordered = sorted(same, key=lambda r: r["tokens_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "repeats_tokens_per_s": [r["tokens_per_s"] for r in same]}


def plot(result: dict, path: Path) -> None:
    """tokens/s per objective and setting (``--replot`` redraws it from a throughput.json)."""
    runs, machine = result["runs"], result["machine"]
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(9, 3.8))
    labels = [f"{r['objective']} {r['setting']}" for r in runs]
    colors = {
        "fp32-before": "#999",
        "fp32-fused-adamw": "#6a9",
        "fp32": "#396",
        "bf16-attn-bf16": "#8ac",
        "bf16-glibc-free": "#59d",
        "bf16": "#27c",
        "bf16-compile": "#83c",
        "bf16-frozen-embedding": "#2a8",
        "bf16-batch32": "#c72",
    }
    bars = ax.bar(labels, [r["tokens_per_s"] for r in runs], color=[colors.get(r["setting"], "#555") for r in runs])
    ax.bar_label(
        bars, labels=[f"{r['tokens_per_s']:.0f}\n{r['speedup_vs_fp32_before']:.2f}x" for r in runs], fontsize=7
    )
    ax.set_ylabel("training tokens/s")
    ax.tick_params(axis="x", labelsize=6, rotation=40)
    plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    ax.set_title(
        f"SmolLM2-135M full FT, demo step, {machine['cpu']} (bf16 flags: {', '.join(machine['cpu_bf16']) or 'none'}), "
        f"{machine['torch_threads']} threads, "
        f"torch {machine['versions']['torch']}",
        fontsize=7,
    )
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)


FUSED_ADAMW = E.adamw
SETTINGS = (
    "fp32-before",
    "fp32-fused-adamw",
    "fp32",
    "bf16-attn-bf16",
    "bf16-glibc-free",
    "bf16",
    "bf16-compile",
    "bf16-frozen-embedding",
    "bf16-batch32",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--objectives", default="ntp,bico_names")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--repeats", type=int, default=1, help="rounds over every setting; the median round counts")
    ap.add_argument("--out", default="benchmarks/results/throughput-cpu")
    ap.add_argument("--replot", action="store_true", help="only redraw --out's plot from its throughput.json")
    args = ap.parse_args()
    out = Path(args.out)
    if args.replot:
        plot(json.loads((out / "throughput.json").read_text()), out / "throughput.png")
        return
    data_dir = Path(tempfile.mkdtemp()) / "data"
    generate_reversal_dataset(data_dir, **DATA)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    runs = []
    for o in args.objectives.split(","):
        # whole rounds over the settings, so that slow spells hit every setting alike
        rounds = [
            [measure(o, s, data_dir, args.steps, args.warmup) for s in args.settings.split(",")]
            for _ in range(args.repeats)
        ]
        runs += [median_run(list(same)) for same in zip(*rounds)]
    for r in runs:
        r["fraction_of_peak"] = round(r["model_gflops"] / peaks[r["precision"]]["gflops"], 3)
        base = next(b for b in runs if b["objective"] == r["objective"] and b["setting"] == "fp32-before")
        r["speedup_vs_fp32_before"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
    machine = machine_info()
    result = {"machine": machine, "command": "python " + " ".join(sys.argv), "matmul_peaks": peaks, "runs": runs}
    atomic_write_json(out / "throughput.json", result)
    print(
        f"{machine['cpu']} (bf16 flags: {', '.join(machine['cpu_bf16']) or 'none'}), {machine['torch_threads']} "
        f"threads: matmul peak fp32 {peaks['fp32']['gflops']:.0f}, bf16 {peaks['bf16']['gflops']:.0f} GFLOP/s"
    )
    print(
        "| objective | setting | s/step | tokens/s | vs fp32-before | model GFLOP/s | of its peak | warm-up excess s |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for r in runs:
        print(
            f"| {r['objective']} | {r['setting']} | {r['s_per_step']} | {r['tokens_per_s']} | "
            f"{r['speedup_vs_fp32_before']:.2f}x | {r['model_gflops']} | {r['fraction_of_peak']:.0%} | "
            f"{r['warmup_excess_s']} |"
        )
    plot(result, out / "throughput.png")


if __name__ == "__main__":
    main()
