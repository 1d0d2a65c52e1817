"""``bico ablate SPEC.yaml [key=value ...]``: a grid of training runs, evaluated alike (:mod:`bico.tools.ablate`)."""

from __future__ import annotations

import argparse
import json

from bico.tools.ablate import build_cells, load_spec, run_ablation


def run(args) -> int:
    spec = load_spec(args.spec, args.overrides)
    if args.out:
        spec["output_dir"] = args.out
    devices = [d for d in (args.devices or "").split(",") if d]
    if args.list:
        for cell in build_cells(spec):
            print(f"{cell.key}: {cell.recipe.objective.name} {json.dumps(cell.options)}")
        return 0
    outcome = run_ablation(spec, workers=args.workers, devices=devices)
    if outcome["paths"]:
        print(outcome["paths"]["md"].read_text(), end="")
        print("results: " + ", ".join(str(p) for p in outcome["paths"].values()))
    if outcome["failed"]:
        print(f"{len(outcome['failed'])} cell(s) failed (see cells/*/error.txt): {', '.join(outcome['failed'])}")
        return 1
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("ablate", help="train and evaluate a grid of objectives x options x seeds")
    p.add_argument("spec", help="ablation spec YAML (see recipes/ablations/)")
    p.add_argument("overrides", nargs="*", help="train.max_steps=5 (base recipe) or seeds=[0,1] (spec)")
    p.add_argument("--workers", type=int, default=1, help="CPU processes running cells in parallel")
    p.add_argument("--devices", default=None, help="one process per device, e.g. cuda:0,cuda:1")
    p.add_argument("--out", default=None, help="output folder (default: the spec's output_dir)")
    p.add_argument("--list", action="store_true", help="print the cells and exit")
    return p
