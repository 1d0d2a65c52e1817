"""Issue 23's frontier: mean reverse exact match against general knowledge kept, one point per
finished cell of the reversal grids, one panel per data set (bico's generator, the alt one, and
Berglund's files when run).

    python benchmarks/reversal_frontier.py [--out benchmarks/results/reversal-frontier]

Reads the ``cells/*/result.json`` files committed under ``benchmarks/results/`` (the folders in
:data:`PANELS`), draws each panel with :func:`bico.evaluation.interpolate.plot_frontier` (95%
Wilson intervals on knowledge) and writes ``frontier-<panel>.png`` plus ``frontier.json`` (the
points). The base model is the point at knowledge 1.00, reverse 0.00.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bico.evaluation.interpolate import plot_frontier
from bico.io_utils import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
PANELS = {
    "bico-generator": [
        "reversal-both-directions",
        "reversal-retention-replay",
        "reversal-retention-prompts",
        "reversal-retention-freeze",
        "reversal-retention-sparse",
    ],
    "alt-generator": ["reversal-both-directions-alt", "reversal-retention-kl-alt", "reversal-retention-prompts-alt"],
    "berglund-files": ["reversal-retention-berglund"],
}


def cells(folders: list[str]) -> dict[str, dict]:
    runs = {}
    for folder in folders:
        for path in sorted((RESULTS / folder / "cells").glob("*/result.json")):
            result = json.loads(path.read_text())
            if result.get("retention"):
                runs[result["cell"].removesuffix("-seed0")] = result
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(RESULTS / "reversal-frontier"))
    args = ap.parse_args()
    out, points = Path(args.out), {}
    for panel, folders in PANELS.items():
        runs = cells(folders)
        if not runs:
            continue
        plot_frontier(runs, out / f"frontier-{panel}.png", title=f"{panel}: reverse EM vs knowledge kept (one seed)")
        points[panel] = {
            label: {
                "reverse_em": {s: m["exact_match"] for s, m in r["splits"].items() if "reverse" in s},
                "knowledge": r["retention"]["knowledge_exact_match"],
                "perplexity": r["retention"]["perplexity"],
            }
            for label, r in runs.items()
        }
        print(f"{panel}: {len(runs)} cells -> {out / f'frontier-{panel}.png'}")
    atomic_write_json(out / "frontier.json", points)


if __name__ == "__main__":
    main()
