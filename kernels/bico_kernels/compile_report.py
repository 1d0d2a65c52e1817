"""Compile the masked-attention kernels for Hopper (sm_90a) without a GPU and read the compiler's report.

``triton.compile`` reaches a cubin on a CPU-only machine when the target is given explicitly. What it
tells us: registers per thread, spilled bytes and warnings (from the ptxas log, which only a real
driver would otherwise fill into the metadata), shared memory per block (metadata), and whether the
dots became ``wgmma`` (the PTX). Each launch is specialised exactly as the runtime specialises it:
the arguments come from the runtime's own launch builders (``fwd_launch`` etc.) on a representative
call, and Triton's own binder types them (16-byte-aligned pointers, which ints are 1 or divisible
by 16), so the kernel measured is the kernel a GPU run would compile.

Imports Triton (not part of ``import bico_kernels``); must run in a process where TRITON_INTERPRET
is not set, since the interpreter replaces the kernels. Used by ``benchmarks/compile_report.py``
and ``tests/test_kernel_compile.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import multiprocessing
import multiprocessing.connection
import os
import re
import tempfile
import time
from typing import NamedTuple

import torch

from .blocks import classify_blocks
from .configs import KernelConfig, Variant, candidate_configs

__all__ = [
    "CompileResult",
    "SAMPLE_CALL",
    "SMEM_LIMIT",
    "compile_variant",
    "compile_many",
    "problems",
    "ptxas_available",
    "compile_table",
    "markdown_row",
    "default_pairs",
    "render_config_table",
    "result_from_dict",
    "prune",
    "kernel_hashes",
]

SMEM_LIMIT = 227 * 1024  # H100/H200: 228 KB per SM, 227 KB usable by one block
# The call whose argument specialisation is measured: Llama-3-8B heads (GQA 32/8) at a training
# length, in the HF layout [B, T, H, D].transpose(1, 2) that the "bico" attention passes. Every
# stride is then divisible by 16, as is T; GROUP = 4 and HKV = 8 are not, and no int is 1.
SAMPLE_CALL = dict(batch=2, heads=32, kv_heads=8, seq_len=4096)
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class CompileResult(NamedTuple):
    variant: Variant
    config: KernelConfig
    registers: int
    spill_stores: int  # bytes per thread
    spill_loads: int
    stack_frame: int  # bytes per thread of local memory
    shared: int  # bytes per block
    wgmma: int  # wgmma.mma_async instructions in the PTX
    warnings: tuple  # ptxas warning lines, e.g. C7515 (wgmma serialised)
    compile_s: float
    error: str = ""  # set when the compile failed (then the numbers are 0)
    kernel_hash: str = ""  # kernel_hashes(): stored results are reusable while it is unchanged

    def as_dict(self) -> dict:
        d = self._asdict()
        d["variant"] = self.variant.key()
        d["config"] = list(self.config)
        d["warnings"] = list(self.warnings)
        return d


def result_from_dict(d: dict) -> CompileResult:
    """Inverse of ``CompileResult.as_dict`` (reports are stored as JSON)."""
    kernel, dim, dtype, mirror, *dq = d["variant"].split("/")
    variant = Variant(kernel, int(dim[1:]), dtype, mirror == "mirror", dq == ["atomic-dq"])
    return CompileResult(**dict(d, variant=variant, config=KernelConfig(*d["config"]), warnings=tuple(d["warnings"])))


def kernel_hashes() -> dict[str, str]:
    """A hash of the device code, by kernel name: the source text of every Triton function of the
    kernel modules, and the Triton version. Not Triton's own cache key, which also hashes line
    numbers, so that moving code (or editing host code above it) does not invalidate stored results."""
    import triton
    from triton.runtime.jit import JITFunction

    modules = [importlib.import_module(f".{m}", __package__) for m in ("triton_attention", "tiles")]
    sources = sorted({f.src for m in modules for f in vars(m).values() if isinstance(f, JITFunction)})
    digest = hashlib.sha256("\n".join([f"triton {triton.__version__}", *sources]).encode()).hexdigest()
    return {kernel: digest for kernel in ("fwd", "dkdv", "dq")}


def ptxas_available() -> str:
    """'' when triton imports and ships a ptxas for sm_90a here, else why not."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
    except Exception as e:  # ImportError, or a broken install
        return f"triton is not importable: {e}"
    try:
        path = get_ptxas(90).path  # the sm_90 ptxas (the wheel ships it as ptxas-blackwell)
    except Exception as e:
        return f"no ptxas for sm_90a: {e}"
    return "" if path and os.access(path, os.X_OK) else f"ptxas not executable: {path}"


