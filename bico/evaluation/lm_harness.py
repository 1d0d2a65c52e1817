"""``bico eval --suite lm-eval``: EleutherAI's lm-evaluation-harness on a saved model, beside its base.

The harness (optional dependency: ``pip install 'bico[lm-eval]'``) runs its own tasks — MMLU, ARC,
HellaSwag, ... from the Hugging Face hub, or local YAML tasks found under ``include_path`` — on
models bico loads (:func:`bico.models.load_model`, so presets such as ``tiny-random`` and
``smollm2-135m`` work), with standard causal attention (``sdpa``): the numbers are the harness's,
comparable with those published for it. Every metric the harness reports is kept with its
standard error; for per-example 0/1 metrics (``acc``, ``acc_norm``, ``exact_match``) bico adds the
95% Wilson score interval for the task's n, as in its other reports. The base model (before
finetuning) and the finetuned one are evaluated with the same tasks, shots, limit and seeds and
shown side by side with their difference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bico.errors import BicoError
from bico.io_utils import atomic_write, atomic_write_json

PROPORTION_METRICS = ("acc", "acc_norm", "exact_match")  # a mean of per-example 0/1 scores
BOOTSTRAP_ITERS = 1000  # the harness's bootstrap for metrics without a closed-form stderr (means have one)
INSTALL = "bico eval --suite lm-eval needs lm-eval (EleutherAI's lm-evaluation-harness): pip install 'bico[lm-eval]'"


class HarnessError(BicoError, ValueError):
    """lm-eval is missing, or a task name or task folder is wrong (one line, exit 2)."""


def task_manager(include_path: str | None = None):
    """The harness's task registry, with the YAML tasks under ``include_path`` added."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise HarnessError(INSTALL) from None
    if include_path is not None and not Path(include_path).is_dir():
        raise HarnessError(f"--include-path {include_path}: no such folder (it holds the tasks' YAML files)")
    return TaskManager(include_path=str(include_path) if include_path else None)


def check_tasks(manager, tasks: list[str]) -> None:
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        import difflib

        hints = [
            f"{t!r} (did you mean {', '.join(map(repr, close))}?)"
            if (close := difflib.get_close_matches(t, manager.all_tasks, n=3))
            else repr(t)
            for t in unknown
        ]
        raise HarnessError(
            f"unknown lm-eval task {', '.join(hints)}: see `lm-eval ls tasks`, or pass "
            "--include-path DIR for local YAML tasks"
        )


def evaluate_harness(
    model,
    tokenizer,
    tasks: list[str],
    manager,
    *,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
) -> dict:
    """The harness's results for ``tasks`` on a loaded model: ``{"tasks": {task: {"n", "n_shot",
    "version", "metrics": {metric: {"value", "stderr", "ci95"?, "higher_is_better"}}}}, "lm_eval_version"}``."""
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    raw = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        num_fewshot=num_fewshot,
        limit=limit,
        bootstrap_iters=BOOTSTRAP_ITERS,
        log_samples=False,
        verbosity="WARNING",
    )
    return {
        "tasks": {name: _task_scores(name, metrics, raw) for name, metrics in raw["results"].items()},
        "lm_eval_version": raw.get("lm_eval_version"),
    }


def _task_scores(name: str, metrics: dict, raw: dict) -> dict:
    from bico.evaluation.stats import wilson_interval

    n = (raw.get("n-samples", {}).get(name) or {}).get("effective") or metrics.get("sample_len")
    better = raw.get("higher_is_better", {}).get(name, {})
    scores = {}
    for key, value in metrics.items():
        metric, _, filt = key.partition(",")
        if not filt or "_stderr" in metric or not isinstance(value, (int, float)):
            continue  # alias, name, sample_len, and the stderr entries (read below)
        label = metric if filt == "none" else f"{metric} ({filt})"
        stderr = metrics.get(f"{metric}_stderr,{filt}")
        entry = {
            "value": float(value),
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            "higher_is_better": better.get(metric),
        }
        if metric in PROPORTION_METRICS and n:
            entry["ci95"] = list(wilson_interval(round(value * n), int(n)))
        scores[label] = entry
    return {
        "n": n,
        "n_shot": raw.get("n-shot", {}).get(name),
        "version": raw.get("versions", {}).get(name),
        "metrics": scores,
    }


