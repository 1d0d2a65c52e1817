"""``bico bench``'s vocabulary: providers, cases, modes, dtypes and its fixed sizes, the output
paths. Torch-free, so that the command line (:mod:`bico.cli.bench`) builds its parser from the
same names that :mod:`bico.tools.bench` times, without loading torch."""

from __future__ import annotations

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
        raise RecipeError(
            f"unknown {what} {', '.join(map(repr, bad)) or '(none given)'}; available: {', '.join(valid)}"
        )
    return names


def output_paths(out: str, device: str) -> tuple[Path, Path]:
    """``--out`` is a folder (files ``attention-<device slug>.json/.png``) or a ``.json`` path."""
    path = Path(out)
    if path.suffix != ".json":
        slug = "cpu" if device.startswith("cpu") else re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
        path = path / f"attention-{slug}.json"
    return path, path.with_suffix(".png")
