"""Training corpora read through Hugging Face ``datasets`` (local files only, never a hub).

``data.files`` names ``.jsonl``, ``.json``, ``.csv``, ``.parquet`` or ``.txt`` files, or folders
written by ``Dataset.save_to_disk``; without it, the Berglund layout ``data.dir`` +
``data.train_files`` names the files (and each row gets its fact as ``meta``). Every file becomes
columns of one format (``data.format``), renamed from the file's own names by ``data.fields``:

* ``prompt_completion``: ``prompt``, ``completion`` (strings);
* ``text``: ``text`` (a document per row; a ``.txt`` file is one document);
* ``chat``: ``messages`` (a list of ``{"role", "content"}`` strings).

Errors are :class:`DataError` on one line naming the file and its line (JSONL) or row (1-based).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from bico.config import DATA_FORMATS
from bico.data.jsonl import DataError, iter_jsonl
from bico.errors import one_line
from bico.io_utils import file_digest

__all__ = ["Corpus", "load_corpus", "quiet_datasets"]

LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@contextmanager
def quiet_datasets():
    """``datasets`` offline, without progress bars or log lines: bico's errors are one line and its
    bad-input contract allows nothing else on stderr."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    was_enabled = datasets.utils.are_progress_bars_disabled() is False
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield datasets
    finally:
        datasets.logging.set_verbosity(level)
        if was_enabled:
            datasets.enable_progress_bars()


class Corpus(Sequence):
    """The training rows: a ``datasets.Dataset`` in one format's columns, where each row came from,
    and (Berglund layout) each row's fact. Indexing gives plain dicts, as the JSONL rows were.
    ``key``: the files' digests, format and fields (where the tokenisation cache key starts);
    ``fingerprint``: a digest of the key and the facts file, which a checkpoint records."""

    def __init__(
        self,
        dataset,
        fmt: str,
        parts: list[tuple[Path, int, int]],
        meta: list[dict] | None = None,
        key: dict | None = None,
        fingerprint: str | None = None,
    ):
        self.dataset, self.format, self.parts, self.meta, self.key = dataset, fmt, parts, meta, key
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        row = dict(self.dataset[i])
        if self.meta and self.meta[i]:
            row["meta"] = self.meta[i]
        return row

    def where(self, i: int) -> str:
        """``file, line N`` (JSONL: blank lines count) or ``file, row N`` of row ``i``."""
        for path, start, count in self.parts:
            if start <= i < start + count:
                return _where(path, i - start)
        raise IndexError(i)

    @property
    def sources(self) -> "RowSources":
        return RowSources(self)


class RowSources(Sequence):
    """``sources[i]`` = :meth:`Corpus.where` (i), built only for the row an error names."""

    def __init__(self, corpus: Corpus):
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i):
        return self.corpus.where(i)


def _where(path: Path, row: int) -> str:
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            lines = (n for n, raw in enumerate(f, start=1) if raw.strip())
            for k, n in enumerate(lines):
                if k == row:
                    return f"{path}, line {n}"
    return f"{path}, row {row + 1}"


def file_stamp(paths: Sequence[Path], digests: dict | None = None) -> list:
    """What identifies the files' contents: each file's sha256 (a folder: each of its files, by
    name within it), never size and mtime, which ``cp -p``, ``rsync -t``, ``tar x`` and a same-size
    edit keep while the bytes change. ``digests``: those already computed, by path."""
    digests = digests or {}
    stamp = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            stamp.append([[str(p.relative_to(path)), file_digest(p)] for p in files])
        else:
            stamp.append(digests.get(path) or file_digest(path))
    return stamp


def _read(datasets, path: Path, fmt: str, cache_dir: str, in_memory: bool):
    """One file as a Dataset with the file's own columns."""
    if path.is_dir():
        if not (path / "state.json").is_file() and not (path / "dataset_dict.json").is_file():
            raise DataError(f"{path} is a directory, not a data file nor a folder written by Dataset.save_to_disk")
        ds = datasets.load_from_disk(str(path), keep_in_memory=in_memory)
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(ds)})")
            ds = ds["train"]
        return ds
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix == ".txt":
        if fmt != "text":
            raise DataError(f"{path}: a .txt file is one text document; use data.format=text")
        try:
            return datasets.Dataset.from_dict({"text": [path.read_text(encoding="utf-8")]})
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    kind = LOADERS.get(path.suffix)
    if kind is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(none)'}; use .jsonl, .json, .csv, "
            ".parquet, .txt or a Dataset.save_to_disk folder"
        )
    try:
        return datasets.load_dataset(
            kind, data_files=[str(path)], split="train", cache_dir=cache_dir, keep_in_memory=in_memory
        )
    except Exception as err:  # noqa: BLE001 - pyarrow and datasets raise many types; all mean a bad file
        if path.suffix == ".jsonl":
            for _ in iter_jsonl(path, required=()):  # says which line is wrong, and how
                pass
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (no rows)") from None
        raise DataError(f"{path}: cannot be read as {kind} ({one_line(err) or type(err).__name__})") from None