def _sample_launch(variant: Variant, config: KernelConfig):
    impl = importlib.import_module(".triton_attention", __package__)  # the module; imports triton
    if impl._INTERPRETED:
        raise RuntimeError("TRITON_INTERPRET is set in this process: the kernels are interpreted, not compiled")
    B, H, HKV, T = (SAMPLE_CALL[k] for k in ("batch", "heads", "kv_heads", "seq_len"))
    D, dtype = variant.head_dim, _TORCH_DTYPES[variant.dtype]
    # torch.empty maps memory lazily: these hundreds of MB are never touched.
    hf = lambda h, dt=dtype: torch.empty(B, T, h, D, dtype=dt).transpose(1, 2)  # noqa: E731
    q, k, v, do, o = hf(H), hf(HKV), hf(HKV), hf(H), hf(H)
    lse, delta = (torch.empty(B, H, T) for _ in range(2))
    lo = torch.arange(T, dtype=torch.int32).expand(B, T).contiguous()  # causal; the mask is data, not code
    hi = torch.full((B, T), T, dtype=torch.int32)
    mirror = impl.Mirror(hf(H), hf(HKV), torch.empty(B, T, D), torch.empty(B, T, D)) if variant.mirror else None
    blocks = classify_blocks(lo, hi, config.block_m, config.block_n)
    scale, prec = D**-0.5, "ieee"
    if variant.dtype == "fp32" and torch.get_float32_matmul_precision() != "highest":
        prec = "tf32"
    if variant.kernel == "fwd":
        return impl.fwd_launch(q, k, v, o, lse, lo, hi, mirror, scale, blocks, prec, config)
    if variant.kernel == "dkdv":
        dq32 = torch.empty(B, T, H, D).transpose(1, 2)
        return impl.dkdv_launch(
            q,
            k,
            v,
            do,
            torch.empty_like(k),
            torch.empty_like(v),
            dq32,
            torch.empty_like(dq32),
            lse,
            delta,
            lo,
            hi,
            mirror,
            scale,
            blocks,
            prec,
            config,
            variant.atomic_dq,
        )
    return impl.dq_launch(q, k, v, do, torch.empty_like(q), lse, delta, lo, hi, mirror, scale, blocks, prec, config)


def _specialise(launch, backend):
    # Triton's own binder, as JITFunction.run uses it: same signature types, constexprs, attributes.
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.constexprs, num_warps=launch.config.num_warps, num_stages=launch.config.num_stages)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs), options


