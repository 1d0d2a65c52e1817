"""JSONL reading and atomic writing for prompt/completion data."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["DataError", "load_jsonl", "write_jsonl", "dumps_row"]

_MISSING_HINT = (
    "generate data with `bico data reversal --out DIR` or point data.dir at the Berglund files"
)


class DataError(ValueError):
    """A data file or directory is missing or malformed (message is one line)."""


def load_jsonl(
    path: str | os.PathLike, *, required: Sequence[str] = ("prompt", "completion")
) -> list[dict]:
    """Read a JSONL file of objects; every field in ``required`` must be a string.

    Blank lines are skipped. Errors name the file and the 1-based line number.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}; {_MISSING_HINT}")
    rows: list[dict] = []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{p}, line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for key in required:
                if key not in row:
                    raise DataError(f"{where}: missing field {key!r}")
                if not isinstance(row[key], str):
                    raise DataError(
                        f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}"
                    )
            rows.append(row)
    if not rows:
        raise DataError(f"{p}: empty file (no rows)")
    return rows


def dumps_row(row: dict) -> str:
    # Same separators and ASCII escaping as the Berglund files, so generated files diff cleanly.
    return json.dumps(row, ensure_ascii=True)


def _atomic_write(path: str | os.PathLike, write) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; data files should be world-readable
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSONL atomically (temp file in the same dir, then os.replace).

    Readers never see a half-written file. Returns the number of rows written.
    """
    lines = [dumps_row(row) + "\n" for row in rows]
    _atomic_write(path, lambda f: f.writelines(lines))
    return len(lines)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text))
