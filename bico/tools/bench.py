"""``bico bench``: time masked-attention providers on bico's interval masks (Liger-Kernel style).

Per case (a mask family from :mod:`bico.masks`) and provider: one correctness check against a
float64 reference, then per length and mode (fwd, fwd+bwd) ``--warmup`` untimed and ``--repeats``
timed calls (CUDA events on GPU, perf_counter on CPU): median/p20/p80 ms, TFLOP/s over *visible*
(query, key) pairs, CUDA peak memory. Mask preprocessing (dense mask, flex block mask, the kernel's
cached tile classification) is done before timing: in a model every layer shares it. Providers that
cannot run here are listed under ``skipped`` with the reason. triton, flex and matplotlib are
imported only when used.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bico.config import RecipeError
from bico.io_utils import atomic_write_json, pyplot, save_figure
from bico.masks import IntervalMask
from bico.models import DTYPES  # the same formats as bench_options.DTYPE_NAMES
from bico.tools.bench_options import (
    CASE_NAMES,
    CHECK_MAX_T,
    MODES,
    PROVIDERS,
    SEED,
    TOKENS_PER_CALL,
    names_from_list,
    output_paths,
)

CPU_NOTE = (
    "CPU run: only the PyTorch reference (sdpa-dense) ran; the fused Triton kernel and flex attention "
    "need CUDA, so these numbers say nothing about GPU speed."
)


def _packed(T: int, g: torch.Generator) -> IntervalMask:
    """4 causal documents of random lengths (>= 1 token each) packed into T tokens."""
    cuts = sorted((torch.randperm(T - 1, generator=g)[:3] + 1).tolist())
    return IntervalMask.concat([IntervalMask.causal(b - a) for a, b in zip([0] + cuts, cuts + [T])])


def _glm(T: int, g: torch.Generator) -> IntervalMask:
    """GLM blank infilling: Part A bidirectional, Part B causal over A and B, then up to T/8 padding."""
    n = T - int(torch.randint(0, T // 8 + 1, (1,), generator=g))
    return IntervalMask.prefix_lm(n, int(torch.randint(n // 2, n, (1,), generator=g))).pad(T)


CASES = {
    "causal": lambda T, g: IntervalMask.causal(T),
    "bidirectional": lambda T, g: IntervalMask.bidirectional(T),
    "bico": lambda T, g: IntervalMask.bico(T, torch.rand(T, generator=g) < 0.15),  # 15% of keys hidden
    "prefix_lm": lambda T, g: IntervalMask.prefix_lm(T, T // 2),
    "packed": _packed,
    "glm": _glm,
}  # bench_options.CASE_NAMES names them (tests/test_bench.py checks that the two agree)


def build_case(name: str, B: int, T: int, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T]`` int32 lo, hi; random parts drawn per row from a generator seeded by (seed, T)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + T)
    mask = IntervalMask.stack([CASES[name](T, g) for _ in range(B)])
    return mask.lo, mask.hi


def attention_flops(pairs: int, D: int, Hq: int, mode: str) -> float:
    """QK^T and PV: 2*D flops each per visible pair and query head; fwd+bwd counts 2.5x fwd."""
    return 4.0 * D * Hq * pairs * (2.5 if mode == "fwd+bwd" else 1.0)


def synthetic_rope_tables(B: int, T: int, D: int, device, dtype):
    """HF-style RoPE cos/sin ``[B, T, D]`` at positions 0..T-1, base 10000, built without a model (for
    the mirrored-RoPE provider)."""
    f = torch.arange(T, dtype=torch.float64, device=device)[:, None] / 10000.0 ** (
        torch.arange(0, D, 2, dtype=torch.float64, device=device) / D
    )
    emb = torch.cat([f, f], dim=-1).expand(B, T, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def unavailable(provider: str, device: torch.device) -> str | None:
    """Why ``provider`` cannot run on ``device``; None if it can."""
    if provider == "sdpa-dense":
        return None
    if device.type != "cuda":
        return f"{provider} needs a CUDA device (the Triton interpreter and CPU flex are no benchmark)"
    backend = "torch.nn.attention.flex_attention" if provider == "flex" else "triton"
    return None if _try(lambda: importlib.import_module(backend)) else f"{provider}: {backend} does not import"


def make_attention(provider: str, lo: torch.Tensor, hi: torch.Tensor, D: int, dtype: torch.dtype):
    """``(f(q, k, v) -> out, mirror tables or None)``, with the mask preprocessing done here, once."""
    B, T = lo.shape
    if provider == "sdpa-dense":
        import torch.nn.functional as F

        from bico_kernels import additive_mask

        mask = additive_mask(lo, hi, dtype)
        return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)), None
    if provider in ("bico-triton", "bico-triton-mirror"):
        import bico_kernels

        tables = synthetic_rope_tables(B, T, D, lo.device, dtype) if provider.endswith("mirror") else None
        classify = IntervalMask(lo, hi).blocks  # classified in the untimed warm-up, then cached
        return (
            lambda q, k, v: bico_kernels.masked_attention(q, k, v, lo, hi, mirror_rope=tables, classify=classify)
        ), tables
    if provider == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        torch._dynamo.reset()  # one compile per mask (in warm-up), never dynamo's recompile limit
        fn = torch.compile(flex_attention, dynamic=False)

        def mask_mod(b, h, q_idx, kv_idx):
            kv = kv_idx.clamp(max=T - 1)  # flex may pad T up to its block size
            return (kv_idx < T) & (lo[b, kv] <= q_idx) & (q_idx < hi[b, kv])

        block_mask = create_block_mask(mask_mod, B, None, T, T, device=lo.device)
        return (lambda q, k, v: fn(q, k, v, block_mask=block_mask, enable_gqa=True)), None
    raise RecipeError(f"unknown provider {provider!r}; available: {', '.join(PROVIDERS)}")


def _qkv(B, T, Hq, Hkv, D, dtype, device, seed, requires_grad=False):
    g = torch.Generator(device=device).manual_seed(seed)
    return [
        torch.randn(s, generator=g, device=device, dtype=dtype).requires_grad_(requires_grad)
        for s in ((B, Hq, T, D), (B, Hkv, T, D), (B, Hkv, T, D))
    ]


def check_error(provider, mode, lo, hi, Hq, Hkv, D, dtype) -> float:
    """Max abs error of out (and dq, dk, dv for fwd+bwd) against the float64 reference. Rows that
    see no key (padding) are left out of the output and get no upstream gradient: a dense additive
    mask gives them a uniform softmax where the reference and the kernel give 0."""
    from bico_kernels import dense_visibility, reference_masked_attention

    fn, tables = make_attention(provider, lo, hi, D, dtype)
    grad = mode == "fwd+bwd"
    xs = _qkv(*lo.shape, Hq, Hkv, D, dtype, lo.device, SEED + 1, requires_grad=grad)
    refs = [x.detach().double().requires_grad_(grad) for x in xs]
    rows = dense_visibility(lo, hi).any(-1)[:, None, :, None]
    mirror = None if tables is None else tuple(t.double() for t in tables)
    with torch.set_grad_enabled(grad):
        out, ref = fn(*xs), reference_masked_attention(*refs, lo, hi, mirror_rope=mirror)
    errs = [((out.double() - ref) * rows).abs().max()]
    if grad:
        do = (
            torch.randn(
                ref.shape,
                generator=torch.Generator(lo.device).manual_seed(SEED + 2),
                device=lo.device,
                dtype=torch.float64,
            )
            * rows
        )
        out.backward(do.to(dtype))
        ref.backward(do)
        errs += [(x.grad.double() - r.grad).abs().max() for x, r in zip(xs, refs)]
    return float(max(e.detach() for e in errs))


def time_provider(fn, q, k, v, mode, warmup, repeats) -> dict:
    """Median/p20/p80 ms of ``repeats`` calls after ``warmup`` ones; CUDA peak memory in MiB."""
    cuda = q.device.type == "cuda"
    if mode == "fwd":
        step = torch.no_grad()(lambda: fn(q, k, v))
    else:
        q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
        do = torch.randn_like(q)

        def step():
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(do)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    qs = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    p20, med, p80 = torch.tensor(times, dtype=torch.float64).quantile(qs).tolist()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return {"median_ms": med, "p20_ms": p20, "p80_ms": p80, "peak_mem_mb": peak}


def _why(err: BaseException) -> str:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return "out of memory"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def run_bench(cfg: dict, progress: bool = True) -> dict:
    """Check, then time every (case, T, provider, mode); returns the JSON-ready result."""
    from tqdm.auto import tqdm

    device, dtype = torch.device(cfg["device"]), DTYPES[cfg["dtype"]]
    Hq, Hkv, D = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    skipped, records, errors, runnable = [], [], {}, []
    for p in cfg["providers"]:
        reason = unavailable(p, device)
        if reason:
            skipped.append({"provider": p, "case": None, "mode": None, "T": None, "reason": reason})
        else:
            runnable.append(p)
    bar = tqdm(
        total=len(cfg["cases"]) * len(runnable) * len(cfg["modes"]) * (1 + len(cfg["seqlens"])),
        desc="bench",
        unit="run",
        disable=not progress,
    )
    for case in cfg["cases"]:
        lo, hi = (x.to(device) for x in build_case(case, cfg["check_batch"], cfg["check_T"]))
        for p in runnable:
            for mode in cfg["modes"]:
                bar.set_postfix_str(f"check {case} {p} {mode}")
                try:
                    errors[case, p, mode] = check_error(p, mode, lo, hi, Hq, Hkv, D, dtype)
                except Exception as err:  # recorded; this (case, provider, mode) is then not timed
                    skipped.append(
                        {
                            "provider": p,
                            "case": case,
                            "mode": mode,
                            "T": cfg["check_T"],
                            "reason": f"correctness check failed: {_why(err)}",
                        }
                    )
                bar.update(1)
        for T in cfg["seqlens"]:
            B = cfg["batch"] or max(1, TOKENS_PER_CALL // T)
            lo, hi = (x.to(device) for x in build_case(case, B, T))
            pairs = IntervalMask(lo, hi).visible_pairs()  # TFLOP/s count visible pairs only
            q, k, v = _qkv(B, T, Hq, Hkv, D, dtype, device, SEED)
            for p in runnable:
                fn = None
                for mode in cfg["modes"]:
                    bar.set_postfix_str(f"{case} T={T} {p} {mode}")
                    bar.update(1)
                    if (case, p, mode) not in errors:
                        continue
                    try:
                        fn = fn or make_attention(p, lo, hi, D, dtype)[0]
                        stats = time_provider(fn, q, k, v, mode, cfg["warmup"], cfg["repeats"])
                    except Exception as err:  # e.g. out of memory at the longest T: recorded, go on
                        skipped.append({"provider": p, "case": case, "mode": mode, "T": T, "reason": _why(err)})
                        continue
                    tflops = attention_flops(pairs, D, Hq, mode) / (stats["median_ms"] * 1e-3) / 1e12
                    records.append(
                        {
                            "case": case,
                            "provider": p,
                            "mode": mode,
                            "T": T,
                            "B": B,
                            "Hq": Hq,
                            "Hkv": Hkv,
                            "D": D,
                            "dtype": cfg["dtype"],
                            **stats,
                            "tflops": tflops,
                            "visible_pairs": pairs,
                            "max_abs_err": errors[case, p, mode],
                        }
                    )
                del fn
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    bar.close()
    return {**metadata(cfg), "skipped": skipped, "records": records}


def _try(fn):
    try:
        return fn()
    except Exception:  # metadata only: a missing package or no git checkout gives None
        return None


def metadata(cfg: dict) -> dict:
    from bico.machine import cpu_model, library_versions

    cuda = cfg["device"] == "cuda"
    git = lambda *a: _try(
        lambda: subprocess.run(
            ["git", *a],
            cwd=Path(__file__).resolve().parent,
            check=True,  # noqa: E731
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    )
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({cpu_model()})",
        "versions": {**library_versions(), "torch": torch.__version__},
        "command": list(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "config": cfg,
        "note": None if cuda else CPU_NOTE,
    }


def plot_bench(result: dict, path: Path) -> Path:
    """One subplot per (case, mode): median ms vs T per provider, log-log, p20-p80 error bars."""
    plt = pyplot()
    cfg = result["config"]
    cases, modes = cfg["cases"], cfg["modes"]
    fig, axes = plt.subplots(len(cases), len(modes), figsize=(4.6 * len(modes), 3.3 * len(cases)), squeeze=False)
    for i, case in enumerate(cases):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for p in cfg["providers"]:
                rs = sorted(
                    (r for r in result["records"] if (r["case"], r["mode"], r["provider"]) == (case, mode, p)),
                    key=lambda r: r["T"],
                )
                if rs:
                    med = [r["median_ms"] for r in rs]
                    err = [[m - r["p20_ms"] for m, r in zip(med, rs)], [r["p80_ms"] - m for m, r in zip(med, rs)]]
                    ax.errorbar([r["T"] for r in rs], med, yerr=err, marker="o", ms=3, capsize=2, label=p)
            ax.set(xscale="log", yscale="log", title=f"{case} / {mode}", xlabel="T", ylabel="median ms (p20-p80)")
            ax.set_xticks(cfg["seqlens"], [str(t) for t in cfg["seqlens"]])
            ax.set_xticks([], minor=True)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(f"{result['device']}, {cfg['dtype']}, Hq={cfg['heads']} Hkv={cfg['kv_heads']} D={cfg['head_dim']}")
    save_figure(fig, path, dpi=100)
    return path


def bench_table(result: dict) -> str:
    providers = list(dict.fromkeys(r["provider"] for r in result["records"]))
    at = {(r["case"], r["mode"], r["T"], r["provider"]): r for r in result["records"]}
    lines = [
        "| case | mode | T | B | " + " | ".join(f"{p}: ms (TFLOP/s, err)" for p in providers) + " |",
        "|" + "---|" * (4 + len(providers)),
    ]
    for key in dict.fromkeys(k[:3] for k in at):
        row = [at.get((*key, p)) for p in providers]
        cells = [f"{r['median_ms']:.3g} ({r['tflops']:.3g}, {r['max_abs_err']:.1e})" if r else "-" for r in row]
        lines.append(f"| {' | '.join(map(str, key))} | {next(r['B'] for r in row if r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def config_from_args(args) -> dict:
    """Validate the arguments (one-line RecipeError) and fill in the device-dependent defaults."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RecipeError("--device cuda: no CUDA device is available")
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    try:
        seqlens = [int(t) for t in (args.seqlens or ("1024,2048,4096,8192,16384" if gpu else "256,512")).split(",")]
    except ValueError:
        raise RecipeError(f"--seqlens wants comma-separated integers, got {args.seqlens!r}") from None
    heads, kv_heads = args.heads or (32 if gpu else 4), args.kv_heads or (8 if gpu else 2)
    head_dim = args.head_dim or (128 if gpu else 64)
    if min(seqlens) < 8:
        raise RecipeError(f"--seqlens: every length must be >= 8, got {min(seqlens)}")
    if heads % kv_heads:
        raise RecipeError(f"--heads {heads} is not a multiple of --kv-heads {kv_heads}")
    if head_dim % 2:
        raise RecipeError(f"--head-dim must be even (RoPE pairs), got {head_dim}")
    if (args.repeats or 1) < 1 or args.warmup < 0 or (args.batch or 1) < 1:
        raise RecipeError("--repeats and --batch must be >= 1, --warmup >= 0")
    batch = args.batch or (None if gpu else 1)
    return {
        "cases": names_from_list(args.cases, CASE_NAMES, "case"),
        "providers": names_from_list(args.providers, PROVIDERS, "provider"),
        "modes": names_from_list(args.modes, MODES, "mode"),
        "seqlens": seqlens,
        "batch": batch,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "dtype": args.dtype or ("bf16" if gpu else "fp32"),
        "device": "cuda" if gpu else "cpu",
        "repeats": args.repeats or (20 if gpu else 5),
        "warmup": args.warmup,
        "seed": SEED,
        "check_T": min(min(seqlens), CHECK_MAX_T),
        "check_batch": min(batch or 2, 2),
    }


def run_command(args) -> int:
    """``bico bench`` with its parsed arguments: time, write the JSON and PNG, print the table."""
    result = run_bench(config_from_args(args), progress=not args.no_progress)
    json_path, png_path = output_paths(args.out, result["device"])
    atomic_write_json(json_path, result)
    plot_bench(result, png_path)
    print(bench_table(result))
    for s in result["skipped"]:
        where = " ".join(f"{k}={s[k]}" for k in ("case", "mode", "T") if s[k] is not None)
        print(f"skipped {s['provider']}{f' ({where})' if where else ''}: {s['reason']}")
    if result["note"]:
        print(result["note"])
    print(f"wrote {json_path} and {png_path}")
    return 0
