"""Train, then evaluate: the one sequence behind ``bico train``, ``bico demo`` and ``bico ablate``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bico.config import ModelConfig, Recipe, RecipeError
from bico.training.train import TrainResult, train


@dataclass
class Outcome:
    """A training run and, where it was evaluated, its scores (:func:`bico.evaluation.reversal.evaluate`'s
    output), the seconds the evaluation and its report took, and the report's paths."""

    result: TrainResult
    scores: dict | None = None
    eval_s: float = 0.0
    report: dict | None = None
    base: dict | None = None  # the model before finetuning, same evaluation (eval.base)


def train_and_evaluate(
    recipe: Recipe, *, label: str | None = None, evaluate: bool | None = None, progress: bool | None = None, say=None
) -> Outcome:
    """Train as the recipe says, then (on rank 0) evaluate the trained model with the recipe's
    ``eval`` settings and write ``eval.json/.md/.png`` into ``train.output_dir``.

    ``evaluate`` defaults to ``eval.enabled``; ``label`` names the run in the report (default: the
    objective). A resumed run that had already finished is not evaluated again, unless it was
    killed while evaluating: then its saved model is (as the finished run would have been).
    ``say(line)`` (e.g. ``print``) is told what happened as soon as training ends.
    """
    from bico.evaluation.reversal import base_scores, evaluate_recipe, write_report
    from bico.training.distributed import is_main_process
    from bico.training.report import report_eval
    from bico.training.rundir import EVAL_FILES

    result = train(recipe)
    evaluate = recipe.eval.enabled if evaluate is None else evaluate
    out, summary = Path(recipe.train.output_dir), result.summary
    main = is_main_process()  # rank 0 alone evaluates (after ZeRO-3 it holds the gathered model)
    say = say if main else None
    model, tokenizer = result.model, result.tokenizer
    if result.status == "finished" and say:
        say(
            f"trained {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
            f"{summary['tokens_per_s']} tokens/s -> {out}"
        )
    if result.status == "already_finished" and main:
        if not evaluate or all((out / name).is_file() for name in EVAL_FILES):
            if say:
                say(
                    f"the run in {out} is finished ({summary['steps']} steps); nothing to do "
                    "(raise train.max_steps or train.epochs to train it further)"
                )
            return Outcome(result)
        if not (out / "model").is_dir():
            raise RecipeError(
                f"the run in {out} is finished but not evaluated, and has no saved model to evaluate "
                "(train.save_model=false); train it again with train.overwrite=true"
            )
        if say:
            say(f"the run in {out} is finished ({summary['steps']} steps) but not evaluated; evaluating its model")
        from bico.models import load_model

        model, tokenizer = load_model(
            ModelConfig(name=str(out / "model"), attn_implementation=recipe.model.attn_implementation)
        )
    if not evaluate or not main or model is None:  # model None: interrupted
        return Outcome(result)
    began = time.time()
    scores = evaluate_recipe(model, tokenizer, recipe, progress=progress)
    eval_s = round(time.time() - began, 2)  # the trained model's evaluation (the base one is cached)
    base = base_scores(recipe, progress=progress) if recipe.eval.base else None
    report = write_report({label or recipe.objective.name: scores}, out, base=base)
    report_eval(recipe, out, scores, summary["steps"])  # to TensorBoard/W&B where train.report_to asks
    return Outcome(result, scores, eval_s, report, base)
