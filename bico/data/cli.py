"""`bico data ...` sub-commands: generate reversal data, check JSONL files.

Hook into the main parser with ``add_data_parser(subparsers)``; the ``data`` parser sets
``func=run_data`` so ``args.func(args)`` dispatches here.
"""
from __future__ import annotations

import argparse
import sys

from bico.config import one_line
from bico.data.jsonl import DataError, load_jsonl
from bico.data.reversal import generate_reversal_dataset

__all__ = ["add_data_parser", "run_data", "main"]


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="generate or check training/evaluation data")
    sub = p.add_subparsers(dest="data_command", metavar="{reversal,check}")
    sub.required = True

    r = sub.add_parser("reversal", help="generate a seeded fictitious-facts reversal dataset "
                                        "in the file layout of Berglund et al. experiment1")
    r.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    r.add_argument("--facts", type=int, default=30, metavar="N", help="facts per subset (30)")
    r.add_argument("--train-paraphrases", type=int, default=30, metavar="N",
                   help="training paraphrases per fact and direction (30)")
    r.add_argument("--test-paraphrases", type=int, default=10, metavar="N",
                   help="held-out test paraphrases per fact and direction (10)")
    r.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (0)")

    c = sub.add_parser("check", help="validate prompt/completion JSONL files, print row counts")
    c.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=run_data)
    return p


def run_data(args: argparse.Namespace) -> int:
    """Run a `bico data` sub-command; returns the process exit code."""
    try:
        if args.data_command == "reversal":
            s = generate_reversal_dataset(
                args.out, facts_per_subset=args.facts, train_paraphrases=args.train_paraphrases,
                test_paraphrases=args.test_paraphrases, seed=args.seed,
            )
            f = s["files"]
            print(f"wrote reversal data to {s['out_dir']}: {s['n_facts']} facts, "
                  f"{f['all_prompts_train.jsonl']} training rows, "
                  f"{f['p2d_reverse_prompts_test.jsonl']} p2d_reverse test rows (seed {s['seed']})")
            return 0
        if args.data_command == "check":
            bad = 0
            for path in args.files:  # every file is checked, whatever the ones before it held
                try:
                    print(f"ok {path}: {len(load_jsonl(path))} rows")
                except (DataError, OSError) as e:
                    print(f"bico: error: {one_line(e)}", file=sys.stderr)
                    bad += 1
            return 1 if bad else 0
    except (DataError, OSError) as e:
        print(f"bico: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"bico: error: unknown data command {args.data_command!r}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    """Stand-alone entry (python -m bico.data.cli reversal --out DIR)."""
    parser = argparse.ArgumentParser(prog="bico")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["data"]:
        argv = ["data", *argv]
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
