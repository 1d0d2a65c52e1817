"""Where bico keeps files and where it looks for data when a recipe or option names none.

One module for every default location, so that the data layer, the model loader and evaluation
agree on them (and none imports another just for a path).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "BICO_CACHE"  # SmolLM2 converted to safetensors, tokenised corpora, base-model scores
REVERSAL_DATA_ENV = "BICO_REVERSAL_DATA"  # the Berglund-format data dir when data.dir is unset
# The shared data folder of this project's machines, relative to the working directory.
SHARED_DATA = Path("..") / "shared" / "data" / "reversal_curse"
SHARED_REVERSAL_DATA = SHARED_DATA / "experiment1"
# Shipped with bico: the prose sample and general-knowledge set of eval.retention (replay keeps out of them).
RETENTION_DIR = Path(__file__).resolve().parent / "data" / "retention"
GENERIC_PROMPTS = Path(__file__).resolve().parent / "data" / "replay" / "generic_prompts.txt"


def cache_dir() -> Path:
    """``$BICO_CACHE``, else ``~/.cache/bico``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "bico"))
