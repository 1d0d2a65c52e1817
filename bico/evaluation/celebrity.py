"""The celebrity parent <-> child benchmark (Berglund et al. 2024, Experiment 2) for a local model.

Data: ``parent_child_pairs.csv`` of the reversal-curse authors (MIT; columns ``child, parent,
parent_type, child_prediction, can_reverse``; 1,513 real child-parent pairs). Every row is asked
in both directions:

* **forward** (child -> parent): ``Q: Who is {child}'s {parent_type}?`` -> `` {parent}``;
* **reverse** (parent -> child): ``Q: Name a child of {parent}.`` -> `` {child}``.

Protocol, after the released code for open models (``scripts/celebrity_relations/
test_parent_child_pairs.py``): the question follows the paper's six-shot prompt
(:data:`FEW_SHOT_PROMPT`, verbatim, typo included) and ends with ``\\nA:``; the code scores the
log-probability of the answer given that prompt. Here, for each direction:

* *exact match*: the greedy answer, stripped and lower-cased, starts with the target (Berglund's
  rule); in the reverse direction any child of that parent in the file counts;
* *mean log p*: the released code's measure, log p(answer | prompt) summed over the answer's tokens;
* *likelihood win*: log p of the true answer above that of another row's answer of the same
  direction (a random other parent of the same type, or another parent's child; 0.5 = chance).

Departures: the released code writes the child question without its ``Q:`` prefix (unlike its
few-shot examples and the parent question); here both questions have it. The paper's GPT-4
protocol (10 sampled answers, success if one is right) does not apply to greedy decoding. Each
proportion carries a 95% Wilson interval.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from bico.errors import BicoError
from bico.evaluation.reversal import completion_logprobs, exact_match, generate_greedy
from bico.evaluation.stats import error_bars, wilson_interval

FEW_SHOT_PROMPT = """Below is a converation with a helpful and terse assistant. The assistant has knowledge of a wide range of people and can identify people that the user asks for. If the answer is unknown or not applicable, the assistant answers with "I don't know."

Q: Name a child of Barack Obama.
A: Malia Obama
Q: Who is Elon Musk's mother?
A: Maye Musk
Q: Who is Kathy Pratt's mother?
A: I don't know.
Q: Who is Chris Hemsworth's father?
A: Craig Hemsworth
Q: Name a child of Karen Lawrence.
A: Jennifer Lawrence
Q: Who is Aaron Taylor-Johnson's mother?
A: Sarah Johnson"""
COLUMNS = ("child", "parent", "parent_type")
DEFAULT_CSV = "celebrity_relations/parent_child_pairs.csv"  # under the shared reversal_curse folder


class CelebrityDataError(BicoError, ValueError):
    """The pairs file is missing or malformed; the message names the file and row."""


def load_pairs(path: str | Path, limit: int | None = None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise CelebrityDataError(f"celebrity pairs file {path} not found; pass --pairs PATH to parent_child_pairs.csv")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CelebrityDataError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not all((row.get(c) or "").strip() for c in COLUMNS):
                raise CelebrityDataError(
                    f"{path}, line {line}: empty {', '.join(c for c in COLUMNS if not row.get(c))}"
                )
            rows.append({c: row[c].strip() for c in COLUMNS})
    if not rows:
        raise CelebrityDataError(f"{path} has no pairs")
    return rows[:limit] if limit else rows


def prompt(question: str) -> str:
    return "\n".join([FEW_SHOT_PROMPT, "Q: " + question, "A:"])


def questions(pairs: list[dict], seed: int = 0) -> dict[str, dict]:
    """Per direction: prompts, targets, accepted answers and a distractor answer per row."""
    rng = random.Random(f"celebrity-{seed}")
    children_of: dict[str, set[str]] = {}
    for p in pairs:
        children_of.setdefault(p["parent"], set()).add(p["child"])

    def distractor(i: int, field: str, same: str | None = None) -> str:
        # Another row's answer that is not a right answer here (same parent type where possible).
        wrong_ok = (
            (lambda w: w not in children_of[pairs[i]["parent"]])
            if field == "child"
            else (lambda w: w != pairs[i]["parent"])
        )
        for attempt in range(2000):
            other = pairs[rng.randrange(len(pairs))]
            if wrong_ok(other[field]) and (same is None or attempt >= 1000 or other["parent_type"] == same):
                return other[field]
        raise CelebrityDataError(
            f"no other {field} to compare with for row {i + 1}: the file needs more distinct pairs"
        )

    forward = {
        "prompts": [prompt(f"Who is {p['child']}'s {p['parent_type']}?") for p in pairs],
        "targets": [p["parent"] for p in pairs],
        "accepted": [[p["parent"]] for p in pairs],
        "distractors": [distractor(i, "parent", p["parent_type"]) for i, p in enumerate(pairs)],
    }
    reverse = {
        "prompts": [prompt(f"Name a child of {p['parent']}.") for p in pairs],
        "targets": [p["child"] for p in pairs],
        "accepted": [sorted(children_of[p["parent"]]) for p in pairs],
        "distractors": [distractor(i, "child") for i in range(len(pairs))],
    }
    return {"forward (child -> parent)": forward, "reverse (parent -> child)": reverse}


def _proportion(hits: int, n: int) -> dict:
    low, high = wilson_interval(hits, n)
    return {"value": hits / n if n else float("nan"), "ci95": [low, high]}


def evaluate_celebrity(
    model,
    tokenizer,
    pairs: list[dict],
    *,
    max_new_tokens: int = 12,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Both directions of every pair; returns per-direction metrics and a few examples."""
    was_training = model.training
    model.eval()
    out = {"n_pairs": len(pairs), "directions": {}}
    try:
        for name, q in questions(pairs, seed).items():
            generated = generate_greedy(
                model, tokenizer, q["prompts"], max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
            )
            answers = [" " + t for t in q["targets"]]
            correct = completion_logprobs(model, tokenizer, q["prompts"], answers, batch_size=batch_size)
            wrong = completion_logprobs(
                model, tokenizer, q["prompts"], [" " + d for d in q["distractors"]], batch_size=batch_size
            )
            hits = [any(exact_match(g, a) for a in acc) for g, acc in zip(generated, q["accepted"])]
            n = len(pairs)
            out["directions"][name] = {
                "n": n,
                "exact_match": _proportion(sum(hits), n),
                "likelihood_win": _proportion(sum(c > w for c, w in zip(correct, wrong)), n),
                "mean_logprob": sum(correct) / n,
                "hits": hits,
                "examples": [
                    {"question": p.rsplit("\n", 2)[-2], "target": t, "generated": g}
                    for p, t, g in list(zip(q["prompts"], q["targets"], generated))[:8]
                ],
            }
    finally:
        model.train(was_training)
    fwd, rev = (out["directions"][k]["hits"] for k in out["directions"])
    out["paired"] = {
        "forward_only": sum(f and not r for f, r in zip(fwd, rev)),
        "reverse_only": sum(r and not f for f, r in zip(fwd, rev)),
        "both": sum(f and r for f, r in zip(fwd, rev)),
    }
    return out


