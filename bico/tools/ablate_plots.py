"""``bico ablate``'s plots: exact match per objective and split, reverse accuracy against training
cost, and the training-loss curves of every cell (read from each cell's ``metrics.jsonl``)."""

from __future__ import annotations

import math
from pathlib import Path

from bico.io_utils import atomic_savefig, pyplot, save_figure
from bico.training.report import draw_loss, read_metrics
from bico.training.rundir import METRICS_LOG

SEED_STYLES = ("-", "--", ":", "-.")


def plot_grid(rows: list[dict], out_dir: Path) -> dict:
    plt = pyplot()
    groups = list(dict.fromkeys(r["group"] for r in rows))
    splits = [s for s in dict.fromkeys(r["split"] for r in rows) if s != "reverse (mean)"]
    at = {(r["group"], r["split"]): r for r in rows}
    width = 0.8 / max(len(splits), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(splits)) / 2), 4.2))
    for k, split in enumerate(splits):
        xs = [i + (k - (len(splits) - 1) / 2) * width for i in range(len(groups))]
        ys = [at[g, split]["exact_match_mean"] if (g, split) in at else math.nan for g in groups]
        err = [
            0
            if (g, split) not in at or math.isnan(at[g, split]["exact_match_ci95"])
            else at[g, split]["exact_match_ci95"]
            for g in groups
        ]
        ax.bar(
            xs,
            ys,
            width,
            yerr=err,
            capsize=2,
            label=split.replace("_prompts_test", ""),
            hatch="//" if "reverse" in split else None,
            edgecolor="black",
            linewidth=0.4,
        )
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel("exact match")
    ax.set_ylim(0, 1.05)
    ax.set_title("Forward vs reverse exact match (mean ± 95% CI over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = {"em_png": atomic_savefig(fig, out_dir / "em_by_split.png", dpi=120)}
    plt.close(fig)
    reverse = [r for r in rows if r["split"] == "reverse (mean)"]
    if reverse:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, key, label in (
            (axes[0], "train_tokens", "training tokens (mean per run)"),
            (axes[1], "train_s", "training time, minutes (mean per run)"),
        ):
            for r in reverse:
                err = 0 if math.isnan(r["exact_match_ci95"]) else r["exact_match_ci95"]
                x = r[key] / 60 if key == "train_s" else r[key]
                ax.errorbar(x, r["exact_match_mean"], yerr=err, fmt="o", capsize=3, label=r["group"])
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylim(-0.02, 1.02)
        axes[0].set_ylabel("reverse exact match (mean of reverse splits)")
        fig.suptitle("Reverse accuracy vs training cost")
        axes[1].legend(fontsize=7)
        paths["tokens_png"] = save_figure(fig, out_dir / "reverse_vs_tokens.png", dpi=120)
    return paths


def plot_loss_curves(cells: list, out_dir: Path) -> dict:
    """``loss_curves.png``: one panel per compared objective (a cell group), one line per seed
    (line style) and objective mode (colour, the same in every panel)."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    groups: dict[str, list] = {}
    for cell in cells:
        records = read_metrics(Path(cell.recipe.train.output_dir) / METRICS_LOG)
        if records:
            groups.setdefault(cell.group, []).append((cell.seed, records))
    if not groups:
        return {}
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.8 * columns + 1.6, 3.0 * rows), squeeze=False, layout="constrained"
    )
    colors: dict = {}
    seeds = sorted({seed for runs in groups.values() for seed, _ in runs})
    for ax, (group, runs) in zip(axes.flat, groups.items()):
        for seed, records in runs:
            draw_loss(ax, records, colors, linestyle=SEED_STYLES[seeds.index(seed) % len(SEED_STYLES)], linewidth=1)
        ax.set_title(f"{group} ({len(runs)} seed{'s' if len(runs) > 1 else ''})", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(groups) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("training loss")
    for ax in axes[-1, :]:
        ax.set_xlabel("optimizer step")
    handles = [Line2D([], [], color=c) for c in colors.values()]
    handles += [Line2D([], [], color="gray", linestyle=SEED_STYLES[k % len(SEED_STYLES)]) for k in range(len(seeds))]
    fig.legend(
        handles, [f"mode {m}" for m in colors] + [f"seed {s}" for s in seeds], loc="outside right upper", fontsize=8
    )
    fig.suptitle("Training loss per objective")
    paths = {"loss_png": atomic_savefig(fig, out_dir / "loss_curves.png", dpi=120)}
    plt.close(fig)
    return paths