_PTXAS_USAGE = re.compile(r"Used (\d+) registers")
# ptxas prints real problems as warnings and performance advice such as "(C7515) ... wgmma.mma_async
# instructions are serialized ..." as info lines with a code; both count. Line numbers are dropped
# so that the same advice compares equal across edits.
_CODED = re.compile(r"\(C\d{4}\)")
_LINE_SUFFIX = re.compile(r"\s+in line \d+\s*$")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_variant(variant: Variant, config: KernelConfig) -> CompileResult:
    """Compile one variant with one config for sm_90a in a fresh cache; never raises for compile errors."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget("cuda", 90, 32)
    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        src, options = _specialise(_sample_launch(variant, config), make_backend(target))
        # A cache hit prints no ptxas log: compile into an empty cache every time.
        with (
            tempfile.TemporaryDirectory(prefix="bico-compile-") as cache,
            triton.knobs.cache.scope(),
            triton.knobs.nvidia.scope(),
            contextlib.redirect_stdout(log),
        ):
            triton.knobs.cache.dir = cache
            triton.knobs.nvidia.dump_ptxas_log = True
            compiled = triton.compile(src, target=target, options=options.__dict__)
    except Exception as e:  # out of shared memory at compile time, ptxas failure, ...
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return CompileResult(variant, config, 0, 0, 0, 0, 0, 0, (), time.perf_counter() - t0, msg)
    text = log.getvalue()
    khash = kernel_hashes()[variant.kernel]
    regs = _PTXAS_USAGE.search(text)
    spill = _PTXAS_SPILL.search(text)
    warnings = tuple(
        sorted(
            {
                _LINE_SUFFIX.sub("", line.split(":", 1)[1]).strip()
                for line in text.splitlines()
                if _CODED.search(line) or "warning" in line.split(":", 1)[0]
            }
        )
    )
    return CompileResult(
        variant,
        config,
        int(regs.group(1)) if regs else -1,
        int(spill.group(2)) if spill else -1,
        int(spill.group(3)) if spill else -1,
        int(spill.group(1)) if spill else -1,
        int(compiled.metadata.shared),
        compiled.asm["ptx"].count("wgmma.mma_async"),
        warnings,
        time.perf_counter() - t0,
        kernel_hash=khash,
    )


def _child(pair, conn, log_path):
    # The compiler can abort the process (an MLIR assertion on some tile shapes), so each compile
    # runs in its own forked process; its C++ output goes to a file, read back on failure.
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    conn.send(compile_variant(*pair))
    conn.close()


def compile_many(pairs, workers: int = 1, timeout_s: float = 900.0, on_result=None) -> list[CompileResult]:
    """Compile (variant, config) pairs, each in a forked process, ``workers`` at a time (ptxas is
    single-threaded). A compile that crashes or times out gives a result with ``error`` set.
    ``on_result(result)`` is called as each one finishes."""
    pairs = list(pairs)
    importlib.import_module(".triton_attention", __package__)  # children inherit this snapshot of the kernels
    ctx = multiprocessing.get_context("fork")
    results: list = [None] * len(pairs)
    running = {}  # sentinel -> (index, process, receiving end, log path, start time)
    with tempfile.TemporaryDirectory(prefix="bico-compile-logs-") as logs:
        todo = list(enumerate(pairs))
        while todo or running:
            while todo and len(running) < max(1, workers):
                i, pair = todo.pop(0)
                recv, send = ctx.Pipe(duplex=False)
                log_path = os.path.join(logs, f"{i}.log")
                proc = ctx.Process(target=_child, args=(pair, send, log_path), daemon=True)
                proc.start()
                send.close()
                running[proc.sentinel] = (i, proc, recv, log_path, time.perf_counter())
            ready = multiprocessing.connection.wait(list(running), timeout=5.0)
            for sentinel in list(running):
                i, proc, recv, log_path, t0 = running[sentinel]
                late = time.perf_counter() - t0 > timeout_s
                if sentinel not in ready and not late:
                    continue
                if late:
                    proc.kill()
                proc.join()
                del running[sentinel]
                result = recv.recv() if recv.poll() else None
                if result is None:
                    with open(log_path, errors="replace") as f:
                        first = next((ln.strip() for ln in f if "error" in ln.lower()), "")
                    why = "timed out" if late else f"compiler process died (exit {proc.exitcode})"
                    result = CompileResult(
                        *pairs[i], 0, 0, 0, 0, 0, 0, (), time.perf_counter() - t0, f"{why}: {first[:200]}"
                    )
                results[i] = result
                if on_result is not None:
                    on_result(result)
    return results


def problems(r: CompileResult) -> list[str]:
    """What makes this compiled kernel unfit: error, spills, too much shared memory, no wgmma, warnings."""
    if r.error:
        return [r.error]
    out = []
    if r.spill_stores or r.spill_loads or r.registers < 0:
        out.append(f"spills {r.spill_stores}/{r.spill_loads} B")
    if r.shared > SMEM_LIMIT:
        out.append(f"shared memory {r.shared} > {SMEM_LIMIT}")
    if r.wgmma == 0 and r.variant.dtype != "fp32":
        out.append("no wgmma")
    out.extend(r.warnings)
    return out


def prune(variants, keep: int, workers: int = 1, reuse=(), on_result=None) -> list[CompileResult]:
    """Walk each variant's candidates in order of preference until ``keep`` clean ones are found
    (or the space is exhausted); compiles proceed in rounds, one candidate per unfinished variant,
    ``workers`` at a time. ``reuse``: stored results, used instead of compiling when their kernel
    hash matches the current source. Returns every result looked at, in candidate order."""
    hashes = kernel_hashes()
    stored = {(r.variant, r.config): r for r in reuse if r.kernel_hash and r.kernel_hash == hashes[r.variant.kernel]}
    todo = {v: list(candidate_configs(v)) for v in variants}
    seen: dict = {v: [] for v in variants}
    while todo:
        batch = []
        for v in list(todo):
            done = lambda: sum(not problems(r) for r in seen[v]) >= keep  # noqa: E731
            while todo[v] and (v, todo[v][0]) in stored and not done():  # reuse without compiling
                r = stored[(v, todo[v].pop(0))]
                seen[v].append(r)
                if on_result is not None:
                    on_result(r)
            if done() or not todo[v]:
                del todo[v]
            else:
                batch.append((v, todo[v].pop(0)))
        for r in compile_many(batch, workers=workers, on_result=on_result):
            seen[r.variant].append(r)
    return [r for v in variants for r in seen[v]]


def default_pairs(variants) -> list[tuple[Variant, KernelConfig]]:
    """The config each variant launches with when nothing is tuned: the table's first candidate."""
    from .tuning import candidates

    return [(v, candidates(v)[0]) for v in variants]


