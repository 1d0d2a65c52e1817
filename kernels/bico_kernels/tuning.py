"""Which launch config a kernel call uses: the pruned table's candidates, timed once per key on the GPU.

Pure Python (Triton is not imported here). The candidates of a variant are the compile-checked
survivors in ``config_table.py`` (zero spills, within shared memory, wgmma, no serialisation
warning), best-first; variants the table does not cover fall back to one small untuned config.

On CUDA, the first call of each (variant, sequence-length bucket) times every candidate on the
call's own inputs (into scratch outputs) and keeps the fastest for the rest of the process, as
``@triton.autotune`` would; it cannot be used directly here because the tile sizes also decide the
block classification that the kernels take as input. Environment:

* ``BICO_KERNEL_AUTOTUNE=0``: no timing, take the table's first candidate.
* ``BICO_KERNEL_TUNE_FILE=path.json``: winners are read from and written to this file (one section
  per GPU name and Triton version), so later processes skip the timing; delete it to re-tune.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from .config_table import TABLE
from .configs import KernelConfig, Variant, fallback_config, length_bucket

__all__ = ["candidates", "table_config", "tuned_config", "autotune_enabled", "tuning_key", "clear", "check_tune_file"]

logger = logging.getLogger(__name__)
_tuned: dict[tuple[str, str], KernelConfig] = {}  # (scope, tuning key) -> winner, this process


def candidates(variant: Variant) -> list[KernelConfig]:
    """The pruned table's survivors for this variant, best-first, or the untuned fallback."""
    rows = TABLE.get(variant.key())
    return [KernelConfig(*r) for r in rows] if rows else [fallback_config(variant.head_dim, variant.dtype)]


def table_config(variant: Variant) -> KernelConfig:
    return candidates(variant)[0]


def autotune_enabled() -> bool:
    return os.environ.get("BICO_KERNEL_AUTOTUNE", "1").strip() not in ("0", "", "false", "no")


def tuning_key(variant: Variant, seq_len: int) -> str:
    return f"{variant.key()}/T{length_bucket(seq_len)}"


def clear() -> None:
    """Forget this process's tuning results (the file, if any, is left alone)."""
    _tuned.clear()


def tuned_config(variant: Variant, seq_len: int, cands: list[KernelConfig], bench, scope: str = "") -> KernelConfig:
    """The fastest of ``cands`` for this variant and length bucket; ``bench(config)`` -> milliseconds.

    Candidates that fail to compile or launch are skipped (logged); if all fail, the first is
    returned so that the real launch reports the error."""
    if len(cands) == 1 or not autotune_enabled():
        return cands[0]
    key = tuning_key(variant, seq_len)
    hit = _tuned.get((scope, key))
    if hit is not None:
        return hit
    path = os.environ.get("BICO_KERNEL_TUNE_FILE")
    stored = _read(path).get(scope, {}).get(key) if path else None
    if stored is not None and tuple(stored) in set(cands):
        _tuned[(scope, key)] = KernelConfig(*stored)
        return _tuned[(scope, key)]
    times = {}
    for c in cands:
        try:
            times[c] = float(bench(c))
        except Exception as e:  # out of resources on this GPU, compile error: not a candidate here
            logger.warning("bico_kernels: %s %s failed while tuning: %s", key, c.label(), str(e).splitlines()[0])
            times[c] = math.inf
    best = min(cands, key=lambda c: times[c])  # ties keep the table's order
    logger.info(
        "bico_kernels: tuned %s: %s (%.3f ms; %d candidates, slowest %.3f ms)",
        key,
        best.label(),
        times[best],
        len(cands),
        max(t for t in times.values() if t < math.inf) if times[best] < math.inf else math.inf,
    )
    _tuned[(scope, key)] = best
    if path and times[best] < math.inf:
        _write(path, scope, key, best)
    return best


def _read(path) -> dict:
    """The tuning file's sections ({} when there is no file yet). Anything else there is refused,
    not overwritten: the variable may point at some other file by mistake."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ValueError(
            f"BICO_KERNEL_TUNE_FILE={path} cannot be read ({err.strerror}); point it at a writable file, or unset it"
        ) from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not (isinstance(data, dict) and all(isinstance(v, dict) for v in data.values())):
        raise ValueError(
            f"BICO_KERNEL_TUNE_FILE={path} does not hold bico's kernel tuning results (a JSON object "
            "of sections); delete the file to re-tune, or point the variable at another file"
        )
    return data


def check_tune_file() -> None:
    """Fail at start-up, not at the first kernel call, when ``BICO_KERNEL_TUNE_FILE`` is unusable."""
    path = os.environ.get("BICO_KERNEL_TUNE_FILE")
    if path:
        _read(path)


def _write(path, scope, key, config):
    data = _read(path)
    data.setdefault(scope, {})[key] = list(config)
    tmp = Path(f"{path}.tmp{os.getpid()}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)  # atomic: concurrent ranks never read half a file
