"""Reversal-curse evaluation with the protocol of Berglund et al.

Per split: greedy decoding (temperature 0) from the prompt; *exact match* = the generated
text, stripped and lower-cased, starts with the stripped, lower-cased target; *substring
match* (what the BICO code reports) = the target occurs anywhere in the generation. The
*likelihood test* compares log p(correct completion | prompt) with log p(randomized
completion | prompt), where the randomized completion belongs to another fact; the win rate
is the fraction of prompts where the correct one is more likely (0.5 = chance). Every proportion
carries a 95% Wilson score interval for its n (``ci95``).

*Retention* (``eval.retention``): what finetuning cost in general ability — perplexity on a
fixed English prose sample and greedy exact match on general-knowledge completions that the base
SmolLM2-135M-Instruct gets right (``bico/data/retention/``, sources in its SOURCE.md). The *base
model* (before finetuning) is evaluated once per model and data (``eval.base``; cached under
``$BICO_CACHE/base-eval``) and reported beside the finetuned one.

Inference is always plain causal attention (no interval mask), whatever the training
objective was.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bico.evaluation.stats import error_bars, wilson_interval
from bico.io_utils import atomic_write, atomic_write_json, pyplot, save_figure
from bico.paths import RETENTION_DIR

PERPLEXITY_WINDOW = 256  # tokens per scored window; no context crosses windows
PROPORTIONS = ("exact_match", "substring_match", "logprob_win_rate")


def _split_spec(split) -> str | dict:
    if isinstance(split, str) and split.endswith(".jsonl"):
        return {"name": Path(split).stem, "file": split, "randomized": None}
    return split


def _encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    # Exactly as training encodes prompts (the tokenizer's own special tokens, no EOS).
    return [tokenizer(p).input_ids for p in prompts]


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate_greedy(
    model, tokenizer, prompts: list[str], *, max_new_tokens: int = 32, batch_size: int = 32, progress: bool = False
) -> list[str]:
    device = next(model.parameters()).device
    encoded = _encode_prompts(tokenizer, prompts)
    outputs: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, leave=False):
        ids, mask = _left_pad(encoded[start : start + batch_size], tokenizer.pad_token_id, device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        outputs.extend(tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True))
    return outputs


@torch.no_grad()
def completion_logprobs(
    model, tokenizer, prompts: list[str], completions: list[str], *, batch_size: int = 32
) -> list[float]:
    """Sum of log p(completion tokens | prompt) for each pair (no EOS)."""
    device = next(model.parameters()).device
    prompt_ids = _encode_prompts(tokenizer, prompts)
    completion_ids = [tokenizer(c, add_special_tokens=False).input_ids for c in completions]
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        seqs = [
            p + c for p, c in zip(prompt_ids[start : start + batch_size], completion_ids[start : start + batch_size])
        ]
        ids, mask = _left_pad(seqs, tokenizer.pad_token_id, device)
        logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        width = ids.shape[1]
        for row, c in enumerate(completion_ids[start : start + batch_size]):
            positions = torch.arange(width - len(c), width, device=device)
            token_lp = logprobs[row, positions - 1].gather(-1, ids[row, positions][:, None])
            scores.append(float(token_lp.sum()))
    return scores


def exact_match(generated: str, target: str) -> bool:
    return generated.strip().lower().startswith(target.strip().lower())


def substring_match(generated: str, target: str) -> bool:
    return target.strip().lower() in generated.lower()


def evaluate_split(
    model,
    tokenizer,
    rows: list[dict],
    randomized: list[dict],
    *,
    max_new_tokens=32,
    batch_size=32,
    progress=False,
    generation_margin: int | None = None,
) -> dict:
    """``generation_margin``: generate at most (longest target, in tokens) + margin new tokens
    (capped by ``max_new_tokens``). Exact match only reads the target's length; substring match
    then only looks that far."""
    prompts = [r["prompt"] for r in rows]
    targets = [r["completion"] for r in rows]
    if generation_margin is not None and targets:
        longest = max(len(tokenizer(t, add_special_tokens=False).input_ids) for t in targets)
        max_new_tokens = min(max_new_tokens, longest + generation_margin)
    generated = generate_greedy(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
    correct = completion_logprobs(model, tokenizer, prompts, targets, batch_size=batch_size)
    wrong = completion_logprobs(model, tokenizer, prompts, [r["completion"] for r in randomized], batch_size=batch_size)
    n = len(rows)
    hits = {
        "exact_match": sum(exact_match(g, t) for g, t in zip(generated, targets)),
        "substring_match": sum(substring_match(g, t) for g, t in zip(generated, targets)),
        "logprob_win_rate": sum(c > w for c, w in zip(correct, wrong)),
    }
    return {
        "n": n,
        **{name: k / n for name, k in hits.items()},
        "mean_logprob": sum(correct) / n,
        "ci95": {name: list(wilson_interval(k, n)) for name, k in hits.items()},
        "examples": [
            {"prompt": p, "target": t, "generated": g} for p, t, g in list(zip(prompts, targets, generated))[:5]
        ],
    }


@torch.no_grad()
def perplexity(model, tokenizer, text: str, *, window: int = PERPLEXITY_WINDOW, batch_size: int = 8) -> dict:
    """exp(mean negative log-likelihood) of ``text``'s tokens, scored in consecutive windows of
    ``window`` tokens (each window's first token is context only)."""
    device = next(model.parameters()).device
    ids = tokenizer(text, add_special_tokens=False).input_ids
    chunks = [c for c in (ids[i : i + window] for i in range(0, len(ids), window)) if len(c) > 1]
    nll, count = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        group = chunks[start : start + batch_size]
        width = max(len(c) for c in group)
        batch = torch.full((len(group), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, c in enumerate(group):
            batch[row, : len(c)], mask[row, : len(c)] = torch.tensor(c), 1
        batch, mask = batch.to(device), mask.to(device)
        logprobs = torch.log_softmax(model(input_ids=batch, attention_mask=mask).logits.float()[:, :-1], dim=-1)
        token_lp = logprobs.gather(-1, batch[:, 1:, None])[..., 0]
        keep = mask[:, 1:].bool()
        nll -= float(token_lp[keep].sum())
        count += int(keep.sum())
    return {"perplexity": math.exp(nll / count), "tokens": count}


def retention(model, tokenizer, *, batch_size: int = 32) -> dict:
    """Perplexity on the prose sample and exact match on the general-knowledge completions."""
    rows = [json.loads(line) for line in (RETENTION_DIR / "knowledge.jsonl").read_text().splitlines() if line.strip()]
    generated = generate_greedy(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=8, batch_size=batch_size)
    hits = sum(exact_match(g, r["completion"]) for g, r in zip(generated, rows))
    ppl = perplexity(model, tokenizer, (RETENTION_DIR / "prose.txt").read_text(encoding="utf-8"))
    return {
        "perplexity": ppl["perplexity"],
        "perplexity_tokens": ppl["tokens"],
        "knowledge_exact_match": hits / len(rows),
        "knowledge_n": len(rows),
        "knowledge_ci95": list(wilson_interval(hits, len(rows))),
    }


def evaluate(
    model,
    tokenizer,
    data_dir,
    splits: list,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    generation_margin: int | None = None,
    with_retention: bool = False,
) -> dict:
    """Evaluate every split; returns ``{"splits": {name: metrics}}`` (plus ``"retention"``)."""
    from bico.data import load_split

    was_training = model.training
    model.eval()
    results = {}
    try:
        for split in tqdm(splits, desc="evaluate", disable=not progress):
            spec = _split_spec(split)
            name = spec["name"] if isinstance(spec, dict) else spec
            rows, randomized = load_split(data_dir, spec, seed=seed)
            if limit:
                rows, randomized = rows[:limit], randomized[:limit]
            results[name] = evaluate_split(
                model,
                tokenizer,
                rows,
                randomized,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                progress=progress,
                generation_margin=generation_margin,
            )
        out = {"splits": results}
        if with_retention:
            out["retention"] = retention(model, tokenizer, batch_size=batch_size)
    finally:
        model.train(was_training)
    return out


def evaluate_recipe(model, tokenizer, recipe, *, progress: bool | None = None) -> dict:
    """:func:`evaluate` on the recipe's data dir with its ``eval`` settings and seed."""
    from bico.data import resolve_data_dir

    ev = recipe.eval
    return evaluate(
        model,
        tokenizer,
        resolve_data_dir(recipe.data.dir),
        ev.splits,
        max_new_tokens=ev.max_new_tokens,
        batch_size=ev.batch_size,
        limit=ev.limit,
        seed=recipe.train.seed,
        progress=recipe.train.progress if progress is None else progress,
        generation_margin=ev.generation_margin,
        with_retention=ev.retention,
    )


def base_scores(recipe, *, progress: bool | None = None) -> dict:
    """:func:`evaluate_recipe` of the recipe's model *before* finetuning, cached per model, data
    files and eval settings (the base row of every report costs one evaluation per model)."""
    from bico.data import resolve_data_dir
    from bico.models import load_model
    from bico.paths import cache_dir

    data_dir = resolve_data_dir(recipe.data.dir)
    path = cache_dir() / "base-eval" / f"{_base_key(recipe, data_dir)}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass  # a damaged entry is recomputed
    model, tokenizer = load_model(recipe.model, data_dir=data_dir)
    scores = evaluate_recipe(model, tokenizer, recipe, progress=progress)
    atomic_write_json(path, scores)
    return scores


def _base_key(recipe, data_dir) -> str:
    """What the base evaluation depends on: the model (its recipe, and its files' sizes and times
    for a local folder), the data files, the eval settings and the seed."""
    import dataclasses

    from bico.models import model_identity

    model = model_identity(recipe.model)
    ev = {k: v for k, v in dataclasses.asdict(recipe.eval).items() if k not in ("enabled", "base", "batch_size")}
    data = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(data_dir).glob("*.jsonl"))}
    blob = json.dumps({"model": model, "eval": ev, "data": data, "seed": recipe.train.seed, "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


COLUMNS = ("n", "exact_match", "substring_match", "mean_logprob", "logprob_win_rate")


def _with_ci(m: dict, name: str) -> str:
    low, high = m.get("ci95", {}).get(name, (math.nan, math.nan))
    return f"{m[name]:.3f}" if math.isnan(low) else f"{m[name]:.3f} [{low:.2f}, {high:.2f}]"


def eval_table(runs: dict[str, dict]) -> str:
    """One row per (run, split), then retention per run where measured. ``runs`` maps a label
    (e.g. objective; ``base`` = before finetuning) to evaluate()'s output."""
    lines = [
        "Proportions with their 95% Wilson score interval [low, high].",
        "",
        "| run | split | n | exact match | substring | mean log p | likelihood win |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, result in runs.items():
        for split, m in result["splits"].items():
            lines.append(
                f"| {label} | {split} | {m['n']} | {_with_ci(m, 'exact_match')} | {_with_ci(m, 'substring_match')} | "
                f"{m['mean_logprob']:.2f} | {_with_ci(m, 'logprob_win_rate')} |"
            )
    kept = {label: r["retention"] for label, r in runs.items() if r.get("retention")}
    if kept:
        lines += [
            "",
            "Retention (what finetuning cost): perplexity on the prose sample (lower is better) and "
            "exact match on general-knowledge completions the base model gets right.",
            "",
            "| run | perplexity | tokens | knowledge exact match | n |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, r in kept.items():
            low, high = r["knowledge_ci95"]
            lines.append(
                f"| {label} | {r['perplexity']:.2f} | {r['perplexity_tokens']} | "
                f"{r['knowledge_exact_match']:.3f} [{low:.2f}, {high:.2f}] | {r['knowledge_n']} |"
            )
    return "\n".join(lines) + "\n"


def plot_runs(runs: dict[str, dict], path: str | Path, title: str = "Reversal curse: exact match per split") -> Path:
    """Grouped bars: one group per split (forward and reverse), one bar per run."""
    plt = pyplot()
    splits = list(dict.fromkeys(s for r in runs.values() for s in r["splits"]))
    width = 0.8 / max(len(runs), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(splits)), 4))
    for k, (label, result) in enumerate(runs.items()):
        values = [result["splits"].get(s, {}).get("exact_match", math.nan) for s in splits]
        cis = [result["splits"].get(s, {}).get("ci95", {}).get("exact_match", (v, v)) for s, v in zip(splits, values)]
        err = error_bars(values, cis)  # Wilson intervals
        xs = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(splits))]
        bars = ax.bar(xs, values, width, label=label, yerr=err, capsize=2, error_kw={"lw": 0.8})
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(splits)), [s.replace("_prompts_test", "") for s in splits])
    ax.set_ylabel("exact match (95% Wilson interval)")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend()
    out = save_figure(fig, path, dpi=120)
    return out


def write_report(
    runs: dict[str, dict], folder: str | Path, stem: str = "eval", keyed: bool | None = None, base: dict | None = None
) -> dict:
    """``stem.json``, ``stem.md`` and ``stem.png`` in ``folder`` (each written atomically).

    The JSON maps each label to its run (``keyed``; default: when there are several runs). ``base``
    (the model before finetuning) is stored under the key ``"base"`` and shown as the first row."""
    folder = Path(folder)
    keyed = len(runs) > 1 if keyed is None else keyed
    payload = dict(runs) if keyed else dict(next(iter(runs.values())))
    shown = dict(runs)
    if base is not None:
        payload["base"] = base
        shown = {"base": base, **runs}
    atomic_write_json(folder / f"{stem}.json", payload)
    atomic_write(folder / f"{stem}.md", eval_table(shown))
    plot_runs(shown, folder / f"{stem}.png")
    return {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md", "png": folder / f"{stem}.png"}
