"""``bico demo``: the reversal curse and its cure on SmolLM2-135M and generated facts (:mod:`bico.tools.demo`)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="the reversal curse and its cure on SmolLM2-135M and generated facts (CPU)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="tiny-random model, seconds (smoke test)")
    p.add_argument(
        "--arms",
        default=None,
        help="comma-separated arms, each recipes/demo/smollm2_ARM.yaml (default: ntp,bico_names; paper BICO: bico)",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every demo recipe")
    return p


def run(args) -> int:
    from bico.tools.demo import demo

    demo(out=args.out, quick=args.quick, overrides=args.overrides, arms=args.arms.split(",") if args.arms else None)
    return 0
