"""``bico ablate SPEC.yaml [key=value ...]``: a grid of training runs, evaluated alike, with error bars.

An ablation spec (see ``recipes/ablations/``) names a base training recipe and a grid::

    base: ../demo/smollm2_ntp.yaml       # a training recipe, relative to this file
    overrides: {train.epochs: 3}         # dotted keys applied to every cell
    objectives:                          # one entry per compared objective (label, name, options, overrides)
      - {label: ntp, name: ntp}
      - {label: glm-2d, name: glm, options: {positions: 2d}}
    sweep: {objective.options.mask_ratio: [0.15, 0.3]}   # optional: cartesian product
    seeds: [0, 1, 2]                     # train.seed and model.init_seed of each cell
    splits: [p2d_prompts_test, p2d_reverse_prompts_test]
    generate_data: {facts_per_subset: 10}   # optional: generate reversal data into OUT/data
    output_dir: runs/ablate/NAME

Command-line ``key=value`` overrides go to the base recipe when the key starts with a recipe
section (``train.max_steps=5``) and to the spec otherwise (``seeds=[0]``).

Each cell (objective x sweep x seed) trains, evaluates and writes ``cells/ID/result.json``
atomically; a rerun skips cells whose result exists *and* was made from the same recipe, so a
crash or Ctrl-C never loses finished cells nor reuses a half-written or stale one. Cells run
in this process, in ``--workers N`` CPU processes, or in one process per ``--devices`` entry
(GPUs). Then ``results.csv``, ``results.md``, ``em_by_split.png``, ``reverse_vs_tokens.png`` and
``loss_curves.png`` (:mod:`bico.ablate_plots`).
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bico import resources
from bico.config import ObjectiveConfig, Recipe, RecipeError, load_recipe, parse_overrides
from bico.io_utils import atomic_write, atomic_write_json
from bico.stats import mean_ci, wilson_interval

SPEC_KEYS = ("description", "base", "overrides", "objectives", "sweep", "seeds", "splits", "generate_data", "output_dir")
RECIPE_SECTIONS = ("model", "finetune", "objective", "data", "train", "eval")
METRICS = ("exact_match", "substring_match", "logprob_win_rate")
# Recipe fields that do not change a cell's result (where it ran, whether it drew a bar, whether
# it replaced an unfinished attempt in its folder, where it was watched).
VOLATILE = (("train", "device"), ("train", "progress"), ("train", "overwrite"), ("train", "report_to"))


@dataclass
class Cell:
    key: str  # folder name under cells/
    group: str  # what is compared: objective label (+ sweep values); seeds are aggregated
    seed: int
    recipe: Recipe
    options: dict = field(default_factory=dict)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")


def _kv(key: str, value) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: parse_overrides reads it back exactly


def load_spec(path: str | Path, overrides: list[str] | None = None) -> dict:
    path = resources.find(path)  # recipes/ablations/... works from an installed bico too
    if not path.is_file():
        raise RecipeError(f"ablation spec not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict):
        raise RecipeError(f"{path}: an ablation spec is a mapping ({', '.join(SPEC_KEYS)})")
    spec.setdefault("overrides", {})
    for key, value in parse_overrides(overrides or []):
        if key.split(".")[0] in RECIPE_SECTIONS:
            spec["overrides"][key] = value
        else:
            spec[key] = value
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise RecipeError(f"unknown ablation key(s) {', '.join(unknown)}; valid: {', '.join(SPEC_KEYS)}")
    for key in ("base", "objectives"):
        if not spec.get(key):
            raise RecipeError(f"{path}: the ablation spec needs '{key}'")
    base = Path(spec["base"])
    spec["base"] = str(base if base.is_absolute() else (path.parent / base).resolve())
    spec.setdefault("seeds", [0])
    spec.setdefault("output_dir", f"runs/ablate/{path.stem}")
    return spec


def build_cells(spec: dict) -> list[Cell]:
    """Every (objective, sweep point, seed), as a ready recipe, in grid order."""
    out_dir = Path(spec["output_dir"])
    sweep = spec.get("sweep") or {}
    points = [dict(zip(sweep, combo)) for combo in itertools.product(*sweep.values())] or [{}]
    # A cell without a result is (re)trained from scratch: what an earlier attempt left in its
    # train folder (a crash, Ctrl-C, a changed recipe) is replaced.
    common = [_kv("train.save_model", False), _kv("train.resume", False), _kv("train.overwrite", True)]
    common += [_kv(k, v) for k, v in spec["overrides"].items()]
    if spec.get("generate_data"):
        common.append(_kv("data.dir", str(out_dir / "data")))
    labels, cells = set(), []
    for entry in spec["objectives"]:
        if isinstance(entry, str):
            entry = {"name": entry}
        _check_objective(entry)
        label = str(entry.get("label", entry["name"]))
        if label in labels:
            raise RecipeError(f"two ablation objectives are labelled {label!r}; give each a distinct label")
        labels.add(label)
        own = [_kv(k, v) for k, v in (entry.get("overrides") or {}).items()]
        for point in points:
            group = label + "".join(f" {k.split('.')[-1]}={v}" for k, v in point.items())
            for seed in spec["seeds"]:
                key = f"{_slug(group)}-seed{seed}"
                extra = [_kv(k, v) for k, v in point.items() if not k.startswith("objective.")]
                forced = [_kv("train.seed", seed), _kv("model.init_seed", seed),
                          _kv("train.output_dir", str(out_dir / "cells" / key / "train"))]
                recipe = load_recipe(spec["base"], common + own + extra + forced)
                options = dict(entry.get("options") or {})
                for k, v in point.items():
                    if k.startswith("objective.options."):
                        options[k.removeprefix("objective.options.")] = v
                recipe.objective = ObjectiveConfig(name=entry["name"], options=options)
                if spec.get("splits"):
                    recipe.eval.splits = list(spec["splits"])
                cells.append(Cell(key, group, int(seed), recipe, options))
    return cells


def _check_objective(entry: dict) -> None:
    """Fail before any cell runs: an unknown objective or option would fail every one of its cells."""
    from bico.objectives import REGISTRY, objective_options

    name = entry.get("name")
    if name not in REGISTRY:
        raise RecipeError(f"ablation objective {entry!r}: unknown objective {name!r}; available: {', '.join(sorted(REGISTRY))}")
    unknown = sorted(set(entry.get("options") or {}) - set(objective_options(name)))
    if unknown:
        raise RecipeError(f"ablation objective {entry.get('label', name)!r}: {name!r} has no option(s) "
                          f"{', '.join(unknown)}; its options: {', '.join(objective_options(name))}")


def fingerprint(cell: Cell, spec: dict) -> dict:
    config = cell.recipe.to_dict()
    for section, key in VOLATILE:
        config[section].pop(key, None)
    return {"recipe": config, "generate_data": spec.get("generate_data")}


def load_result(path: Path, expected: dict | None = None) -> dict | None:
    """A finished cell's result, or None if absent, unreadable or made from another recipe."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if expected is not None and _comparable(result.get("fingerprint")) != _comparable(json.loads(json.dumps(expected))):
        return None
    return result


