"""``bico eval``: the reversal-curse splits (:mod:`bico.evaluation.reversal`), the celebrity suite or
lm-evaluation-harness tasks on a saved model, optionally along a weight interpolation."""

from __future__ import annotations

import argparse
from pathlib import Path

from bico.config import EvalConfig
from bico.errors import UsageError
from bico.paths import SHARED_DATA


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="reversal-curse evaluation of a saved model folder")
    p.add_argument("--model", required=True, help="model folder (e.g. runs/x/model), or a preset")
    p.add_argument(
        "--suite",
        choices=("berglund", "celebrity", "lm-eval"),
        default="berglund",
        help="berglund: the fictitious-facts splits (--data, --splits); celebrity: real parent/child "
        "pairs in both directions (--pairs); lm-eval: EleutherAI's lm-evaluation-harness tasks "
        "(--tasks), the model beside its base (pip install 'bico[lm-eval]')",
    )
    p.add_argument(
        "--pairs",
        default=None,
        help="celebrity suite: parent_child_pairs.csv (default: ../shared/data/reversal_curse/celebrity_relations/)",
    )
    p.add_argument("--data", default=None, help="Berglund-format data folder")
    p.add_argument(
        "--splits", nargs="*", help="split names (file stems) or .jsonl files (default: eval.splits' default)"
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        help="lm-eval: task names, e.g. mmlu arc_easy hellaswag (or "
        "comma-separated); local YAML tasks need --include-path",
    )
    p.add_argument("--include-path", default=None, help="lm-eval: folder of task YAML files (local tasks)")
    p.add_argument(
        "--base",
        default=None,
        help="lm-eval: the model before finetuning (default: the run's recipe.json "
        "model when --model is a run's model/ folder; 'none': no base)",
    )
    p.add_argument("--num-fewshot", type=int, default=None, help="lm-eval: shots (default: each task's own)")
    p.add_argument("--device", default=None, help="lm-eval: cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument(
        "--out", default="runs/eval", help="folder for eval.json/.md/.png (celebrity.json/.md/.png; lm_eval.json/.md)"
    )
    p.add_argument("--label", default=None)
    defaults = EvalConfig()
    p.add_argument("--limit", type=int, default=defaults.limit, help="first N rows per split (celebrity: pairs)")
    p.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument(
        "--generation-margin",
        type=int,
        default=defaults.generation_margin,
        help="generate at most the target's length + this many tokens (default: --max-new-tokens)",
    )
    p.add_argument(
        "--retention",
        action="store_true",
        help="also perplexity on a prose sample and general-knowledge exact match (what finetuning cost)",
    )
    p.add_argument(
        "--interpolate",
        default=None,
        metavar="BASE",
        help="also evaluate the weights alpha*model + (1-alpha)*BASE for each --alphas (WiSE-FT): BASE is "
        "the model --model was finetuned from (a folder or preset, e.g. smollm2-135m)",
    )
    p.add_argument(
        "--alphas",
        default="0,0.25,0.5,0.75,1",
        help="with --interpolate: alphas in [0, 1], comma-separated (1 = --model, 0 = BASE)",
    )
    return p


# `bico eval` options and the recipe keys they set: one set of defaults and range checks
EVAL_OPTIONS = {
    "max_new_tokens": "--max-new-tokens",
    "batch_size": "--batch-size",
    "limit": "--limit",
    "generation_margin": "--generation-margin",
}


