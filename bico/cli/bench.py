"""``bico bench``: time masked-attention providers on bico's interval masks (:mod:`bico.tools.bench`).

The parser is built from :mod:`bico.tools.bench_options` (no torch); the timing loads torch when
the command runs.
"""

from __future__ import annotations

import argparse

from bico.tools.bench_options import CASE_NAMES, DTYPE_NAMES, MODES, PROVIDERS, TOKENS_PER_CALL


def run(args) -> int:
    from bico.tools.bench import run_command

    return run_command(args)


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
    return p
