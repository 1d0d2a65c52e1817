"""Training rows and their tokenisation: what ``bico train`` (and :mod:`bico.hf`) turn into
:class:`~bico.objectives.Example` objects, with the tokenisation cache's faults reported as such."""

from __future__ import annotations

import errno
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from bico.config import DataConfig, Recipe
from bico.errors import TrainingError
from bico.objectives import Example

logger = logging.getLogger(__name__)


def tokenize_examples(rows, tokenizer, max_length: int, sources=None, *, data=None) -> list[Example]:
    """Tokenize once, as ``bico/data/encode.py`` says (prompt/completion rows: prompt with the
    tokenizer's special tokens, completion without; text and chat rows: the whole text). ``rows``:
    row dicts, or the :class:`~bico.data.corpus.Corpus` of :func:`load_training_rows`, whose
    tokenisation is cached when ``data.cache`` is on. ``sources[i]`` says where row i comes from
    (file and line), for the error on an over-long row."""
    from bico.data.encode import cache_root, encode_corpus

    data, corpus, began = data or DataConfig(max_length=max_length), hasattr(rows, "dataset"), time.time()
    root = cache_root(data) if corpus else None
    with cache_faults(root):
        cols, cached = encode_corpus(rows, tokenizer, data, root)
    if data.format != "prompt_completion":
        texts = None  # text, chat: the ids are the example
    elif corpus:
        texts = list(zip(*(rows.dataset.data.column(c).to_pylist() for c in ("prompt", "completion"))))
    else:
        texts = [(row["prompt"], row["completion"]) for row in rows]
    metas = rows.meta if corpus else [row.get("meta", {}) for row in rows]
    examples = []
    for prompt_ids, completion_ids, eos, spans, i in zip(*cols.values()):
        length = len(prompt_ids) + len(completion_ids) + eos
        if length > max_length:
            where = sources[i] if sources else f"training row {i + 1}"
            raise TrainingError(
                f"{where}: {length} tokens, more than data.max_length={max_length}; "
                "raise data.max_length or shorten the row"
            )
        prompt, completion = texts[i] if texts else ("", "")
        examples.append(
            Example(
                prompt,
                completion,
                prompt_ids,
                completion_ids,
                (metas[i] if metas else None) or {},
                eos=bool(eos),
                loss_spans=list(zip(spans[::2], spans[1::2])) if spans else None,
            )
        )
    if not examples:
        raise TrainingError(f"{len(rows)} training rows gave no example (every text is empty)")
    logger.info(
        "%d rows -> %d examples (%s) in %.1f s",
        len(rows),
        len(examples),
        "tokenised earlier: cache" if cached else "tokenised",
        time.time() - began,
    )
    return examples


_CACHE_FIX = "set data.cache_dir=ANOTHER_FOLDER, or data.cache=false"


def check_cache_dir(root: Path | None) -> None:
    """The tokenisation cache folder can be made and written; else ``datasets`` fails later with
    an error that reads as if the data file were bad."""
    if root is None:
        return
    existing = next(p for p in [root, *root.parents] if p.exists())
    if not existing.is_dir():
        raise TrainingError(f"data.cache_dir {root}: {existing} is a file, not a folder; {_CACHE_FIX}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TrainingError(f"data.cache_dir {root}: {existing} is not writable; {_CACHE_FIX}")


@contextmanager
def cache_faults(root: Path | None):
    """A full disk (or an unwritable file) under the cache folder, reported as such: ``datasets``
    wraps it in an error that the data loader would blame on the data file."""
    try:
        yield
    except Exception as err:
        fault = _os_error_in(err)
        if root is None or fault is None:
            raise
        full = fault.errno in (errno.ENOSPC, errno.EDQUOT)
        inside = fault.filename is not None and Path(fault.filename).resolve().is_relative_to(root.resolve())
        if not (full or inside):
            raise
        what = "no space left on device" if full else f"cannot write {fault.filename} ({fault.strerror})"
        raise TrainingError(
            f"data.cache_dir {root}: {what} while caching the data; {'free space there, ' if full else ''}{_CACHE_FIX}"
        ) from None


def _os_error_in(err: BaseException) -> OSError | None:
    """The first OSError in ``err``'s chain of causes (itself included)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def load_training_rows(recipe: Recipe):
    """Training rows (a :class:`~bico.data.corpus.Corpus`: ``data.files`` or the Berglund layout
    ``data.dir`` + ``data.train_files``, read through ``datasets``) and where each comes from
    (``file, line N`` / ``file, row N``). Where the data dir's facts are known, each
    prompt/completion row gets ``meta`` = its fact's ``{"name", "description"}`` (entity spans
    for objectives such as entity-preserving reversal; plus ``descriptions``, the description's
    surface forms, where facts.jsonl lists them). ``data.identity_bridge`` adds identity
    rows for those facts (:mod:`bico.data.identity`; the rows are then a plain list)."""
    rows, sources, _ = training_data(recipe)
    return rows, sources


def training_data(recipe: Recipe):
    """``(rows, sources, fingerprint)``: :func:`load_training_rows`, and a digest of the data
    files' contents, which checkpoints record so that resume refuses data changed since."""
    from bico.data.corpus import load_corpus
    from bico.data.encode import cache_root
    from bico.data.identity import add_identity_bridge

    root = cache_root(recipe.data)
    check_cache_dir(root)
    with cache_faults(root):
        corpus = load_corpus(recipe.data, cache_root=root)
    if not recipe.data.identity_bridge:
        return corpus, corpus.sources, corpus.fingerprint
    rows, sources = add_identity_bridge(
        list(corpus), [corpus.where(i) for i in range(len(corpus))], recipe.data.identity_bridge
    )
    return rows, sources, corpus.fingerprint
