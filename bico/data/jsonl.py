"""JSONL reading for prompt/completion data (writing: :func:`bico.io_utils.atomic_write_jsonl`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

from bico.errors import BicoError

__all__ = ["DataError", "iter_jsonl", "load_jsonl"]

_MISSING_HINT = "generate data with `bico data reversal --out DIR` or point data.dir at the Berglund files"


class DataError(BicoError, ValueError):
    """A data file or directory is missing or malformed (message is one line)."""


def iter_jsonl(
    path: str | os.PathLike, *, required: Sequence[str] = ("prompt", "completion")
) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` for each object of a JSONL file; every field in ``required`` must
    be a string. Blank lines are skipped. Errors name the file and the 1-based line number."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p} is a directory, not a JSONL file")
    if not p.is_file():
        raise DataError(f"data file not found: {p}; {_MISSING_HINT}")
    empty = True
    with open(p, "rb") as f:  # bytes, so a bad UTF-8 sequence is reported with its line
        for lineno, raw in enumerate(f, start=1):
            where = f"{p}, line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            if not line.strip():
                continue
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
                    raise DataError(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}")
            empty = False
            yield lineno, row
    if empty:
        raise DataError(f"{p}: empty file (no rows)")


def load_jsonl(path: str | os.PathLike, *, required: Sequence[str] = ("prompt", "completion")) -> list[dict]:
    """The rows of a JSONL file (see :func:`iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path, required=required)]
