"""Reversal-curse evaluation with the protocol of Berglund et al.

Per split: greedy decoding (temperature 0) from the prompt; *exact match* = the generated
text, stripped and lower-cased, starts with the stripped, lower-cased target; *substring
match* (what the BICO code reports) = the target occurs anywhere in the generation. The
*likelihood test* compares log p(correct completion | prompt) with log p(randomized
completion | prompt), where the randomized completion belongs to another fact; the win rate
is the fraction of prompts where the correct one is more likely (0.5 = chance).

Inference is always plain causal attention (no interval mask), whatever the training
objective was.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bico.io_utils import atomic_savefig, atomic_write, atomic_write_json


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
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 32, batch_size: int = 32,
                    progress: bool = False) -> list[str]:
    device = next(model.parameters()).device
    encoded = _encode_prompts(tokenizer, prompts)
    outputs: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, leave=False):
        ids, mask = _left_pad(encoded[start:start + batch_size], tokenizer.pad_token_id, device)
        generated = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        outputs.extend(tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True))
    return outputs


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: list[str], completions: list[str], *, batch_size: int = 32) -> list[float]:
    """Sum of log p(completion tokens | prompt) for each pair (no EOS)."""
    device = next(model.parameters()).device
    prompt_ids = _encode_prompts(tokenizer, prompts)
    completion_ids = [tokenizer(c, add_special_tokens=False).input_ids for c in completions]
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        seqs = [p + c for p, c in zip(prompt_ids[start:start + batch_size], completion_ids[start:start + batch_size])]
        ids, mask = _left_pad(seqs, tokenizer.pad_token_id, device)
        logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        width = ids.shape[1]
        for row, c in enumerate(completion_ids[start:start + batch_size]):
            positions = torch.arange(width - len(c), width, device=device)
            token_lp = logprobs[row, positions - 1].gather(-1, ids[row, positions][:, None])
            scores.append(float(token_lp.sum()))
    return scores


def exact_match(generated: str, target: str) -> bool:
    return generated.strip().lower().startswith(target.strip().lower())


def substring_match(generated: str, target: str) -> bool:
    return target.strip().lower() in generated.lower()


def evaluate_split(model, tokenizer, rows: list[dict], randomized: list[dict], *, max_new_tokens=32,
                   batch_size=32, progress=False, generation_margin: int | None = None) -> dict:
    """``generation_margin``: generate at most (longest target, in tokens) + margin new tokens
    (capped by ``max_new_tokens``). Exact match only reads the target's length; substring match
    then only looks that far."""
    prompts = [r["prompt"] for r in rows]
    targets = [r["completion"] for r in rows]
    if generation_margin is not None and targets:
        longest = max(len(tokenizer(t, add_special_tokens=False).input_ids) for t in targets)
        max_new_tokens = min(max_new_tokens, longest + generation_margin)
    generated = generate_greedy(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                progress=progress)
    correct = completion_logprobs(model, tokenizer, prompts, targets, batch_size=batch_size)
    wrong = completion_logprobs(model, tokenizer, prompts, [r["completion"] for r in randomized], batch_size=batch_size)
    n = len(rows)
    return {
        "n": n,
        "exact_match": sum(exact_match(g, t) for g, t in zip(generated, targets)) / n,
        "substring_match": sum(substring_match(g, t) for g, t in zip(generated, targets)) / n,
        "mean_logprob": sum(correct) / n,
        "logprob_win_rate": sum(c > w for c, w in zip(correct, wrong)) / n,
        "examples": [{"prompt": p, "target": t, "generated": g} for p, t, g in list(zip(prompts, targets, generated))[:5]],
    }


def evaluate(model, tokenizer, data_dir, splits: list, *, max_new_tokens: int = 32, batch_size: int = 32,
             limit: int | None = None, seed: int = 0, progress: bool = True,
             generation_margin: int | None = None) -> dict:
    """Evaluate every split; returns ``{"splits": {name: metrics}}``."""
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
            results[name] = evaluate_split(model, tokenizer, rows, randomized, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size, progress=progress,
                                           generation_margin=generation_margin)
    finally:
        model.train(was_training)
    return {"splits": results}


def evaluate_recipe(model, tokenizer, recipe, *, progress: bool | None = None) -> dict:
    """:func:`evaluate` on the recipe's data dir with its ``eval`` settings and seed."""
    from bico.data import resolve_data_dir

    ev = recipe.eval
    return evaluate(model, tokenizer, resolve_data_dir(recipe.data.dir), ev.splits, max_new_tokens=ev.max_new_tokens,
                    batch_size=ev.batch_size, limit=ev.limit, seed=recipe.train.seed,
                    progress=recipe.train.progress if progress is None else progress,
                    generation_margin=ev.generation_margin)


COLUMNS = ("n", "exact_match", "substring_match", "mean_logprob", "logprob_win_rate")


def markdown_table(runs: dict[str, dict]) -> str:
    """One row per (run, split). ``runs`` maps a label (e.g. objective) to evaluate()'s output."""
    lines = ["| run | split | n | exact match | substring | mean log p | likelihood win |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for label, result in runs.items():
        for split, m in result["splits"].items():
            lines.append(
                f"| {label} | {split} | {m['n']} | {m['exact_match']:.3f} | {m['substring_match']:.3f} | "
                f"{m['mean_logprob']:.2f} | {m['logprob_win_rate']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def plot_runs(runs: dict[str, dict], path: str | Path, title: str = "Reversal curse: exact match per split") -> Path:
    """Grouped bars: one group per split (forward and reverse), one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(s for r in runs.values() for s in r["splits"]))
    width = 0.8 / max(len(runs), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(splits)), 4))
    for k, (label, result) in enumerate(runs.items()):
        values = [result["splits"].get(s, {}).get("exact_match", math.nan) for s in splits]
        xs = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(splits))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(splits)), [s.replace("_prompts_test", "") for s in splits])
    ax.set_ylabel("exact match")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    out = atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return out


def write_report(runs: dict[str, dict], folder: str | Path, stem: str = "eval", keyed: bool | None = None) -> dict:
    """``stem.json``, ``stem.md`` and ``stem.png`` in ``folder`` (each written atomically).

    The JSON maps each label to its run (``keyed``; default: when there are several runs)."""
    folder = Path(folder)
    keyed = len(runs) > 1 if keyed is None else keyed
    atomic_write_json(folder / f"{stem}.json", runs if keyed else next(iter(runs.values())))
    atomic_write(folder / f"{stem}.md", markdown_table(runs))
    plot_runs(runs, folder / f"{stem}.png")
    return {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md", "png": folder / f"{stem}.png"}