def harness_table(runs: dict[str, dict], settings: dict) -> str:
    """One row per (task, metric); one column per run (base first), then each run's difference from
    the first (``Δ``)."""
    labels = list(runs)
    lines = [
        f"lm-evaluation-harness {settings.get('lm_eval_version') or '?'}; shots: "
        f"{settings.get('num_fewshot', 'task default')}; "
        + (f"first {settings['limit']} examples per task" if settings.get("limit") else "every example")
        + ". Values ± the harness's standard error; [95% Wilson interval] for 0/1 metrics.",
        "",
        "| task | metric | n | " + " | ".join(labels) + "".join(f" | Δ {label}" for label in labels[1:]) + " |",
        "|---|---|---:|" + "---:|" * (2 * len(labels) - 1),
    ]
    first = runs[labels[0]]["tasks"]
    for task in dict.fromkeys(t for r in runs.values() for t in r["tasks"]):
        metrics = dict.fromkeys(m for r in runs.values() for m in r["tasks"].get(task, {}).get("metrics", {}))
        for metric in metrics:
            cells = [_cell(r["tasks"].get(task, {}).get("metrics", {}).get(metric)) for r in runs.values()]
            base = first.get(task, {}).get("metrics", {}).get(metric)
            deltas = []
            for label in labels[1:]:
                other = runs[label]["tasks"].get(task, {}).get("metrics", {}).get(metric)
                deltas.append(f"{other['value'] - base['value']:+.3f}" if base and other else "—")
            n = next((r["tasks"][task]["n"] for r in runs.values() if task in r["tasks"]), None)
            lines.append(f"| {task} | {metric} | {n if n is not None else '—'} | " + " | ".join(cells + deltas) + " |")
    return "\n".join(lines) + "\n"


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "—"
    text = f"{entry['value']:.3f}"
    if entry.get("stderr") is not None and math.isfinite(entry["stderr"]):
        text += f" ± {entry['stderr']:.3f}"
    if entry.get("ci95") and not math.isnan(entry["ci95"][0]):
        text += f" [{entry['ci95'][0]:.2f}, {entry['ci95'][1]:.2f}]"
    return text


def write_report(runs: dict[str, dict], folder: str | Path, settings: dict, stem: str = "lm_eval") -> dict:
    """``stem.json`` (settings + each run's scores) and ``stem.md`` in ``folder``, written atomically."""
    folder = Path(folder)
    atomic_write_json(folder / f"{stem}.json", {"settings": settings, "runs": runs})
    atomic_write(folder / f"{stem}.md", harness_table(runs, settings))
    return {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md"}


def base_model_of(model_path: str) -> dict | None:
    """The ``model`` section of the recipe that trained ``model_path`` (a run's ``model/`` folder, its
    ``recipe.json`` beside it: the base model's name, and for ``tiny-random`` its sizes and seed), or
    None when the folder is not a bico run's."""
    recipe = Path(model_path).parent / "recipe.json"
    if not (Path(model_path).is_dir() and recipe.is_file()):
        return None
    try:
        section = json.loads(recipe.read_text()).get("model")
    except (ValueError, AttributeError):
        raise HarnessError(f"{recipe}: not a bico recipe.json (pass --base PATH, or --base none)") from None
    if not isinstance(section, dict) or "name" not in section:
        raise HarnessError(f"{recipe}: has no model section (pass --base PATH, or --base none)")
    from dataclasses import fields

    from bico.config import ModelConfig

    known = {f.name for f in fields(ModelConfig)}
    return {k: v for k, v in section.items() if k in known and k != "dtype"}  # both models in float32
