"""How often does a BICO recipe hide a *whole* name? The mechanism behind paper-BICO's 0.00.

A reversed p2d question gives the description and asks for the name; the training signal that
teaches it is a name token predicted while no other token of that name is visible (otherwise the
other name pieces predict it: "Daphne [MASK]" -> "Barrington"). This script samples the masking of
each recipe exactly as training does (the objective's own ``start_batch``/``encode``, seeded per
step as ``bico train`` seeds them), over the recipe's epochs, and counts for every occurrence of a
fact's name in a denoising step how many of its tokens were hidden. No model is trained.

    python benchmarks/name_masking.py [--data DIR] [--epochs 10] [--out benchmarks/results/name-masking]

Without ``--data`` it generates the demo's data (5 facts per subset, 10 paraphrases). Writes
``name_masking.json`` and ``name_masking.png`` (per recipe: the share of name-token targets
predicted with 0 other name tokens visible, i.e. the whole name hidden).
"""

from __future__ import annotations

import argparse
import collections
import random
import tempfile
from pathlib import Path

from bico.config import load_recipe
from bico.io_utils import atomic_savefig, atomic_write_json, pyplot
from bico.machine import machine_info
from bico.objectives import build_objective
from bico.objectives.base import IGNORE
from bico.training.examples import load_training_rows, tokenize_examples
from bico.training.step import StepPlan

RECIPES = {  # label: objective options (bico)
    "paper BICO (mask 0.15, ntp_mix 0.5)": {},
    "bico_names (entity_mask 1.0, ntp_mix 0.25)": {"entity_mask": 1.0, "ntp_mix": 0.25, "rope": "standard"},
}


def name_hiding(data_dir: Path, options: dict, epochs: int, seed: int = 0) -> dict:
    from bico.models import load_tokenizer

    recipe = load_recipe("recipes/demo/smollm2_bico.yaml", [f"data.dir={data_dir}"])
    tokenizer = load_tokenizer(recipe.model.name)
    objective = build_objective("bico", tokenizer, options)
    rows, sources = load_training_rows(recipe)
    examples = tokenize_examples(rows, tokenizer, recipe.data.max_length, sources, data=recipe.data)
    plan = StepPlan(len(examples), recipe.train.batch_size, recipe.train.grad_accum, seed)
    mask_id = objective.mask_id
    occurrences = 0  # a name in a denoising step
    hidden_hist = collections.Counter()  # (name length, tokens hidden) over occurrences
    targets_by_others_visible = collections.Counter()  # name-token targets by how many other name tokens are visible
    name_first = sum(
        1
        for e in examples
        if objective.entity_ranges(objective.text_ids(e), e.meta, ("name",))[:1]
        and objective.entity_ranges(objective.text_ids(e), e.meta, ("name",))[0][0] == 0
    )
    steps = 0
    for step in range(epochs * plan.steps_per_epoch):
        objective.set_progress(step, epochs * plan.steps_per_epoch)
        for m, idx in enumerate(plan.micro_batches(step)):
            rng = random.Random(f"objective-{seed}-{step}-{m}")  # as bico.training.step.make_batch
            state = objective.start_batch(rng)
            for i in idx:
                ex = examples[i]
                sample = objective.encode(ex, rng, state)
                if state == "ntp" or (isinstance(state, str) and state != "denoise"):
                    continue
                ids = objective.text_ids(ex)
                offset = len(sample.input_ids) - len(ids)  # a lead token, if any
                inp = sample.input_ids.tolist()[offset:]
                if mask_id not in inp:
                    continue  # an NTP sample
                predicted = set()
                tg = sample.targets.tolist()
                for t in range(len(tg)):
                    if tg[t] != IGNORE:
                        predicted.add(t + 1 - offset if objective.shift else t - offset)
                for a, b in objective.entity_ranges(ids, ex.meta, ("name",)):
                    occurrences += 1
                    hidden = [k for k in range(a, b) if inp[k] == mask_id]
                    hidden_hist[(b - a, len(hidden))] += 1
                    for k in hidden:
                        if k in predicted:
                            targets_by_others_visible[(b - a) - len(hidden)] += 1
        steps += 1
    total_targets = sum(targets_by_others_visible.values())
    whole = sum(n for (length, h), n in hidden_hist.items() if h == length)
    return {
        "options": options,
        "epochs": epochs,
        "steps": steps,
        "examples": len(examples),
        "rows_starting_with_name": name_first,
        "name_occurrences_in_denoising_samples": occurrences,
        "occurrences_with_whole_name_hidden": whole,
        "share_whole_name_hidden": whole / max(occurrences, 1),
        "name_token_targets": total_targets,
        "name_token_targets_by_other_name_tokens_visible": {
            str(k): v for k, v in sorted(targets_by_others_visible.items())
        },
        "share_targets_with_whole_name_hidden": targets_by_others_visible.get(0, 0) / max(total_targets, 1),
        "hidden_histogram": {f"{length} tokens, {h} hidden": n for (length, h), n in sorted(hidden_hist.items())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/name-masking")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            from bico.data import generate_reversal_dataset
            from bico.tools.demo import DATA

            generate_reversal_dataset(data, **DATA)
        results = {label: name_hiding(data, options, args.epochs) for label, options in RECIPES.items()}
    out = Path(args.out)
    report = {
        "machine": machine_info(),
        "data": args.data or "the demo's generated data",
        "command": f"python benchmarks/name_masking.py --epochs {args.epochs}"
        + (f" --data {args.data}" if args.data else ""),
        "recipes": results,
    }
    atomic_write_json(out / "name_masking.json", report)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = list(results)
    ax.barh(labels, [results[k]["share_targets_with_whole_name_hidden"] for k in labels], color=["#888", "#c33"])
    for y, k in enumerate(labels):
        r = results[k]
        ax.text(
            r["share_targets_with_whole_name_hidden"],
            y,
            f"  {r['name_token_targets_by_other_name_tokens_visible'].get('0', 0)}"
            f" of {r['name_token_targets']} name-token targets",
            va="center",
        )
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of name-token targets predicted with the whole name hidden")
    ax.set_title(f"What teaches description -> name ({args.epochs} epochs of masking)")
    fig.tight_layout()
    atomic_savefig(fig, out / "name_masking.png")
    for label, r in results.items():
        print(
            f"{label}: {r['name_occurrences_in_denoising_samples']} name occurrences in denoising samples, "
            f"whole name hidden in {r['occurrences_with_whole_name_hidden']} ({r['share_whole_name_hidden']:.2%}); "
            f"name-token targets {r['name_token_targets']}, with the whole name hidden "
            f"{r['share_targets_with_whole_name_hidden']:.2%}; rows starting with the name {r['rows_starting_with_name']}"
            f" of {r['examples']}"
        )


if __name__ == "__main__":
    main()
