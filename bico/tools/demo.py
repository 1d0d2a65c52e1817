"""``bico demo``: the reversal curse and what bico's objectives do about it, on a 2-core CPU.

1. Generates fictitious facts (``bico data reversal``) in the layout of Berglund et al. and the
   BICO code: p2d facts trained only as "name -> description", d2p only as "description ->
   name", "both" in both orders (``all_prompts_train``).
2. Finetunes SmolLM2-135M-Instruct once per arm from the same weights (recipes
   ``recipes/demo/smollm2_<arm>.yaml``; default NTP and ``bico_names``, the BICO variant the
   lab notebook found to answer reversed questions; ``bico`` = paper-faithful BICO).
3. Evaluates every arm on held-out paraphrases of the four Berglund cells (p2d and d2p facts,
   each asked in the trained and in the reverse direction), prints the table and the machine's
   CPU with the timings, and writes ``demo.json``, ``demo.md`` and ``demo.png`` under ``--out``.

``--quick`` runs the same pipeline on ``tiny-random`` in seconds (a smoke test, no claim).
"""

from __future__ import annotations

import time
from pathlib import Path

from bico.config import load_recipe
from bico.errors import UsageError
from bico.machine import machine_info
from bico.resources import shipped

# NTP and the BICO variant that answers reversed questions (benchmarks/NOTES-reversal.md); the
# paper-faithful arm ("bico") does not (0.00 in every cell measured) and is left to --arms, to keep
# the demo within its time budget.
ARMS = ("ntp", "bico_names")
# Data sized for the budget (<= 10 minutes on the 2-core machine); see README "What the demo measured".
DATA = {"facts_per_subset": 5, "train_paraphrases": 10, "test_paraphrases": 5, "seed": 0}
QUICK_DATA = {"facts_per_subset": 2, "train_paraphrases": 4, "test_paraphrases": 2, "seed": 0}


def recipe_path(arm: str, quick: bool = False) -> Path:
    path = shipped("demo", "tiny.yaml" if quick else f"smollm2_{arm}.yaml")
    if not path.is_file():
        arms = sorted(p.stem.removeprefix("smollm2_") for p in path.parent.glob("smollm2_*.yaml"))
        raise UsageError(f"no demo arm {arm!r}: {path} does not exist (arms: {', '.join(arms)})")
    return path


def arm_recipe(arm: str, data_dir: Path, out: Path, quick: bool, overrides: list[str]):
    """The arm's recipe; ``quick`` trains the arm's objective on tiny-random instead."""
    # A rerun of the demo replaces its previous arms (a demo run is never resumed).
    common = [
        f"data.dir={data_dir}",
        f"train.output_dir={out / arm}",
        "train.save_model=false",
        "train.overwrite=true",
    ] + overrides
    recipe = load_recipe(recipe_path(arm), common)
    if quick:
        tiny = load_recipe(recipe_path(arm, quick=True), common)
        tiny.objective = recipe.objective
        return tiny
    return recipe


def demo(
    out: str | Path = "runs/demo",
    *,
    quick: bool = False,
    overrides: list[str] | None = None,
    arms: list[str] | None = None,
) -> dict:
    from bico.data import generate_reversal_dataset
    from bico.evaluation.reversal import write_report
    from bico.tools.pipeline import train_and_evaluate

    arms = tuple(arms or ARMS)
    for arm in arms:
        recipe_path(arm)  # a typo fails before anything trains
    out = Path(out)
    began = time.time()
    data_dir = out / "data"
    generate_reversal_dataset(data_dir, **(QUICK_DATA if quick else DATA))
    runs, timings, base = {}, {}, None
    for arm in arms:
        t0 = time.time()
        recipe = arm_recipe(arm, data_dir, out, quick, list(overrides or []))
        # the arm's report lands in its train.output_dir (out/ARM), visible before the next arm ends
        outcome = train_and_evaluate(recipe, label=arm, evaluate=True)
        runs[arm], s = outcome.scores, outcome.result.summary
        base = base or outcome.base  # every arm starts from the same model and data: one base row
        timings[arm] = {
            "train_s": s["wall_time_s"],
            "eval_s": round(outcome.eval_s, 1),
            "total_s": round(time.time() - t0, 1),
            "tokens": s["tokens"],
            "steps": s["steps"],
            "tokens_per_s": s["tokens_per_s"],
            "precision": s.get("precision"),
        }
        del outcome  # the arm's model, before the next one loads
    machine = machine_info()
    for arm in arms:
        runs[arm]["timing"] = timings[arm]
        runs[arm]["machine"] = machine
    paths = write_report(runs, out, stem="demo", keyed=True, base=base)
    total = time.time() - began
    print(paths["md"].read_text(), end="")
    for arm in arms:
        t = timings[arm]
        print(
            f"{arm}: {t['steps']} steps, {t['tokens']:,} tokens, train {t['train_s']:.0f} s in {t['precision']} "
            f"({t['tokens_per_s']} tokens/s), eval {t['eval_s']:.0f} s"
        )
    print(
        f"demo finished in {total / 60:.1f} min on {machine['cpu']} ({machine['torch_threads']} torch threads); "
        f"results in {paths['json']} and {paths['png']}"
    )
    return {"runs": runs, "total_s": total}