def _comparable(fp):
    """An unset data.identity_bridge (``{}``) equals its absence: cells finished before the key
    existed stay valid."""
    data = ((fp or {}).get("recipe") or {}).get("data")
    if isinstance(data, dict) and not data.get("identity_bridge"):
        data.pop("identity_bridge", None)
    return fp


_DEVICE: str | None = None  # set once per worker process


def _init_worker(devices, threads: int) -> None:
    global _DEVICE
    _DEVICE = devices.get()
    import torch

    torch.set_num_threads(max(1, threads))


def run_cell(job: tuple) -> dict:
    """Train + evaluate one cell and write its result atomically; errors become a result too."""
    cell, folder, expected = job
    folder = Path(folder)
    began = time.time()
    try:
        from bico.pipeline import train_and_evaluate

        recipe = cell.recipe
        if _DEVICE is not None:
            recipe.train.device = _DEVICE
        # cells always train afresh (train.resume=false), and are always evaluated
        outcome = train_and_evaluate(recipe, label=cell.group, evaluate=True, progress=False)
        summary, wall = outcome.result.summary, time.time() - began
        result = {
            "cell": cell.key, "group": cell.group, "seed": cell.seed, "objective": recipe.objective.name,
            "options": cell.options, "splits": outcome.scores["splits"], "retention": outcome.scores.get("retention"),
            "base": outcome.base, "tokens": summary["tokens"],
            "steps": summary["steps"], "final_loss": summary["final_loss"],
            "train_s": round(wall - outcome.eval_s, 2), "eval_s": outcome.eval_s, "wall_s": round(wall, 2),
            "device": summary["device"], "fingerprint": expected,
        }
        atomic_write_json(folder / "result.json", result)
        (folder / "error.txt").unlink(missing_ok=True)
        return result
    except Exception as err:  # a failed cell must not stop the others
        atomic_write(folder / "error.txt", traceback.format_exc())
        return {"cell": cell.key, "group": cell.group, "seed": cell.seed, "error": f"{type(err).__name__}: {err}"}