def run(args) -> int:
    """The recipe's evaluation (its defaults, checks and code) on a saved model, or the celebrity suite."""
    from bico.config import DataConfig, ModelConfig, Recipe, check_ranges

    values = {key: getattr(args, key) for key in EVAL_OPTIONS}
    check_ranges({f"eval.{k}": v for k, v in values.items()}, {f"eval.{k}": o for k, o in EVAL_OPTIONS.items()})
    if args.suite == "celebrity":
        return run_celebrity(args)
    if args.suite == "lm-eval":
        return run_lm_eval(args)
    for option in ("tasks", "include_path", "base", "num_fewshot", "device"):
        if getattr(args, option) is not None:
            raise UsageError(f"bico eval: --{option.replace('_', '-')} is for --suite lm-eval")
    ev = EvalConfig(**values, retention=args.retention)
    ev.splits = list(args.splits or ev.splits)
    from bico.evaluation.reversal import evaluate_recipe, write_report
    from bico.models import load_model

    recipe = Recipe(data=DataConfig(dir=args.data), eval=ev)
    from bico.evaluation.interpolate import parse_alphas

    alphas = parse_alphas(args.alphas) if args.interpolate else None
    model, tokenizer = load_model(ModelConfig(name=args.model))
    if alphas:
        from bico.evaluation.interpolate import evaluate_interpolations, plot_frontier

        base_model, _ = load_model(ModelConfig(name=args.interpolate))
        runs = evaluate_interpolations(model, base_model, tokenizer, recipe, alphas, say=print)
        paths = write_report(runs, args.out)
        plot_frontier(runs, Path(args.out) / "frontier.png")
    else:
        scores = evaluate_recipe(model, tokenizer, recipe)
        paths = write_report({args.label or Path(args.model).name: scores}, args.out)
    print(paths["md"].read_text(), end="")
    return 0


def run_celebrity(args) -> int:
    from bico.config import ModelConfig
    from bico.evaluation.celebrity import DEFAULT_CSV, evaluate_celebrity, load_pairs, write_report
    from bico.models import load_model

    pairs = load_pairs(args.pairs or Path.cwd() / SHARED_DATA / DEFAULT_CSV, limit=args.limit)
    model, tokenizer = load_model(ModelConfig(name=args.model))
    result = evaluate_celebrity(model, tokenizer, pairs, batch_size=args.batch_size)
    paths = write_report(result, args.out, args.label or Path(args.model).name)
    print(paths["md"].read_text(), end="")
    return 0


def run_lm_eval(args) -> int:
    """EleutherAI's lm-evaluation-harness on the model and its base, side by side (bico.evaluation.lm_harness)."""
    if not args.tasks:
        raise UsageError("bico eval --suite lm-eval: --tasks is required (e.g. --tasks arc_easy hellaswag)")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UsageError(f"bico eval: --num-fewshot must be >= 0, got {args.num_fewshot}")
    tasks = [t for chunk in args.tasks for t in chunk.split(",") if t]
    from bico.evaluation.lm_harness import base_model_of, check_tasks, task_manager

    manager = task_manager(args.include_path)  # lm-eval missing, a bad folder or task: before any model loads
    check_tasks(manager, tasks)
    from bico.config import ModelConfig
    from bico.evaluation.lm_harness import evaluate_harness, write_report
    from bico.models import load_model

    models = {}  # label -> ModelConfig, the base first
    if args.base is None:
        section = base_model_of(args.model)
        if section is not None:
            models["base"] = ModelConfig(**{**section, "attn_implementation": "sdpa"})
    elif args.base != "none":
        models["base"] = ModelConfig(name=args.base, attn_implementation="sdpa")
    models[args.label or Path(args.model).name] = ModelConfig(name=args.model, attn_implementation="sdpa")
    if "base" not in models:
        print(f"bico eval: no base model ({args.model} is not a bico run's model/ folder; pass --base PATH)")
    runs = {}
    for label, cfg in models.items():
        model, tokenizer = load_model(cfg)
        runs[label] = evaluate_harness(
            model,
            tokenizer,
            tasks,
            manager,
            num_fewshot=args.num_fewshot,
            limit=args.limit,
            batch_size=args.batch_size,
            device=args.device,
        )
        del model
    settings = {
        "tasks": tasks,
        "num_fewshot": "task default" if args.num_fewshot is None else args.num_fewshot,
        "limit": args.limit,
        "models": {label: cfg.name for label, cfg in models.items()},
        "lm_eval_version": next(iter(runs.values()))["lm_eval_version"],
    }
    paths = write_report(runs, args.out, settings)
    print(paths["md"].read_text(), end="")
    return 0