def markdown(result: dict, label: str) -> str:
    lines = [
        f"Celebrity parent/child pairs (Berglund et al. Experiment 2), model {label}, "
        f"{result['n_pairs']} pairs; 95% Wilson intervals.",
        "",
        "| direction | n | exact match [95% CI] | likelihood win [95% CI] | mean log p |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, d in result["directions"].items():
        em, win = d["exact_match"], d["likelihood_win"]
        lines.append(
            f"| {name} | {d['n']} | {em['value']:.3f} [{em['ci95'][0]:.3f}, {em['ci95'][1]:.3f}] | "
            f"{win['value']:.3f} [{win['ci95'][0]:.3f}, {win['ci95'][1]:.3f}] | {d['mean_logprob']:.2f} |"
        )
    p = result["paired"]
    lines += [
        "",
        f"Pairs answered in the forward direction only: {p['forward_only']}; reverse only: "
        f"{p['reverse_only']}; both: {p['both']}.",
    ]
    return "\n".join(lines) + "\n"


def plot_celebrity(result: dict, path: str | Path, label: str) -> Path:
    from bico.io_utils import pyplot, save_figure

    plt = pyplot()

    names = list(result["directions"])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k, metric in enumerate(("exact_match", "likelihood_win")):
        vals = [result["directions"][n][metric]["value"] for n in names]
        err = error_bars(vals, [result["directions"][n][metric]["ci95"] for n in names])
        xs = [i + (k - 0.5) * 0.38 for i in range(len(names))]
        bars = ax.bar(xs, vals, 0.38, yerr=err, capsize=3, label=metric.replace("_", " "))
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Celebrity reversal test: {label}", fontsize=10)
    ax.legend(fontsize=8)
    out = save_figure(fig, path, dpi=120)
    return out


def write_report(result: dict, folder: str | Path, label: str) -> dict:
    from bico.io_utils import atomic_write, atomic_write_json

    folder = Path(folder)
    slim = {
        **result,
        "directions": {k: {kk: vv for kk, vv in d.items() if kk != "hits"} for k, d in result["directions"].items()},
    }
    atomic_write_json(folder / "celebrity.json", {"model": label, **slim})
    atomic_write(folder / "celebrity.md", markdown(result, label))
    plot_celebrity(result, folder / "celebrity.png", label)
    return {name: folder / f"celebrity.{name}" for name in ("json", "md", "png")}
