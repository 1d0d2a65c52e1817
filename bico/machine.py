"""What a result was measured on: the CPU, its bf16 hardware, torch threads and library versions.

Recorded in the JSON of ``bico demo``, ``bico ablate`` and the benchmarks. Results are bit-for-bit
repeatable only on the same CPU model with the same versions; elsewhere float rounding differs.
"""

from __future__ import annotations

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
