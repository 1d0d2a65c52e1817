"""The identity bridge (Ma, Huang, Zhu & Sojoudi 2026, "Breaking the Reversal Curse in Autoregressive
Language Models via Identity Bridge", arXiv 2602.02470): training rows that map an entity to
itself, "The name of Alice is Alice.", added next to the forward facts.

What we could read of the paper (its abstract and summaries; the body with the exact templates
and the ratio of identity to forward rows was not reachable from this project's machines): the
recipe adds data of the form "A -> A" such as "The name of Alice is Alice" to forward-only facts
"A -> B"; a one-layer transformer provably breaks the reversal curse under it; a 1B pretrained
model finetuned this way answers 40% (v1; 50% in v2) of reversal questions, against ~0 without.

What bico does (``data.identity_bridge: {rate, templates}``; the defaults are ours):

* for every fact whose rows are in the training data (rows carrying ``meta`` = the fact's
  ``name`` and ``description``; see ``bico.training.examples.load_training_rows``), add
  ``max(1, round(rate * n_f))`` identity rows, n_f = that fact's training rows, cycling through
  ``templates`` in order; ``rate`` default 0.1 (one identity row per ten forward rows);
* a template is a string with ``{name}`` and/or ``{description}``, default ``["The name of
  {name} is {name}."]`` (the paper's example); the row is split before the last filled entity:
  prompt "The name of Alice is", completion " Alice.", as Berglund rows are;
* identity rows carry the fact's ``meta`` and are appended after the forward rows (the trainer
  shuffles every epoch), so any objective trains on them as on any row.
"""

from __future__ import annotations

import string

from bico.data.jsonl import DataError

DEFAULTS = {"rate": 0.1, "templates": ["The name of {name} is {name}."]}
FIELDS = ("name", "description")


def identity_settings(cfg: dict | None) -> dict | None:
    """The checked settings (defaults filled), or None when off; ValueError (one line) if bad."""
    if not cfg:
        return None
    if not isinstance(cfg, dict):
        raise ValueError(f"data.identity_bridge must be a mapping {{rate, templates}}, got {cfg!r}")
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"data.identity_bridge has no key(s) {', '.join(unknown)}; valid: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **cfg}
    rate = out["rate"]
    if isinstance(rate, str):  # YAML reads 1e-1 as a string
        try:
            rate = float(rate)
        except ValueError:
            pass
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < float("inf"):
        raise ValueError(
            f"data.identity_bridge.rate must be a number > 0 (identity rows per training row), got {rate!r}"
        )
    templates = out["templates"]
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise ValueError(f"data.identity_bridge.templates must be a non-empty list of strings, got {templates!r}")
    for t in templates:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
        except ValueError:
            names = {"?"}
        if not names or names - set(FIELDS):
            raise ValueError(f"data.identity_bridge.templates: {t!r} must use {{name}} and/or {{description}} only")
    out["rate"] = float(rate)
    return out


def identity_row(template: str, fact: dict) -> dict:
    """One identity row, split before the last entity the template fills."""
    text = template.format(**{f: fact[f] for f in FIELDS})
    last = [f for _, f, _, _ in string.Formatter().parse(template) if f][-1]
    cut = text.rindex(fact[last])
    prompt = text[:cut].rstrip(" ")
    return {"prompt": prompt, "completion": text[len(prompt) :], "meta": dict(fact)}


def add_identity_bridge(rows: list[dict], sources: list[str], cfg: dict | None) -> tuple[list[dict], list[str]]:
    """``rows`` plus identity rows for their facts (see the module docstring); ``cfg`` falsy = off."""
    settings = identity_settings(cfg)
    if settings is None:
        return rows, sources
    counts: dict[tuple, int] = {}
    for row in rows:
        meta = row.get("meta") or {}
        if meta.get("name") and meta.get("description"):
            key = (meta["name"], meta["description"])
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        raise DataError(
            "data.identity_bridge needs the facts' names: data.dir has no facts.jsonl "
            "(bico data reversal writes one) or no training row matches a fact"
        )
    extra, extra_sources = [], []
    for (name, description), n in counts.items():
        fact = {"name": name, "description": description}
        for k in range(max(1, round(settings["rate"] * n))):
            t = k % len(settings["templates"])
            extra.append(identity_row(settings["templates"][t], fact))
            extra_sources.append(f"identity bridge, template {t}, fact {name!r}")
    return rows + extra, sources + extra_sources
