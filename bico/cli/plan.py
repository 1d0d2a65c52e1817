"""``bico plan MODEL --gpus N [--nodes M]``: memory per GPU for each ZeRO setup (:mod:`bico.tools.plan`)."""

from __future__ import annotations

import argparse

from bico.errors import UsageError
from bico.tools.plan import PRESET_CONFIGS, estimate, load_config, render, sizes_from_config


def run(args) -> int:
    if args.list or not args.model:
        print("presets: " + ", ".join(PRESET_CONFIGS) + " (or a local model folder / config.json)")
        return 0
    if args.gpus < 1 or args.nodes < 1:
        raise UsageError("--gpus and --nodes must be at least 1")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise UsageError("bico plan uses DeepSpeed's estimators: pip install deepspeed") from None
    total, largest = sizes_from_config(load_config(args.model))
    rows = estimate(total, largest, args.gpus, args.nodes)
    print(render(args.model, total, largest, args.gpus, args.nodes, rows, args.gpu_memory), end="")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plan", help="memory per GPU for each ZeRO stage, from the model's config alone")
    p.add_argument("model", nargs="?", help="preset (see --list) or a local model folder / config.json")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per node (1)")
    p.add_argument("--nodes", type=int, default=1, help="nodes (1)")
    p.add_argument(
        "--gpu-memory",
        type=float,
        default=None,
        metavar="GIB",
        help="memory of one GPU in GiB: adds a 'fits?' column (model states only)",
    )
    p.add_argument("--list", action="store_true", help="list the preset model names")
    return p
