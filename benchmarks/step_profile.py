"""Where a training step's time goes: the demo's NTP and BICO steps, by phase and by operator.

    python benchmarks/step_profile.py [--arms ntp,bico_names] [--precisions fp32,bf16] [--steps 6]
                                      [--out benchmarks/results/step-profile-cpu]

For each (arm, precision) on SmolLM2-135M-Instruct with the demo's recipe and data (full
finetuning, batch 8, packed rows of <= 96 tokens), run ``--warmup`` steps, then ``--steps`` timed
steps exactly as ``bico train`` runs them (the same batches, engine and loss), with a timer per
phase: forward (the loss under the engine's autocast), backward, optimizer (clipping + AdamW +
zero_grad). One more step runs under ``torch.profiler``; its self CPU time per operator is summed
into categories (matmuls, attention, cross-entropy, norms and RoPE and other elementwise work,
casts, optimizer kernels, embedding). Medians over the timed steps. Writes profile.json,
profile.md and profile.png under --out. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import bico.training.examples as X
import bico.training.step as S
import bico.training.train as T
from bico.config import load_recipe
from bico.data import generate_reversal_dataset
from bico.io_utils import atomic_savefig, atomic_write, atomic_write_json
from bico.machine import machine_info
from bico.models import setup_model
from bico.tools.demo import DATA, recipe_path

# Operator name fragments -> category; the first match wins (order matters: "addmm" before "add").
CATEGORIES = [
    ("optimizer", ("adam", "_foreach", "addcdiv", "addcmul", "lerp", "clip_grad", "norm_", "_fused")),
    ("attention", ("scaled_dot_product", "flash_attention", "attention")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn", "onednn")),
    ("cross-entropy", ("log_softmax", "nll_loss", "cross_entropy")),
    ("casts / copies", ("aten::to", "_to_copy", "aten::copy_", "aten::clone", "contiguous")),
    ("embedding", ("embedding",)),
    ("elementwise (norms, RoPE, SwiGLU, masks)", ("aten::",)),
]


def category(name: str) -> str:
    low = name.lower()
    for label, keys in CATEGORIES:
        if any(k in low for k in keys):
            return label
    return "other"


def profile_arm(arm: str, precision: str, data_dir: Path, steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        recipe = load_recipe(
            recipe_path(arm, False),
            [f"data.dir={data_dir}", f"train.output_dir={out}", f"train.precision={precision}", "train.progress=false"],
        )
    cfg = recipe.train
    torch.manual_seed(cfg.seed)
    device = torch.device("cpu")
    model, tokenizer, objective = setup_model(recipe, data_dir, device)
    rows, sources = X.load_training_rows(recipe)
    examples = X.tokenize_examples(rows, tokenizer, recipe.data.max_length, sources, data=recipe.data)
    plan = S.StepPlan(len(examples), cfg.batch_size, cfg.grad_accum, cfg.seed)
    total = max(1, int(cfg.epochs * plan.steps_per_epoch))
    engine = T.build_engine(model, recipe, total, device)
    phases, tokens = defaultdict(list), []

    def one_step(step: int) -> None:
        objective.set_progress(step, total)
        batches = [
            S.make_batch(objective, examples, idx, cfg.seed, step, m, tokenizer.pad_token_id, recipe.data)
            for m, idx in plan.for_rank(step, 0, 1)
        ]
        num_targets = sum(b["num_targets"] for b in batches)
        fwd = bwd = 0.0
        for m, batch in enumerate(batches):
            if not batch["num_targets"]:
                continue
            torch.manual_seed(S.torch_seed(cfg.seed, step, m))
            t0 = time.perf_counter()
            with engine._autocast():
                loss_sum = S.batch_loss(engine.module, batch, device)
            t1 = time.perf_counter()
            (loss_sum / num_targets).backward()
            fwd, bwd = fwd + t1 - t0, bwd + time.perf_counter() - t1
        t0 = time.perf_counter()
        engine.step()
        phases["forward"].append(fwd)
        phases["backward"].append(bwd)
        phases["optimizer"].append(time.perf_counter() - t0)
        tokens.append(sum(b["num_tokens"] for b in batches if b["num_targets"]))

    for step in range(warmup):
        one_step(step)
    phases.clear()
    tokens.clear()
    for step in range(warmup, warmup + steps):
        one_step(step)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        one_step(warmup + steps)
    ops = defaultdict(float)
    for event in prof.key_averages():
        ops[event.key] += event.self_cpu_time_total / 1e6
    by_category = defaultdict(float)
    for name, seconds in ops.items():
        by_category[category(name)] += seconds
    step_s = [sum(v) for v in zip(*(phases[p] for p in ("forward", "backward", "optimizer")))]
    med = statistics.median(step_s)
    tps = statistics.median(tokens) / med
    params = sum(p.numel() for p in model.parameters())
    return {
        "arm": arm,
        "precision": precision,
        "steps": steps,
        "tokens_per_step": statistics.median(tokens),
        "step_s": round(med, 4),
        "tokens_per_s": round(tps, 1),
        "model_gflops": round(6 * params * tps / 1e9, 1),
        "phases_s": {p: round(statistics.median(v), 4) for p, v in phases.items()},
        "profiled_step_by_category_s": {k: round(v, 4) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "top_ops_s": {k: round(v, 4) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:15]},
    }


def report(result: dict) -> str:
    lines = [
        f"Step profile on {result['machine']['cpu']} ({result['machine']['torch_threads']} torch threads, "
        f"torch {result['machine']['versions']['torch']}); `{result['command']}`",
        "",
        "| arm | precision | tokens/step | s/step | forward | backward | optimizer | tokens/s | model GFLOP/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        p = r["phases_s"]
        lines.append(
            f"| {r['arm']} | {r['precision']} | {r['tokens_per_step']:.0f} | {r['step_s']:.3f} | "
            f"{p['forward']:.3f} | {p['backward']:.3f} | {p['optimizer']:.3f} | {r['tokens_per_s']:.0f} | "
            f"{r['model_gflops']:.0f} |"
        )
    cats = sorted({c for r in result["runs"] for c in r["profiled_step_by_category_s"]})
    lines += [
        "",
        "Self CPU seconds of one profiled step, by operator category (the profiler adds overhead):",
        "",
        "| arm | precision | " + " | ".join(cats) + " |",
        "|---|---|" + "---:|" * len(cats),
    ]
    for r in result["runs"]:
        c = r["profiled_step_by_category_s"]
        lines.append(f"| {r['arm']} | {r['precision']} | " + " | ".join(f"{c.get(k, 0):.3f}" for k in cats) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    from bico.io_utils import pyplot

    plt = pyplot()

    runs = result["runs"]
    cats = sorted({c for r in runs for c in r["profiled_step_by_category_s"]})
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    labels = [f"{r['arm']}\n{r['precision']}" for r in runs]
    bottom = [0.0] * len(runs)
    for cat in cats:
        values = [r["profiled_step_by_category_s"].get(cat, 0.0) for r in runs]
        ax.bar(labels, values, bottom=bottom, label=cat)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("self CPU s in one profiled step")
    ax.set_title(f"SmolLM2-135M demo step, {result['machine']['cpu']}", fontsize=8)
    ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default="ntp,bico_names")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/step-profile-cpu")
    args = ap.parse_args()
    out = Path(args.out)
    data_dir = Path(tempfile.mkdtemp()) / "data"
    generate_reversal_dataset(data_dir, **DATA)
    runs = []
    for arm in args.arms.split(","):
        for precision in args.precisions.split(","):
            runs.append(profile_arm(arm, precision, data_dir, args.steps, args.warmup))
            print(
                f"{arm} {precision}: {runs[-1]['step_s']:.3f} s/step, {runs[-1]['tokens_per_s']:.0f} tokens/s",
                flush=True,
            )
    result = {"machine": machine_info(), "command": "python " + " ".join(sys.argv), "runs": runs}
    atomic_write_json(out / "profile.json", result)
    atomic_write(out / "profile.md", report(result))
    plot(result, out / "profile.png")
    print(report(result))


if __name__ == "__main__":
    main()
