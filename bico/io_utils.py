"""Atomic file output: write a temporary file beside the target, then rename it."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, value) -> Path:
    return atomic_write(path, json.dumps(value, indent=2) + "\n")


def atomic_savefig(fig, path: str | Path, **kwargs) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **kwargs)
    return atomic_write(path, buffer.getvalue())