def run_ablation(spec: dict, *, workers: int = 1, devices: list[str] | None = None, progress: bool = True) -> dict:
    """Run the missing cells, then aggregate; returns ``{"results", "failed", "paths"}``."""
    from tqdm.auto import tqdm

    out_dir = Path(spec["output_dir"])
    if spec.get("generate_data"):
        _ensure_data(out_dir / "data", spec["generate_data"])
    cells = build_cells(spec)
    jobs, done = [], {}
    for cell in cells:
        folder = out_dir / "cells" / cell.key
        expected = fingerprint(cell, spec)
        result = load_result(folder / "result.json", expected)
        if result is None:
            jobs.append((cell, str(folder), expected))
        else:
            done[cell.key] = result
    failed = {}
    bar = tqdm(total=len(cells), initial=len(done), desc="ablate", unit="cell", disable=not progress)

    def finish(result: dict) -> None:
        if "error" in result:
            failed[result["cell"]] = result["error"]
            bar.write(f"FAILED {result['cell']}: {result['error']}")
        else:
            done[result["cell"]] = result
            bar.write(f"done {result['cell']} in {result['wall_s']:.0f}s")
        bar.update(1)

    parallel = bool(devices) or workers > 1
    for job in jobs:
        job[0].recipe.train.progress = False  # one overall bar; per-cell bars would interleave
    if jobs and not parallel:
        for job in jobs:
            finish(run_cell(job))
    elif jobs:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawn also keeps CPU workers clean
        devices = list(devices or ["cpu"] * workers)
        queue = ctx.Queue()
        for d in devices:
            queue.put(d)
        threads = max(1, (os.cpu_count() or 1) // len(devices))
        pool = ctx.Pool(len(devices), initializer=_init_worker, initargs=(queue, threads))
        try:
            for result in pool.imap_unordered(run_cell, jobs):
                finish(result)
            pool.close()
        except BaseException:
            pool.terminate()  # Ctrl-C: finished cells are on disk, running ones left no result
            raise
        finally:
            pool.join()
    bar.close()
    results = [done[c.key] for c in cells if c.key in done]
    paths = write_results(results, cells, out_dir) if results else {}
    return {"results": results, "failed": failed, "paths": paths}


def _ensure_data(folder: Path, params: dict) -> None:
    from bico.data import generate_reversal_dataset

    stamp = folder / "generate_data.json"
    if load_result(stamp) == params and (folder / "facts.jsonl").is_file():
        return
    generate_reversal_dataset(folder, **params)
    atomic_write_json(stamp, params)


# --- aggregation -----------------------------------------------------------------------------

BASE = "base (before finetuning)"


def _base_results(results: list[dict]) -> list[dict]:
    """The base model's evaluation as pseudo-results, one per seed (cells of a seed share it)."""
    by_seed = {}
    for r in results:
        if r.get("base") and r["seed"] not in by_seed:
            by_seed[r["seed"]] = {"group": BASE, "objective": "-", "options": {}, "seed": r["seed"],
                                  "splits": r["base"]["splits"], "retention": r["base"].get("retention"),
                                  "tokens": 0, "wall_s": 0.0, "train_s": 0.0}
    return list(by_seed.values())


def _pooled(runs: list[dict], split: str, metric: str) -> tuple[float, float]:
    """95% Wilson interval of a proportion pooled over seeds (all their prompts as one sample)."""
    if split == "reverse (mean)":
        parts = [m for r in runs for s, m in r["splits"].items() if "reverse" in s]
    else:
        parts = [r["splits"][split] for r in runs if split in r["splits"]]
    n = sum(m["n"] for m in parts)
    return wilson_interval(sum(m[metric] * m["n"] for m in parts), n)


def aggregate(results: list[dict], cells: list[Cell]) -> list[dict]:
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
            row = {"group": group, "objective": mine[0]["objective"], "options": json.dumps(mine[0]["options"]),
                   "split": split, "seeds": len(mine)}
            for metric in METRICS:
                if split == "reverse (mean)":
                    values = [sum(m[metric] for s, m in r["splits"].items() if "reverse" in s)
                              / sum("reverse" in s for s in r["splits"]) for r in mine]
                else:
                    values = [r["splits"][split][metric] for r in mine if split in r["splits"]]
                row[f"{metric}_mean"], row[f"{metric}_ci95"] = mean_ci(values)
                row[f"{metric}_pooled_low"], row[f"{metric}_pooled_high"] = _pooled(mine, split, metric)
            kept = [r["retention"] for r in mine if r.get("retention")]
            row["perplexity"] = round(mean_ci([k["perplexity"] for k in kept])[0], 3) if kept else math.nan
            row["knowledge_exact_match"] = (round(mean_ci([k["knowledge_exact_match"] for k in kept])[0], 4)
                                            if kept else math.nan)
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
    header = (f"Exact match, mean ± 95% CI over {'/'.join(map(str, seeds))} seeds (t interval)."
              if seeds != [1] else "Exact match, one seed (no interval).")
    lines = [header, "",
             "| objective | " + " | ".join(splits) + " | train tokens | wall s |",
             "|---|" + "---:|" * (len(splits) + 2)]
    for g in groups:
        cells = [_pm(at[g, s]["exact_match_mean"], at[g, s]["exact_match_ci95"]) if (g, s) in at else "—" for s in splits]
        first = next(r for r in rows if r["group"] == g)
        lines.append(f"| {g} | " + " | ".join(cells) + f" | {first['train_tokens']:,} | {first['wall_s']:.0f} |")
    lines += ["", "All metrics per split: mean ± 95% t interval over seeds, and [the 95% Wilson interval of "
              "all seeds' prompts pooled] (likelihood win: log p(correct) > log p(randomized); 0.5 = chance).", "",
              "| objective | split | seeds | exact match | substring | likelihood win |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['group']} | {r['split']} | {r['seeds']} | " + " | ".join(
            f"{_pm(r[f'{m}_mean'], r[f'{m}_ci95'])} [{r[f'{m}_pooled_low']:.2f}, {r[f'{m}_pooled_high']:.2f}]"
            for m in METRICS) + " |")
    kept = [r for r in rows if r["split"] == splits[0] and not math.isnan(r["perplexity"])]
    if kept:
        lines += ["", "Retention (mean over seeds): perplexity on the prose sample, exact match on general-knowledge "
                  "completions the base model gets right.", "", "| objective | perplexity | knowledge exact match |",
                  "|---|---:|---:|"]
        lines += [f"| {r['group']} | {r['perplexity']:.2f} | {r['knowledge_exact_match']:.3f} |" for r in kept]
    return "\n".join(lines) + "\n"


def write_results(results: list[dict], cells: list[Cell], out_dir: Path) -> dict:
    # imported here: it imports torch (through bico.rundir), which `bico --help` must not
    from bico.ablate_plots import plot, plot_loss_curves

    rows = aggregate(results, cells)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    paths = {"csv": atomic_write(out_dir / "results.csv", buffer.getvalue()),
             "md": atomic_write(out_dir / "results.md", markdown(rows))}
    paths.update(plot(rows, out_dir))
    finished = {r["cell"] for r in results}
    paths.update(plot_loss_curves([c for c in cells if c.key in finished], out_dir))
    return paths


# --- command line ------------------------------------------------------------------------------

def run_ablate(args) -> int:
    spec = load_spec(args.spec, args.overrides)
    if args.out:
        spec["output_dir"] = args.out
    devices = [d for d in (args.devices or "").split(",") if d]
    if args.list:
        for cell in build_cells(spec):
            print(f"{cell.key}: {cell.recipe.objective.name} {json.dumps(cell.options)}")
        return 0
    outcome = run_ablation(spec, workers=args.workers, devices=devices)
    if outcome["paths"]:
        print(outcome["paths"]["md"].read_text(), end="")
        print("results: " + ", ".join(str(p) for p in outcome["paths"].values()))
    if outcome["failed"]:
        print(f"{len(outcome['failed'])} cell(s) failed (see cells/*/error.txt): {', '.join(outcome['failed'])}")
        return 1
    return 0


def add_ablate_parser(subparsers):
    p = subparsers.add_parser("ablate", help="train and evaluate a grid of objectives x options x seeds")
    p.add_argument("spec", help="ablation spec YAML (see recipes/ablations/)")
    p.add_argument("overrides", nargs="*", help="train.max_steps=5 (base recipe) or seeds=[0,1] (spec)")
    p.add_argument("--workers", type=int, default=1, help="CPU processes running cells in parallel")
    p.add_argument("--devices", default=None, help="one process per device, e.g. cuda:0,cuda:1")
    p.add_argument("--out", default=None, help="output folder (default: the spec's output_dir)")
    p.add_argument("--list", action="store_true", help="print the cells and exit")
    p.set_defaults(handler=run_ablate)
    return p
