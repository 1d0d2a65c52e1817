"""`bico data ...` sub-commands: generate reversal data, check JSONL files.

Hooked into bico's parser by ``add_parser(subparsers)``; :func:`bico.cli.build_parser` sets ``handler=run``.
Errors reach :func:`bico.cli.main`, which prints them like every other command's.
"""

from __future__ import annotations

import argparse

from bico.cli import print_error
from bico.data.jsonl import DataError, load_jsonl
from bico.data.reversal import STYLES, generate_reversal_dataset

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="generate or check training/evaluation data")
    sub = p.add_subparsers(dest="data_command", metavar="{reversal,check}")
    sub.required = True

    r = sub.add_parser(
        "reversal",
        help="generate a seeded fictitious-facts reversal dataset in the file layout of Berglund et al. experiment1",
    )
    r.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    r.add_argument("--facts", type=int, default=30, metavar="N", help="facts per subset (30)")
    r.add_argument(
        "--train-paraphrases",
        type=int,
        default=30,
        metavar="N",
        help="training paraphrases per fact and direction (30)",
    )
    r.add_argument(
        "--test-paraphrases",
        type=int,
        default=10,
        metavar="N",
        help="held-out test paraphrases per fact and direction (10)",
    )
    r.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (0)")
    r.add_argument(
        "--style",
        choices=STYLES,
        default="default",
        help="wording: default, or alt (a second, independent generator: other names, "
        "descriptions and templates, descriptions paraphrased across rows)",
    )
    r.add_argument("--force", action="store_true", help="replace the files of that name already in DIR")

    c = sub.add_parser("check", help="validate prompt/completion JSONL files, print row counts")
    c.add_argument("files", nargs="+", metavar="FILE")
    return p


def run(args: argparse.Namespace) -> int:
    """Run a `bico data` sub-command; returns the process exit code."""
    if args.data_command == "reversal":
        s = generate_reversal_dataset(
            args.out,
            facts_per_subset=args.facts,
            train_paraphrases=args.train_paraphrases,
            test_paraphrases=args.test_paraphrases,
            seed=args.seed,
            style=args.style,
            replace=args.force,
        )
        f = s["files"]
        print(
            f"wrote reversal data to {s['out_dir']}: {s['n_facts']} facts, "
            f"{f['all_prompts_train.jsonl']} training rows, "
            f"{f['p2d_reverse_prompts_test.jsonl']} p2d_reverse test rows (seed {s['seed']}"
            + ("" if s["style"] == "default" else f", style {s['style']}")
            + ")"
        )
        return 0
    # check: every file is checked, whatever the ones before it held; a bad file is a finding
    # (exit 1, as grep or a linter would), not a usage error
    bad = 0
    for path in args.files:
        try:
            print(f"ok {path}: {len(load_jsonl(path))} rows")
        except (DataError, OSError) as e:
            print_error(e)
            bad += 1
    return 1 if bad else 0
