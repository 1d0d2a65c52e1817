"""``bico train RECIPE [key=value ...]``: finetune a model from a YAML recipe, then evaluate it."""

from __future__ import annotations

import argparse

from bico.config import load_recipe


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="finetune a model from a YAML recipe, then evaluate it")
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 objective.name=bico")
    return p


def run(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)  # before torch loads: a bad recipe fails at once
    from bico.tools.pipeline import train_and_evaluate
    from bico.training import distributed

    outcome = train_and_evaluate(recipe, say=print)
    distributed.teardown()  # every rank gets here; a failing one exits with its error instead
    if outcome.report:
        print(outcome.report["md"].read_text(), end="")
    return 0
