"""The ``bico bench`` command line: arguments, output paths, writing the results.

Kept apart from :mod:`bico.tools.bench` (which needs torch) so that building bico's parser, and
``bico --help``, imports no torch.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from bico.config import RecipeError

MODES = ("fwd", "fwd+bwd")
PROVIDERS = ("bico-triton", "bico-triton-mirror", "sdpa-dense", "flex")
CASE_NAMES = ("causal", "bidirectional", "bico", "prefix_lm", "packed", "glm")  # bico.tools.bench.CASES
DTYPE_NAMES = ("bf16", "fp16", "fp32")
SEED = 0
CHECK_MAX_T = 1024  # the float64 reference materializes [B, H, T, T]: checks run at min(T) capped here
TOKENS_PER_CALL = 16384  # CUDA default batch: max(1, TOKENS_PER_CALL // T)


def names_from_list(text: str, valid, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise RecipeError(f"unknown {what} {', '.join(map(repr, bad)) or '(none given)'}; available: {', '.join(valid)}")
    return names


def output_paths(out: str, device: str) -> tuple[Path, Path]:
    """``--out`` is a folder (files ``attention-<device slug>.json/.png``) or a ``.json`` path."""
    path = Path(out)
    if path.suffix != ".json":
        slug = "cpu" if device.startswith("cpu") else re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
        path = path / f"attention-{slug}.json"
    return path, path.with_suffix(".png")


def run(args) -> int:
    from bico.tools.bench import config_from_args, markdown_table, plot, run_bench
    from bico.io_utils import atomic_write_json

    result = run_bench(config_from_args(args), progress=not args.no_progress)
    json_path, png_path = output_paths(args.out, result["device"])
    atomic_write_json(json_path, result)
    plot(result, png_path)
    print(markdown_table(result))
    for s in result["skipped"]:
        where = " ".join(f"{k}={s[k]}" for k in ("case", "mode", "T") if s[k] is not None)
        print(f"skipped {s['provider']}{f' ({where})' if where else ''}: {s['reason']}")
    if result["note"]:
        print(result["note"])
    print(f"wrote {json_path} and {png_path}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="time masked-attention providers on bico's masks (JSON + PNG)")
    p.add_argument("--cases", default=",".join(CASE_NAMES), help=f"comma list of {','.join(CASE_NAMES)} (all)")
    p.add_argument("--providers", default=",".join(PROVIDERS), help=f"comma list of {','.join(PROVIDERS)} (all)")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of fwd,fwd+bwd (both)")
    p.add_argument("--seqlens", default=None, help="comma list (CUDA 1024,2048,4096,8192,16384; CPU 256,512)")
    p.add_argument("--batch", type=int, default=None, help=f"CUDA: {TOKENS_PER_CALL}//T, so tokens stay fixed; CPU: 1")
    p.add_argument("--heads", type=int, default=None, help="query heads (CUDA 32, CPU 4)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (CUDA 8, CPU 2)")
    p.add_argument("--head-dim", type=int, default=None, help="head dim (CUDA 128, CPU 64)")
    p.add_argument("--dtype", choices=list(DTYPE_NAMES), default=None, help="CUDA bf16, CPU fp32")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (CUDA 20, CPU 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (3)")
    p.add_argument("--out", default="benchmarks/results", help="output folder, or a .json path")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.set_defaults(handler=run)
    return p
