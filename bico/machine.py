"""What a result was measured on (the CPU, its bf16 hardware, torch threads, library versions),
and the one process setting CPU training makes: freed memory kept for reuse.

Recorded in the JSON of ``bico demo``, ``bico ablate`` and the benchmarks. Results are bit-for-bit
repeatable only on the same CPU model with the same versions; elsewhere float rounding differs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LIBRARIES = ("torch", "transformers", "peft", "datasets", "accelerate", "triton", "deepspeed")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPU flags of native bf16 matmul hardware (Intel AMX, AVX512-BF16)


@lru_cache(maxsize=1)
def _cpuinfo() -> dict:
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags") and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    return info


def cpu_model() -> str:
    """The CPU's model name (timings are only comparable on the same kind of machine)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_bf16_flags() -> list[str]:
    """The native-bf16 flags this CPU reports (empty: no bf16 matmul hardware, or not Linux)."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in BF16_FLAGS if f in flags]


# glibc's mallopt parameters (malloc.h) and glibc's defaults for them
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_MMAP_MAX: 65536, _M_TRIM_THRESHOLD: 128 * 1024}
KEEP_FREED_MEMORY = True  # what CPU training asks for; benchmarks/train_throughput.py sets it to measure both


def keep_freed_memory(keep: bool = True) -> bool:
    """Keep freed memory in the process for reuse instead of returning it to the OS (glibc only).

    glibc serves every allocation above 32 MB by mmap and unmaps it on free, so a CPU training step
    faults its large tensors in anew each time (the tied embedding's 113 MB gradient, the logits):
    5x the page faults of a SmolLM2 step (NOTES-cpu-speed.md section 4). With mmap off and trimming
    off, freed blocks are reused, as a caching allocator would reuse them; the price is that the
    process keeps its peak memory until it exits. ``keep=False`` restores glibc's defaults.
    ``True`` where the setting took effect.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: another libc's mallopt means other things
    except (OSError, AttributeError, TypeError):
        return False
    wanted = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2**31 - 1} if keep else _GLIBC_DEFAULTS
    return all(libc.mallopt(param, value) == 1 for param, value in wanted.items())


def library_versions() -> dict:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def machine_info() -> dict:
    import torch

    return {
        "cpu": cpu_model(),
        "cpu_bf16": cpu_bf16_flags(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": library_versions(),
    }
