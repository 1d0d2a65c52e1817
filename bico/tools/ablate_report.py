"""``bico ablate``'s tables: per (objective, split) the mean over seeds with its 95% t interval,
the Wilson interval of all seeds' prompts pooled, retention, tokens and times, with the base model
(before finetuning) as the first row; written as ``results.csv`` and ``results.md`` next to the
plots of :mod:`bico.tools.ablate_plots`."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from bico.evaluation.stats import mean_ci, wilson_interval
from bico.io_utils import atomic_write
from bico.tools.ablate_plots import plot_grid, plot_loss_curves  # matplotlib loads only when they plot

METRICS = ("exact_match", "substring_match", "logprob_win_rate")

BASE = "base (before finetuning)"


def _base_results(results: list[dict]) -> list[dict]:
    """The base model's evaluation as pseudo-results, one per seed (cells of a seed share it)."""
    by_seed = {}
    for r in results:
        if r.get("base") and r["seed"] not in by_seed:
            by_seed[r["seed"]] = {
                "group": BASE,
                "objective": "-",
                "options": {},
                "seed": r["seed"],
                "splits": r["base"]["splits"],
                "retention": r["base"].get("retention"),
                "tokens": 0,
                "wall_s": 0.0,
                "train_s": 0.0,
            }
    return list(by_seed.values())


def _pooled(runs: list[dict], split: str, metric: str) -> tuple[float, float]:
    """95% Wilson interval of a proportion pooled over seeds (all their prompts as one sample)."""
    if split == "reverse (mean)":
        parts = [m for r in runs for s, m in r["splits"].items() if "reverse" in s]
    else:
        parts = [r["splits"][split] for r in runs if split in r["splits"]]
    n = sum(m["n"] for m in parts)
    return wilson_interval(sum(m[metric] * m["n"] for m in parts), n)


def aggregate(results: list[dict], cells: list) -> list[dict]:
    """One row per (group, split): mean and 95% t interval over seeds, the Wilson interval of the
    pooled prompts, retention, tokens and times; the base model first where it was evaluated."""
    groups = list(dict.fromkeys(c.group for c in cells))
    base = _base_results(results)
    results = base + results
    groups = [BASE] * bool(base) + groups
    rows = []
    for group in groups:
        mine = [r for r in results if r["group"] == group]
        if not mine:
            continue
        splits = list(dict.fromkeys(s for r in mine for s in r["splits"]))
        for split in splits + ["reverse (mean)"] * any("reverse" in s for s in splits):
            row = {
                "group": group,
                "objective": mine[0]["objective"],
                "options": json.dumps(mine[0]["options"]),
                "split": split,
                "seeds": len(mine),
            }
            for metric in METRICS:
                if split == "reverse (mean)":
                    values = [
                        sum(m[metric] for s, m in r["splits"].items() if "reverse" in s)
                        / sum("reverse" in s for s in r["splits"])
                        for r in mine
                    ]
                else:
                    values = [r["splits"][split][metric] for r in mine if split in r["splits"]]
                row[f"{metric}_mean"], row[f"{metric}_ci95"] = mean_ci(values)
                row[f"{metric}_pooled_low"], row[f"{metric}_pooled_high"] = _pooled(mine, split, metric)
            kept = [r["retention"] for r in mine if r.get("retention")]
            row["perplexity"] = round(mean_ci([k["perplexity"] for k in kept])[0], 3) if kept else math.nan
            row["knowledge_exact_match"] = (
                round(mean_ci([k["knowledge_exact_match"] for k in kept])[0], 4) if kept else math.nan
            )
            row["train_tokens"] = round(mean_ci([r["tokens"] for r in mine])[0])
            row["wall_s"] = round(mean_ci([r["wall_s"] for r in mine])[0], 1)
            row["train_s"] = round(mean_ci([r["train_s"] for r in mine])[0], 1)
            rows.append(row)
    return rows


def _pm(mean: float, ci: float) -> str:
    return f"{mean:.3f}" if math.isnan(ci) else f"{mean:.3f} ± {ci:.3f}"


def markdown(rows: list[dict]) -> str:
    splits = list(dict.fromkeys(r["split"] for r in rows))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    at = {(r["group"], r["split"]): r for r in rows}
    seeds = sorted({r["seeds"] for r in rows})
    header = (
        f"Exact match, mean ± 95% CI over {'/'.join(map(str, seeds))} seeds (t interval)."
        if seeds != [1]
        else "Exact match, one seed (no interval)."
    )
    lines = [
        header,
        "",
        "| objective | " + " | ".join(splits) + " | train tokens | wall s |",
        "|---|" + "---:|" * (len(splits) + 2),
    ]
    for g in groups:
        cells = [
            _pm(at[g, s]["exact_match_mean"], at[g, s]["exact_match_ci95"]) if (g, s) in at else "—" for s in splits
        ]
        first = next(r for r in rows if r["group"] == g)
        lines.append(f"| {g} | " + " | ".join(cells) + f" | {first['train_tokens']:,} | {first['wall_s']:.0f} |")
    lines += [
        "",
        "All metrics per split: mean ± 95% t interval over seeds, and [the 95% Wilson interval of "
        "all seeds' prompts pooled] (likelihood win: log p(correct) > log p(randomized); 0.5 = chance).",
        "",
        "| objective | split | seeds | exact match | substring | likelihood win |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group']} | {r['split']} | {r['seeds']} | "
            + " | ".join(
                f"{_pm(r[f'{m}_mean'], r[f'{m}_ci95'])} [{r[f'{m}_pooled_low']:.2f}, {r[f'{m}_pooled_high']:.2f}]"
                for m in METRICS
            )
            + " |"
        )
    kept = [r for r in rows if r["split"] == splits[0] and not math.isnan(r["perplexity"])]
    if kept:
        lines += [
            "",
            "Retention (mean over seeds): perplexity on the prose sample, exact match on general-knowledge "
            "completions the base model gets right.",
            "",
            "| objective | perplexity | knowledge exact match |",
            "|---|---:|---:|",
        ]
        lines += [f"| {r['group']} | {r['perplexity']:.2f} | {r['knowledge_exact_match']:.3f} |" for r in kept]
    return "\n".join(lines) + "\n"


def write_results(results: list[dict], cells: list, out_dir: Path) -> dict:
    rows = aggregate(results, cells)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    paths = {
        "csv": atomic_write(out_dir / "results.csv", buffer.getvalue()),
        "md": atomic_write(out_dir / "results.md", markdown(rows)),
    }
    paths.update(plot_grid(rows, out_dir))
    finished = {r["cell"] for r in results}
    paths.update(plot_loss_curves([c for c in cells if c.key in finished], out_dir))
    return paths
