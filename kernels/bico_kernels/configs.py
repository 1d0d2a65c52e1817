"""Launch configs of the masked-attention kernels: the variants, the candidate space, the pruned table.

Pure Python (no Triton), so the runtime, the compile report and the tests share it without loading
Triton. A *variant* is one kernel the runtime can launch, named by what changes its compiled code:
kernel (fwd, dkdv, dq), head dim, dtype, mirrored RoPE, and for dkdv how dQ is produced. Each
variant has a list of *candidate* configs (tile sizes, warps, pipeline stages); the compile report
(``bico_kernels.compile_report``, ``benchmarks/compile_report.py``) compiles every candidate for
sm_90a and keeps, in ``config_table.py``, only those with zero spills, within shared memory, on
wgmma and without serialisation warnings, best-first. The runtime launches the first survivor,
or times the survivors on the first call (``tuning.py``).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "KernelConfig",
    "Variant",
    "KERNELS",
    "TABLE_DTYPES",
    "TABLE_HEAD_DIMS",
    "runtime_variants",
    "candidate_configs",
    "fallback_config",
    "length_bucket",
    "interpreter_config",
]

KERNELS = ("fwd", "dkdv", "dq")
# What the pruned table covers: what the "bico" attention runs on GPU for Llama-style models.
TABLE_DTYPES = ("bf16", "fp16")
TABLE_HEAD_DIMS = (64, 128)


class KernelConfig(NamedTuple):
    block_m: int  # query rows per tile
    block_n: int  # key rows per tile
    num_warps: int
    num_stages: int

    def label(self) -> str:
        return f"{self.block_m}x{self.block_n} w{self.num_warps} s{self.num_stages}"


class Variant(NamedTuple):
    kernel: str  # "fwd", "dkdv" or "dq"
    head_dim: int
    dtype: str  # "bf16", "fp16", "fp32"
    mirror: bool  # mirrored RoPE fused in
    atomic_dq: bool  # dkdv only: dQ added with atomics (the default) instead of the separate dq pass

    def key(self) -> str:
        dq = ("/atomic-dq" if self.atomic_dq else "/separate-dq") if self.kernel == "dkdv" else ""
        return f"{self.kernel}/d{self.head_dim}/{self.dtype}/{'mirror' if self.mirror else 'plain'}{dq}"


def runtime_variants(dtypes=TABLE_DTYPES, head_dims=TABLE_HEAD_DIMS) -> list[Variant]:
    """Every kernel the runtime can launch for these dtypes and head dims: the forward (mirror off/on),
    dK/dV with atomic dQ (default backward) or without (deterministic backward), and the separate dQ
    pass of the deterministic backward."""
    out = []
    for dtype in dtypes:
        for d in head_dims:
            for mirror in (False, True):
                out.append(Variant("fwd", d, dtype, mirror, False))
                out.append(Variant("dkdv", d, dtype, mirror, True))
                out.append(Variant("dkdv", d, dtype, mirror, False))
                out.append(Variant("dq", d, dtype, mirror, False))
    return out


def candidate_configs(variant: Variant) -> list[KernelConfig]:
    """The search space the compile report prunes, in the order of preference used to rank survivors:
    larger tiles first (fewer passes over K/V or Q, more work per wgmma), then deeper pipelines.

    Why these shapes: one warpgroup (4 warps) issues wgmma over 64 rows, so 4 warps suit 64-row
    tiles and 8 warps 128-row ones (8 warps on 64 rows split the columns and serialise wgmma at
    D=128: ptxas C7515). The accumulators (dK and dV in the dK/dV pass, 128x128 fp32 each at
    D=128) live in registers, so the dK/dV pass walks query blocks of 16-64 rows; 16-row steps and
    no pipelining (1 stage) are the last resort that keeps the mirrored pass with atomic dQ at
    D=128 spill-free (benchmarks/NOTES.md).
    """
    if variant.kernel == "dkdv":  # tile rows are keys (block_n); each step takes block_m query rows
        shapes = [(64, 128, 8), (32, 128, 8), (64, 64, 4), (32, 64, 4), (16, 128, 8), (16, 64, 4)]
        return [KernelConfig(bm, bn, w, s) for bm, bn, w in shapes for s in (3, 2)] + [KernelConfig(16, 64, 4, 1)]
    shapes = [(128, 128, 8), (128, 64, 8), (64, 128, 4), (64, 64, 4), (64, 32, 4)]
    return [KernelConfig(bm, bn, w, s) for bm, bn, w in shapes for s in (3, 2)]


def fallback_config(head_dim: int, dtype: str) -> KernelConfig:
    """Config for variants the pruned table does not cover (fp32, head dims other than 64/128):
    small tiles that compile for sm_90 within shared memory; untuned."""
    dtile = head_dim_tile(head_dim)
    if dtype == "fp32":  # 4-byte tiles: halve the tile area for wide heads
        bm, w, s = (64, 4, 2) if dtile <= 64 else (32, 4, 2) if dtile <= 128 else (16, 4, 1)
        return KernelConfig(bm, bm, w, s)
    bm, w, s = (64, 4, 3) if dtile <= 64 else (64, 8, 2) if dtile <= 128 else (32, 4, 2)
    return KernelConfig(bm, bm, w, s)


def interpreter_config() -> KernelConfig:
    """Under TRITON_INTERPRET every tile op runs through numpy: 16x16 tiles keep CPU tests fast."""
    return KernelConfig(16, 16, 1, 1)


def head_dim_tile(head_dim: int) -> int:
    """Columns of the head-dim tile: two power-of-two RoPE halves (see tiles.py), at least 16."""
    half = max(8, 1 << max(0, (head_dim // 2 - 1).bit_length()))
    return 2 * half


def length_bucket(seq_len: int) -> int:
    """Sequence lengths that share a tuned config: the next power of two, from 256 up to 16384."""
    return min(16384, max(256, 1 << max(0, (seq_len - 1).bit_length())))
