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
``loss_curves.png`` (:mod:`bico.tools.ablate_plots`).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bico import resources
from bico.config import ObjectiveConfig, Recipe, RecipeError, load_recipe, parse_overrides, read_yaml_file
from bico.io_utils import atomic_write, atomic_write_json
from bico.machine import machine_info

SPEC_KEYS = (
    "description",
    "base",
    "overrides",
    "objectives",
    "sweep",
    "seeds",
    "splits",
    "generate_data",
    "output_dir",
)
RECIPE_SECTIONS = ("model", "finetune", "objective", "data", "train", "eval", "replay")
# Recipe fields that do not change a cell's result (where it ran, whether it drew a bar, whether
# it replaced an unfinished attempt in its folder, where it was watched).
VOLATILE = (("train", "device"), ("train", "progress"), ("train", "overwrite"), ("train", "report_to"))
logger = logging.getLogger(__name__)


@dataclass
class Cell:
    key: str  # folder name under cells/
    group: str  # what is compared: objective label (+ sweep values); seeds are aggregated
    seed: int
    recipe: Recipe
    options: dict = field(default_factory=dict)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")


def _folder_name(text: str) -> str:
    """``text`` as a folder name: itself if it is one already, else its slug and a short hash of
    ``text``, so that labels the slug would merge ("a b", "a_b") keep folders of their own."""
    slug = _slug(text)
    return slug if slug == text else f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _kv(key: str, value) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: parse_overrides reads it back exactly


def load_spec(path: str | Path, overrides: list[str] | None = None) -> dict:
    path = resources.find(path)  # recipes/ablations/... works from an installed bico too
    if not path.is_file():
        raise RecipeError(f"ablation spec not found: {path}")
    spec = read_yaml_file(path) or {}
    if not isinstance(spec, dict):
        raise RecipeError(f"{path}: an ablation spec is a mapping ({', '.join(SPEC_KEYS)})")
    spec.setdefault("overrides", {})
    _check_spec_types(spec, path)  # the file's own values, before command-line overrides go in
    for key, value in parse_overrides(overrides or []):
        if key.split(".")[0] in RECIPE_SECTIONS:
            spec["overrides"][key] = value
        else:
            spec[key] = value
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise RecipeError(f"unknown ablation key(s) {', '.join(unknown)}; valid: {', '.join(SPEC_KEYS)}")
    _check_spec_types(spec, path)  # and with them
    for key in ("base", "objectives"):
        if not spec.get(key):
            raise RecipeError(f"{path}: the ablation spec needs '{key}'")
    base = Path(spec["base"])
    spec["base"] = str(base if base.is_absolute() else (path.parent / base).resolve())
    spec.setdefault("seeds", [0])
    spec.setdefault("output_dir", f"runs/ablate/{path.stem}")
    spec["output_dir"] = str(Path(spec["output_dir"]).expanduser())
    _check_grid(spec, path)
    return spec


