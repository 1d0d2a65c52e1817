"""Atomic file output: write a temporary file or folder beside the target, then rename it.

A reader (or a run killed half-way) never sees a half-written file. Temporary names start with
a dot and the target's name (``.eval.json.x1y2``, ``.model-x1y2``), so leftovers of a killed
process are recognisable. Files get the permissions of a plain ``open()`` (0666 minus the
umask) and folders those of ``mkdir`` (0777 minus the umask), not ``mkstemp``'s 0600/0700.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (what the data caches, resume and checkpoint checks judge a file by)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # the rename must not become visible before the data is on disk
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # a full disk in f.write names no file: name the one being written
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_safe(value):
    """``value`` with NaN and infinities replaced by ``None``: ``json`` would write ``NaN``, which
    is not JSON (strict parsers such as ``jq`` or JavaScript reject the whole file)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: str | Path, value) -> Path:
    return atomic_write(path, json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows) -> int:
    """One JSON object a line; returns the number of rows. ASCII escaping and the default
    separators, as in the Berglund files, so generated files diff cleanly against them."""
    lines = [json.dumps(row, ensure_ascii=True) + "\n" for row in rows]  # serialised first: a bad row writes nothing
    atomic_write(path, "".join(lines))
    return len(lines)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on these machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def atomic_savefig(fig, path: str | Path, **kwargs) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **kwargs)
    return atomic_write(path, buffer.getvalue())


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """``fig`` laid out tightly, written atomically to ``path`` (:func:`atomic_savefig`), then closed."""
    fig.tight_layout()
    out = atomic_savefig(fig, path, **kwargs)
    pyplot().close(fig)
    return out


def temp_dir_beside(target: str | Path) -> Path:
    """An empty temporary folder ``.NAME-xxxx`` beside ``target``, with ``mkdir``'s permissions."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def replace_dir(tmp: str | Path, target: str | Path) -> Path:
    """Rename the finished folder ``tmp`` to ``target``; an existing ``target`` is first renamed
    away (to a temporary name), so a kill at any moment leaves either the old or the new folder.
    Files inside get plain permissions first (some writers, e.g. safetensors, create them 0600)."""
    tmp, target = Path(tmp), Path(target)
    mask = _umask()
    for root, folders, files in os.walk(tmp):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
