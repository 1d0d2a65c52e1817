"""Weight interpolation between a finetuned model and its base (WiSE-FT, Wortsman et al. 2022).

``theta(alpha) = alpha * theta_finetuned + (1 - alpha) * theta_base``: alpha = 1 is the finetuned
model, 0 the base. Finetuning on a few facts moves the weights a little in many directions; part of
that move is what the facts need and part is what forgetting costs, and a sweep over alpha (which
costs only evaluation) shows how the two trade. ``bico eval --interpolate BASE --alphas ...``.

Embedding rows an objective added (a ``<|mask|>`` token: the finetuned vocabulary is longer) have
no base value and keep their finetuned one; every other parameter must have the same shape in both.
"""

from __future__ import annotations

import torch

from bico.errors import BicoError


class InterpolationError(BicoError, ValueError):
    """The two models cannot be interpolated; the message says why."""


def parse_alphas(text: str) -> list[float]:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]``; each in [0, 1], no duplicates."""
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise InterpolationError(
            f"--alphas {text!r}: give numbers in [0, 1] separated by commas, e.g. 0,0.5,1"
        ) from None
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas) or len(set(alphas)) != len(alphas):
        raise InterpolationError(
            f"--alphas {text!r}: give distinct numbers in [0, 1] separated by commas, e.g. 0,0.5,1"
        )
    return alphas


class Interpolator:
    """Holds both weight sets once (on CPU, in the finetuned model's dtype) and writes
    ``theta(alpha)`` into ``model`` (the finetuned model, changed in place) on each :meth:`set`."""

    def __init__(self, model, base_model):
        base = base_model.state_dict()
        self.model = model
        self.finetuned, self.base = {}, {}
        for name, value in model.state_dict().items():
            if name not in base:
                raise InterpolationError(
                    f"the base model has no parameter {name}: is it the model this one was finetuned from?"
                )
            other = base[name].to(value.dtype)
            if other.shape != value.shape:
                grown = other.dim() >= 1 and other.shape[1:] == value.shape[1:] and other.shape[0] < value.shape[0]
                if not grown:
                    raise InterpolationError(
                        f"parameter {name} is {tuple(value.shape)} here and {tuple(other.shape)} in the "
                        "base model: is it the model this one was finetuned from?"
                    )
                other = torch.cat([other, value[other.shape[0] :]])  # added tokens keep their finetuned rows
            self.finetuned[name] = value.detach().clone()
            self.base[name] = other.detach().clone()

    @torch.no_grad()
    def set(self, alpha: float):
        state = {n: torch.lerp(self.base[n], self.finetuned[n], alpha) for n in self.finetuned}
        self.model.load_state_dict(state)
        return self.model


def alpha_label(alpha: float) -> str:
    return f"alpha={alpha:g}"


def evaluate_interpolations(model, base_model, tokenizer, recipe, alphas: list[float], say=None) -> dict:
    """``{alpha_label(a): evaluate_recipe(...)}`` for each alpha, in the order given (retention on,
    since the sweep is about what it costs). ``model`` is left at the last alpha."""
    from bico.evaluation.reversal import evaluate_recipe

    recipe.eval.retention = True
    mixer = Interpolator(model, base_model)
    del base_model
    runs = {}
    for alpha in alphas:
        runs[alpha_label(alpha)] = evaluate_recipe(mixer.set(alpha), tokenizer, recipe)
        runs[alpha_label(alpha)]["alpha"] = alpha
        if say:
            r = runs[alpha_label(alpha)]
            reverse = {s: round(m["exact_match"], 3) for s, m in r["splits"].items() if "reverse" in s}
            say(
                f"{alpha_label(alpha)}: reverse exact match {reverse}, knowledge "
                f"{r['retention']['knowledge_exact_match']:.3f}, perplexity {r['retention']['perplexity']:.1f}"
            )
    return runs


def plot_frontier(runs: dict, path, title: str = "What the reversal costs: reverse exact match vs knowledge kept"):
    """One point per run (e.g. per alpha): mean reverse-split exact match against general-knowledge
    exact match, each with its 95% interval; the trade a reader wants to see at a glance."""
    from bico.io_utils import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for label, r in runs.items():
        reverse = [m for s, m in r["splits"].items() if "reverse" in s]
        if not reverse or not r.get("retention"):
            continue
        y = sum(m["exact_match"] for m in reverse) / len(reverse)
        x = r["retention"]["knowledge_exact_match"]
        low, high = r["retention"]["knowledge_ci95"]
        ax.errorbar([x], [y], xerr=[[x - low], [high - x]], fmt="o", capsize=2, lw=0.8)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("general-knowledge exact match (95% Wilson interval)")
    ax.set_ylabel("mean exact match over the reverse splits")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    out = save_figure(fig, path, dpi=120)
    return out