def _check_grid(spec: dict, path: Path) -> None:
    """Before any cell runs: a grid without cells, or with a cell twice, is a mistake in the spec
    (an empty list would once drop its axis, a repeated seed count one run twice)."""
    seeds = spec["seeds"]
    if not (
        isinstance(seeds, list)
        and seeds
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise RecipeError(
            f"{path}: 'seeds' must be a non-empty list of whole numbers >= 0 (e.g. seeds: [0, 1, 2]), got {seeds!r}"
        )
    sweep = spec.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise RecipeError(
            f"{path}: 'sweep' must map recipe keys to lists of values "
            f"(e.g. sweep: {{objective.options.mask_ratio: [0.15, 0.3]}}), got {sweep!r}"
        )
    axes = {"seeds": seeds, **{f"sweep {key!r}": values for key, values in sweep.items()}}
    for name, values in axes.items():
        if not isinstance(values, list) or not values:
            raise RecipeError(f"{path}: {name} must be a non-empty list of values, got {values!r}")
        written = [json.dumps(v, sort_keys=True) for v in values]
        repeated = next((v for k, v in enumerate(written) if v in written[:k]), None)
        if repeated is not None:
            raise RecipeError(f"{path}: {name} lists {repeated} twice; list each value once")


# What each spec key holds, as (test, what the test requires); a wrong kind would fail later with a
# traceback (iterating the letters of `objectives: ntp`, `seeds: 0` not iterable)
_SPEC_TYPES = {
    "base": (lambda v: isinstance(v, str), "a recipe file name"),
    "overrides": (lambda v: isinstance(v, dict), "a mapping of recipe keys, e.g. {train.epochs: 3}"),
    "objectives": (
        lambda v: isinstance(v, list) and all(isinstance(e, (str, dict)) for e in v),
        "a list of objective names or {label, name, options} mappings",
    ),
    "sweep": (
        lambda v: v is None or (isinstance(v, dict) and all(isinstance(x, list) for x in v.values())),
        "a mapping of recipe keys to lists of values",
    ),
    "seeds": (
        lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
        "a list of whole numbers, e.g. [0, 1, 2]",
    ),
    "splits": (
        lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
        "a list of split names",
    ),
    "generate_data": (lambda v: v is None or isinstance(v, dict), "a mapping of generator settings"),
    "output_dir": (lambda v: isinstance(v, str), "a folder name"),
}


def _check_spec_types(spec: dict, path: Path) -> None:
    for key, (ok, requirement) in _SPEC_TYPES.items():
        if key in spec and not ok(spec[key]):
            raise RecipeError(f"{path}: ablation key {key!r} must be {requirement}, got {spec[key]!r}")
    for entry in spec.get("objectives") or []:
        if isinstance(entry, dict) and not isinstance(entry.get("name"), str):
            raise RecipeError(f"{path}: ablation objective {entry!r} needs a 'name' (an objective name)")


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
        if not label.strip():
            raise RecipeError(f"ablation objective {entry!r}: its label is empty; give it a name")
        if label in labels:
            raise RecipeError(f"two ablation objectives are labelled {label!r}; give each a distinct label")
        labels.add(label)
        own = [_kv(k, v) for k, v in (entry.get("overrides") or {}).items()]
        for point in points:
            parts = [label, *(f"{k.split('.')[-1]}={v}" for k, v in point.items())]
            group, name = " ".join(parts), "_".join(_folder_name(part) for part in parts)
            for seed in spec["seeds"]:
                key = f"{name}-seed{seed}"
                extra = [_kv(k, v) for k, v in point.items() if not k.startswith("objective.")]
                forced = [
                    _kv("train.seed", seed),
                    _kv("model.init_seed", seed),
                    _kv("train.output_dir", str(out_dir / "cells" / key / "train")),
                ]
                recipe = load_recipe(spec["base"], common + own + extra + forced)
                options = dict(entry.get("options") or {})
                for k, v in point.items():
                    if k.startswith("objective.options."):
                        options[k.removeprefix("objective.options.")] = v
                recipe.objective = ObjectiveConfig(name=entry["name"], options=options)
                if spec.get("splits"):
                    recipe.eval.splits = list(spec["splits"])
                cells.append(Cell(key, group, int(seed), recipe, options))
    _check_distinct(cells)
    return cells


def _check_distinct(cells: list[Cell]) -> None:
    """Two cells in one folder would overwrite each other's results, two in one group be averaged
    as seeds of one objective; the names are built to differ, this makes sure they do."""
    for what, names in (("folder", [c.key for c in cells]), ("group", [(c.group, c.seed) for c in cells])):
        for k, name in enumerate(names):
            if name in names[:k]:
                other = cells[names.index(name)]
                raise RecipeError(
                    f"ablation cells {other.group!r} and {cells[k].group!r} (seed {cells[k].seed}) "
                    f"share one {what}; rename one objective's label"
                )


def _check_objective(entry: dict) -> None:
    """Fail before any cell runs: an unknown objective or option would fail every one of its cells."""
    from bico.objectives import REGISTRY, objective_options

    name = entry.get("name")
    if name not in REGISTRY:
        raise RecipeError(
            f"ablation objective {entry!r}: unknown objective {name!r}; available: {', '.join(sorted(REGISTRY))}"
        )
    unknown = sorted(set(entry.get("options") or {}) - set(objective_options(name)))
    if unknown:
        raise RecipeError(
            f"ablation objective {entry.get('label', name)!r}: {name!r} has no option(s) "
            f"{', '.join(unknown)}; its options: {', '.join(objective_options(name))}"
        )


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
    """A fingerprint without the keys that hold their default: a cell finished before a key (or a
    section, such as ``replay``) existed stays valid, since a new key's default keeps the old
    behaviour."""
    from bico.config import Recipe, canonical_recipe_dict

    recipe = (fp or {}).get("recipe")
    if isinstance(recipe, dict):
        canonical_recipe_dict(recipe)  # cells saved as model.dtype: float32 equal fp32 ones
        defaults = json.loads(json.dumps(Recipe().to_dict()))
        for section in list(recipe):
            values, default = recipe[section], defaults.get(section)
            if isinstance(values, dict) and isinstance(default, dict):
                for key in [k for k, v in values.items() if k in default and v == default[k]]:
                    values.pop(key)
                if not values:
                    recipe.pop(section)
    return fp


_DEVICE: str | None = None  # set once per worker process
_IN_WORKER = False


def _init_worker(devices, threads: int, parent_pid: int) -> None:
    global _DEVICE, _IN_WORKER
    import signal

    from bico.termination import end_with_parent

    _IN_WORKER = True
    end_with_parent(parent_pid)  # a parent killed (even by SIGKILL) ends its workers: SIGTERM, see below
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which sends its workers SIGTERM
    _DEVICE = devices.get()
    import torch

    torch.set_num_threads(max(1, threads))


def run_cell(job: tuple) -> dict:
    """Train + evaluate one cell and write its result atomically; errors become a result too.

    SIGTERM (in a worker: its parent's, forwarded, or its parent's death) stops the cell as it
    stops ``bico train``: at a step boundary, with a checkpoint that the next ``bico ablate``
    resumes from; a worker then ends, quietly but for that line."""
    import signal

    from bico.termination import Stopped, Terminated, raise_on_signals

    if _IN_WORKER:
        raise_on_signals()  # only while a cell runs: an idle worker just ends
    try:
        return _run_cell(*job)
    except Stopped as stop:
        stop.hint = "run the same bico ablate command again to go on from it"
        if not _IN_WORKER:
            raise
        print(f"bico: cell {job[0].key}: {stop}", file=sys.stderr, flush=True)
        sys.exit(stop.exit_status)
    except Terminated as stop:
        if not _IN_WORKER:
            raise
        sys.exit(stop.exit_status)
    finally:
        if _IN_WORKER:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _train_cell(cell: Cell):
    """A cell's training and evaluation: afresh, or on from the checkpoint of an earlier attempt
    that was stopped (SIGTERM) where that checkpoint fits (same recipe and data, intact)."""
    from bico.tools.pipeline import train_and_evaluate
    from bico.training.checkpoints import latest_checkpoint
    from bico.training.rundir import RunDirError

    recipe = cell.recipe
    if _DEVICE is not None:
        recipe.train.device = _DEVICE
    if latest_checkpoint(recipe.train.output_dir) is not None:
        resumed = copy.deepcopy(recipe)
        resumed.train.resume, resumed.train.overwrite = True, False
        try:
            return train_and_evaluate(resumed, label=cell.group, evaluate=True, progress=False)
        except (RunDirError, RecipeError) as err:  # another recipe's, or no model to evaluate: afresh
            logger.info("cell %s: not resuming its checkpoint (%s); training it afresh", cell.key, err)
    return train_and_evaluate(recipe, label=cell.group, evaluate=True, progress=False)


def _run_cell(cell: Cell, folder: str, expected: dict) -> dict:
    folder = Path(folder)
    began = time.time()
    try:
        recipe = cell.recipe
        outcome = _train_cell(cell)
        summary, wall = outcome.result.summary, time.time() - began
        result = {
            "cell": cell.key,
            "group": cell.group,
            "seed": cell.seed,
            "objective": recipe.objective.name,
            "options": cell.options,
            "splits": outcome.scores["splits"],
            "retention": outcome.scores.get("retention"),
            "base": outcome.base,
            "tokens": summary["tokens"],
            "steps": summary["steps"],
            "final_loss": summary["final_loss"],
            "train_s": round(wall - outcome.eval_s, 2),
            "eval_s": outcome.eval_s,
            "wall_s": round(wall, 2),
            "device": summary["device"],
            "machine": machine_info(),
            "fingerprint": expected,
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
    cells = build_cells(spec)  # a bad grid fails before data is generated
    if spec.get("generate_data"):
        _ensure_data(out_dir / "data", spec["generate_data"])
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
        pool = ctx.Pool(len(devices), initializer=_init_worker, initargs=(queue, threads, os.getpid()))
        try:
            for result in pool.imap_unordered(run_cell, jobs):
                finish(result)
            pool.close()
        except BaseException:
            # Ctrl-C, SIGTERM: each worker gets SIGTERM and stops its cell at a step boundary with a
            # checkpoint (waited for); finished cells are on disk, running ones left no result
            pool.terminate()
            raise
        finally:
            pool.join()
    bar.close()
    results = [done[c.key] for c in cells if c.key in done]
    from bico.tools.ablate_report import write_results

    paths = write_results(results, cells, out_dir) if results else {}
    return {"results": results, "failed": failed, "paths": paths}


def _ensure_data(folder: Path, params: dict) -> None:
    from bico.data import generate_reversal_dataset

    stamp = folder / "generate_data.json"
    if load_result(stamp) == params and (folder / "facts.jsonl").is_file():
        return
    generate_reversal_dataset(folder, **params)
    atomic_write_json(stamp, params)
