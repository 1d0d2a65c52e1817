"""Standard evaluation splits, randomized counterparts and data-dir resolution."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Hashable, Sequence

from bico.data.jsonl import DataError, load_jsonl
from bico.data.reversal import load_facts
from bico.paths import REVERSAL_DATA_ENV, SHARED_REVERSAL_DATA

__all__ = [
    "REVERSAL_EVAL_SPLITS",
    "ENV_VAR",
    "make_randomized",
    "fact_groups",
    "load_split",
    "resolve_data_dir",
    "check_eval_splits",
]

ENV_VAR = REVERSAL_DATA_ENV
_SHARED_REL = SHARED_REVERSAL_DATA

# "randomized" names the file for the likelihood test (same prompts, another fact's
# completion). The forward splits have none in the original; load_split builds one.
REVERSAL_EVAL_SPLITS: list[dict] = [
    {
        "name": "p2d_reverse",
        "file": "p2d_reverse_prompts_test.jsonl",
        "randomized": "p2d_reverse_prompts_test_randomized.jsonl",
    },
    {
        "name": "d2p_reverse",
        "file": "d2p_reverse_prompts_test.jsonl",
        "randomized": "d2p_reverse_prompts_test_randomized.jsonl",
    },
    {"name": "p2d", "file": "p2d_prompts_test.jsonl", "randomized": None},
    {"name": "d2p", "file": "d2p_prompts_test.jsonl", "randomized": None},
]


def _norm(text: str) -> str:
    # Exact-match scoring strips and lower-cases, so "different" must hold under that too.
    return text.strip().lower()


def make_randomized(
    rows: Sequence[dict], seed: int = 0, *, groups: Sequence[Hashable | None] | None = None
) -> list[dict]:
    """Pair every prompt with the completion of a different fact from the same rows.

    ``groups`` gives each row's fact id (see ``fact_groups``); rows without one (None), or
    all rows when ``groups`` is None, count as the fact of their normalized completion. The
    donor row is from another group and its completion differs from the row's own
    (after strip + lower-case). Deterministic in ``seed``; other row keys are kept.
    """
    n = len(rows)
    if groups is None:
        groups = [None] * n
    if len(groups) != n:
        raise DataError(f"make_randomized: {len(groups)} groups for {n} rows")
    norms = [_norm(r["completion"]) for r in rows]
    keys = [("fact", g) if g is not None else ("completion", c) for g, c in zip(groups, norms)]
    rng = random.Random(seed)
    out = []
    for i, row in enumerate(rows):
        ok = lambda j: keys[j] != keys[i] and norms[j] != norms[i]  # noqa: E731
        donor = None
        for _ in range(64):  # rejection sampling: nearly always succeeds at once
            j = rng.randrange(n)
            if ok(j):
                donor = j
                break
        if donor is None:
            candidates = [j for j in range(n) if ok(j)]
            if not candidates:
                raise DataError("make_randomized: no row of another fact to take a completion from")
            donor = rng.choice(candidates)
        out.append({**row, "completion": rows[donor]["completion"]})
    return out


def fact_groups(rows: Sequence[dict], facts: Sequence[dict] | None) -> list[str | None]:
    """Per row, the name of the fact it is about (the name occurs in prompt or completion).

    Every row of the benchmark has the name on one side. Longest names are tried first so
    that a name contained in another cannot steal its rows. None where no name matches.
    """
    if not facts:
        return [None] * len(rows)
    names = sorted({f["name"] for f in facts}, key=len, reverse=True)
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(n)}(?!\w)" for n in names))
    out = []
    for r in rows:
        m = pattern.search(r["prompt"]) or pattern.search(r["completion"])
        out.append(m.group(0) if m else None)
    return out


def _find_split(split: str | dict) -> dict:
    if isinstance(split, dict):
        return split
    for s in REVERSAL_EVAL_SPLITS:
        if split in (s["name"], s["file"], s["file"].removesuffix(".jsonl")):
            return s
    known = ", ".join(s["name"] for s in REVERSAL_EVAL_SPLITS)
    raise DataError(f"unknown evaluation split {split!r}; known: {known}")


def load_split(data_dir, split: str | dict, *, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(rows, randomized_rows) of an evaluation split, row-aligned (same prompts).

    Uses the split's randomized file when it has one; otherwise builds it with
    ``make_randomized``, grouping rows by fact when the dir's facts are known.
    """
    spec = _find_split(split)
    d = Path(data_dir)
    rows = load_jsonl(d / spec["file"])
    if spec.get("randomized"):
        rand = load_jsonl(d / spec["randomized"])
        if [r["prompt"] for r in rand] != [r["prompt"] for r in rows]:
            raise DataError(f"{d / spec['randomized']}: prompts differ from {spec['file']}")
        return rows, rand
    return rows, make_randomized(rows, seed, groups=fact_groups(rows, load_facts(d)))


def check_eval_splits(data_dir, splits: Sequence[str]) -> None:
    """Every evaluation split names a known split whose file is in ``data_dir``, or a ``.jsonl``
    file: checked before training, so a typo does not surface only after hours of it."""
    for split in splits:
        path = Path(data_dir) / (split if split.endswith(".jsonl") else _find_split(split)["file"])
        if not path.is_file():
            raise DataError(f"eval.splits: {split!r} needs {path}, which does not exist")


def resolve_data_dir(path_or_none=None) -> Path:
    """The reversal data dir: the given one (an error if it does not exist); with none given,
    $BICO_REVERSAL_DATA, else ../shared/data/reversal_curse/experiment1 (relative to the cwd)."""
    if path_or_none is not None:
        p = Path(path_or_none).expanduser()
        if p.is_dir():
            return p
        # Falling back to other data would train on something the user did not ask for.
        raise DataError(f"data dir {p} does not exist; generate data with `bico data reversal --out {p}`")
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            return p
        raise DataError(f"{ENV_VAR}={env} is not a directory; generate data with `bico data reversal --out DIR`")
    shared = Path.cwd() / _SHARED_REL
    if shared.is_dir():
        return shared.resolve()
    given = f" ({path_or_none} not found)" if path_or_none is not None else ""
    raise DataError(
        f"no reversal data dir{given}: run `bico data reversal --out DIR` and set data.dir "
        f"(or {ENV_VAR}) to DIR, or place the Berglund files in {_SHARED_REL}"
    )