def _check(ds, path: Path, fmt: str, fields: dict) -> object:
    """Rename the file's columns to the format's, check every value; returns the renamed Dataset."""
    if len(ds) == 0:
        raise DataError(f"{path}: empty file (no rows)")
    names = {col: fields.get(col, col) for col in DATA_FORMATS[fmt]}
    for col, name in names.items():
        if name not in ds.column_names:
            hint = f" (data.fields.{col})" if col in fields else f"; name yours with data.fields.{col}=COLUMN"
            raise DataError(f"{path}: no column {name!r}{hint}; columns: {', '.join(ds.column_names)}")
    ds = ds.select_columns(list(names.values())).rename_columns({v: k for k, v in names.items() if v != k})
    for col, name in names.items():
        try:
            bad = _first_bad(ds[col], fmt)
        except UnicodeDecodeError:  # pyarrow stores bytes unchecked; Python decodes them here
            bad = (None, "is not UTF-8")
        if bad is not None:
            row, problem = bad
            if path.suffix == ".jsonl" and (fmt != "chat" or row is None):
                # the JSONL reader's message for that line (missing field, wrong type, bad byte), as before
                for _ in iter_jsonl(path, required=list(names.values()) if fmt != "chat" else ()):
                    pass
            raise DataError(f"{_where(path, row) if row is not None else path}: field {name!r} {problem}")
    # One schema for every file (CSV gives large_string, JSON string ...), so that files concatenate.
    import datasets

    text = datasets.Value("string")
    message = datasets.List({"role": text, "content": text})
    try:
        return ds.cast(datasets.Features({col: message if fmt == "chat" else text for col in names}))
    except (ValueError, TypeError):  # messages with more keys than role and content stay as they are
        return ds


def _first_bad(values: list, fmt: str) -> tuple[int, str] | None:
    if fmt != "chat":
        for i, v in enumerate(values):
            if not isinstance(v, str):
                return i, "is missing" if v is None else f"must be a string, got {type(v).__name__}"
        return None
    for i, messages in enumerate(values):
        if not isinstance(messages, list) or not messages:
            return i, "must be a non-empty list of {role, content} messages"
        for k, m in enumerate(messages):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                return i, f"message {k + 1} must have string 'role' and 'content'"
            for key in ("role", "content"):  # a template renders an empty turn as if it were one
                if not m[key].strip():
                    return i, f"message {k + 1} has an empty {key!r}; fill it in or drop the message"
    return None


def _fact_meta(fact: dict) -> dict:
    """A row's ``meta``: its fact's name and description, plus the description's other surface
    forms where facts.jsonl lists them (``descriptions``, the alt-style data)."""
    meta = {"name": fact["name"], "description": fact["description"]}
    if fact.get("descriptions"):
        meta["descriptions"] = list(fact["descriptions"])
    return meta


def load_corpus(data_cfg, *, cache_root: Path | None = None) -> Corpus:
    """The training rows the recipe's ``data`` section names (see the module docstring)."""
    from bico.data.reversal import FACTS_FILE, load_facts
    from bico.data.splits import fact_groups, resolve_data_dir
    from bico.resources import find

    fmt = data_cfg.format
    if data_cfg.files:
        paths = [find(p) for p in data_cfg.files]  # recipes/... also names a file shipped with bico
    else:  # the Berglund layout: one way of naming files
        folder = resolve_data_dir(data_cfg.dir)
        paths = [Path(folder) / name for name in data_cfg.train_files]
        for p in paths:
            if p.suffix == ".jsonl" and not p.is_dir():
                next(iter_jsonl(p, required=()), None)  # a missing or empty file: the JSONL reader's message
    with quiet_datasets() as datasets, tempfile.TemporaryDirectory() as scratch:
        # datasets keeps each file as Arrow under cache_root/sources/DIGEST: datasets itself would
        # reuse it by path and mtime, the folder per digest of the bytes makes the reuse by content;
        # without a cache the tables live in memory and the scratch folder goes away
        parts, tables, digests = [], [], {}
        for path in paths:
            if path.is_file():
                digests[path] = file_digest(path)
            where = str(cache_root / "sources" / digests[path]) if cache_root and path in digests else scratch
            ds = _check(_read(datasets, path, fmt, where, cache_root is None), path, fmt, data_cfg.fields)
            parts.append((path, sum(len(t) for t in tables), len(ds)))
            tables.append(ds)
        dataset = datasets.concatenate_datasets(tables) if len(tables) > 1 else tables[0]
    meta = None
    facts_dir = data_cfg.dir if data_cfg.files else folder
    if fmt == "prompt_completion" and facts_dir is not None:
        facts = load_facts(facts_dir)
        if facts:  # entity spans (the fact's name and description) for objectives that use them
            by_name = {f["name"]: _fact_meta(f) for f in facts}
            rows = [{"prompt": p, "completion": c} for p, c in zip(dataset["prompt"], dataset["completion"])]
            meta = [dict(by_name[n]) if n else {} for n in fact_groups(rows, facts)]
    # what the rows are: the cache key of their tokenisation starts from it (meta is not tokenised)
    stamp = {"files": file_stamp(paths, digests), "format": fmt, "fields": data_cfg.fields}
    # what resume compares with the checkpoint's: the rows and, where they give entity spans, the facts
    facts_file = Path(facts_dir) / FACTS_FILE if meta is not None else None
    fingerprint = hashlib.sha256(
        json.dumps(
            {**stamp, "facts": file_digest(facts_file) if facts_file and facts_file.is_file() else None}, sort_keys=True
        ).encode()
    ).hexdigest()
    return Corpus(dataset, fmt, parts, meta, key=stamp, fingerprint=fingerprint)
