"""Compile report: every masked-attention kernel variant compiled for Hopper (sm_90a) on this machine,
no GPU needed. Prints a markdown table and writes it, with a JSON twin, to --out.

    # the configs the runtime launches by default (first entry of the pruned table), bf16+fp16, D 64/128
    python benchmarks/compile_report.py
    # re-prune the config table after a kernel or Triton change: compile every candidate config,
    # keep the clean ones (zero spills, <= 227 KB shared memory, wgmma, no ptxas advice) best-first,
    # and rewrite kernels/bico_kernels/config_table.py
    python benchmarks/compile_report.py --candidates --write-table --workers 4
    # the same, stopping at the 4 best clean candidates per variant and reusing a stored report's
    # results while the kernels' source is unchanged (a hash of it)
    python benchmarks/compile_report.py --candidates --keep 4 --write-table \\
        --reuse benchmarks/results/compile-sm90/candidates.json
    # the pruning from a stored report, without compiling
    python benchmarks/compile_report.py --keep 4 --table-from benchmarks/results/compile-sm90/candidates.json

Must run without TRITON_INTERPRET (the interpreter replaces the kernels). Numbers per variant:
registers per thread, spill stores/loads (bytes per thread), shared memory per block, wgmma
instructions in the PTX, ptxas warnings and performance advice (e.g. C7515: wgmma serialised).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: the compile report compiles the kernels, the interpreter would replace them")

from bico.io_utils import atomic_write, atomic_write_json  # noqa: E402
from bico.tools.bench import metadata  # noqa: E402
from bico_kernels import compile_report as cr  # noqa: E402
from bico_kernels.configs import TABLE_DTYPES, TABLE_HEAD_DIMS, KernelConfig, runtime_variants  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default=",".join(TABLE_DTYPES), help="comma list of bf16, fp16, fp32")
    ap.add_argument("--head-dims", default=",".join(map(str, TABLE_HEAD_DIMS)))
    ap.add_argument("--kernels", default="fwd,dkdv,dq")
    ap.add_argument(
        "--candidates",
        action="store_true",
        help="compile every candidate config of the search space, not only the default ones",
    )
    ap.add_argument(
        "--keep",
        type=int,
        default=0,
        help="per variant, stop after (and keep in the table) this many clean candidates (0: all)",
    )
    ap.add_argument(
        "--reuse",
        default="",
        help="comma list of stored reports whose results are reused while the kernel source is unchanged",
    )
    ap.add_argument(
        "--write-table",
        action="store_true",
        help="with --candidates: rewrite kernels/bico_kernels/config_table.py from the clean candidates",
    )
    ap.add_argument("--only", default="", help="comma list: keep variants whose key contains one of these")
    ap.add_argument(
        "--configs",
        default="",
        help="explicit configs for every variant, 'bm,bn,warps,stages;...' (an experiment, not the table)",
    )
    ap.add_argument("--workers", type=int, default=1, help="compile processes (ptxas uses one core each)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/compile-sm90"))
    ap.add_argument("--name", default=None, help="file stem (default: defaults or candidates)")
    ap.add_argument(
        "--table-from",
        default=None,
        metavar="REPORT.json",
        help="rewrite kernels/bico_kernels/config_table.py from a stored --candidates report, compiling nothing",
    )
    args = ap.parse_args(argv)
    if args.table_from:
        records = json.loads(Path(args.table_from).read_text())["records"]
        table = cr.render_config_table([cr.result_from_dict(d) for d in records], keep=args.keep)
        atomic_write(ROOT / "kernels/bico_kernels/config_table.py", table)
        print(f"wrote {ROOT / 'kernels/bico_kernels/config_table.py'} from {len(records)} records")
        return 0
    if args.write_table and not args.candidates:
        ap.error("--write-table needs --candidates")
    if reason := cr.ptxas_available():
        sys.exit(reason)
    variants = [
        v
        for v in runtime_variants(args.dtypes.split(","), [int(d) for d in args.head_dims.split(",")])
        if v.kernel in args.kernels.split(",")
    ]
    if args.only:
        variants = [v for v in variants if any(s in v.key() for s in args.only.split(","))]
    if args.configs:
        if args.write_table:
            ap.error("--write-table prunes the candidate space; it does not take --configs")
        configs = [KernelConfig(*map(int, c.split(","))) for c in args.configs.split(";")]
        pairs = [(v, c) for v in variants for c in configs]
    else:
        pairs = cr.default_pairs(variants)
    progress = lambda r: print(cr.markdown_row(r), file=sys.stderr, flush=True)  # noqa: E731
    if args.candidates and not args.configs:
        reuse = [
            cr.result_from_dict(d)
            for f in filter(None, args.reuse.split(","))
            for d in json.loads(Path(f).read_text())["records"]
        ]
        results = cr.prune(variants, args.keep or 10**6, workers=args.workers, reuse=reuse, on_result=progress)
    else:
        results = cr.compile_many(pairs, workers=args.workers, on_result=progress)
    table = cr.compile_table(results)
    print(table)
    bad = {r.variant.key() + " " + r.config.label(): cr.problems(r) for r in results if cr.problems(r)}
    name = args.name or ("candidates" if args.candidates else "defaults")
    meta = metadata({"device": "cpu", "target": "cuda sm_90a", "sample_call": cr.SAMPLE_CALL, "workers": args.workers})
    meta["note"] = (
        "Compiled offline for sm_90a (no GPU): numbers are the compiler's, no timing. "
        "compile_s is wall time on this machine, which may have been shared."
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{name}.json", {**meta, "problems": bad, "records": [r.as_dict() for r in results]})
    atomic_write(
        out / f"{name}.md",
        f"# Compile report ({name}), sm_90a, triton "
        f"{meta['versions']['triton']}, commit {meta['git_commit']}"
        f"{' (dirty)' if meta['git_dirty'] else ''}\n\nSample call: {cr.SAMPLE_CALL}.\n\n{table}",
    )
    if args.write_table:
        path = ROOT / "kernels/bico_kernels/config_table.py"
        atomic_write(path, cr.render_config_table(results, keep=args.keep))
        print(f"wrote {path}")
    total = sum(r.compile_s for r in results)
    print(f"{len(results)} compiles, {total:.0f} s of compile time; {len(bad)} with problems")
    for k, v in bad.items():
        print(f"  {k}: {'; '.join(v)[:160]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