def markdown_row(r: CompileResult) -> str:
    if r.error:
        return f"| {r.variant.key()} | {r.config.label()} | error: {r.error} | | | | | {r.compile_s:.1f} |"
    warn = "; ".join(m.group(0)[1:-1] if (m := _CODED.search(w)) else w[:60] for w in r.warnings) or "-"
    return (
        f"| {r.variant.key()} | {r.config.label()} | {r.registers} | {r.spill_stores}/{r.spill_loads} "
        f"| {r.shared:,} | {r.wgmma} | {warn} | {r.compile_s:.1f} |"
    )


def compile_table(results) -> str:
    return (
        "| variant | config | regs | spill st/ld (B) | smem (B) | wgmma | warnings | compile s |\n"
        "|---|---|---|---|---|---|---|---|\n" + "".join(markdown_row(r) + "\n" for r in results)
    )


def render_config_table(results, keep: int = 0) -> str:
    """Source of ``config_table.py``. TABLE: per variant key (``configs.Variant.key``), the candidate
    configs (block_m, block_n, num_warps, num_stages) that compiled for sm_90a with zero spills,
    within 227 KB of shared memory, on wgmma and without ptxas warnings or advice, in the candidate
    order (the order of preference). KNOWN_SPILLS: a variant with no clean candidate keeps its least
    spilling one (then the candidate order), with its (spill stores, spill loads) in bytes per
    thread, so that the compile gate holds it to "no worse than committed" instead of zero.
    ``keep`` > 0: at most that many candidates per variant."""
    by_variant: dict = {}
    for r in results:
        by_variant.setdefault(r.variant.key(), []).append(r)
    rows, known = [], []
    for key, rs in by_variant.items():
        clean = [r for r in rs if not problems(r)][: keep or None]
        if not clean:
            fits = [r for r in rs if not r.error and r.shared <= SMEM_LIMIT and r.registers >= 0]
            clean = sorted(fits, key=lambda r: r.spill_stores + r.spill_loads)[:1]
            if clean:
                known.append(f"    {key!r}: ({clean[0].spill_stores}, {clean[0].spill_loads}),")
        if clean:
            rows.append(f"    {key!r}: [{', '.join(repr(tuple(r.config)) for r in clean)}],")
    return (
        '''"""Pruned launch-config table: generated by ``benchmarks/compile_report.py --candidates --write-table``
(``bico_kernels.compile_report.render_config_table`` says what the entries are); do not edit by hand.
"""
TABLE: dict[str, list[tuple[int, int, int, int]]] = {
'''
        + "\n".join(rows)
        + "\n}\nKNOWN_SPILLS: dict[str, tuple[int, int]] = {\n"
        + "".join(k + "\n" for k in known)
        + "}\n"
    )
