"""Rows to token ids, the one way ``bico train`` and ``bico.hf`` do it, cached per corpus and tokenizer.

* ``prompt_completion``: prompt with the tokenizer's special tokens, completion without (as always).
* ``text``: a document is a completion with an empty prompt (the prompt's special tokens, e.g.
  BOS, still lead), so every objective sees the whole text: NTP predicts every token, denoising
  objectives mask anywhere, reverse training reverses all of it. **Chunking rule**: a document
  of more than ``W = max_length - len(prefix) - 1`` tokens is cut into token windows of ``W``
  starting at ``0, S, 2S, ...`` with ``S = W - data.chunk_overlap``, until a window reaches the
  end; only the last window ends with EOS (the text goes on after the others). The
  ``chunk_overlap`` tokens a window repeats from the one before are context only: they carry
  no loss and are never masked (``loss_spans``), so every token is trained once per epoch.
* ``chat``: ``messages`` rendered with the tokenizer's chat template (tokenized without extra
  special tokens; the template writes them, and ends every turn itself: no EOS appended). With
  ``data.chat_loss=assistant`` (default) only the assistant turns (their content and the
  template's end-of-turn tokens) carry loss and may be masked: ``loss_spans`` are the tokens
  from where the template's generation prompt ends to where that message's rendering ends.

The cache: ``datasets`` ``map`` with ``new_fingerprint`` = a hash of the files' contents (a sha256
of their bytes, never their paths, sizes or mtimes), the format and field names, the tokenizer (its full serialisation, added tokens
included, and chat template), ``max_length``, ``chunk_overlap``, ``chat_loss`` and
:data:`VERSION`; its Arrow file ``tokenized/<key>.arrow`` under the cache folder is read back
instead of tokenizing again while all of these are the same.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bico.data.jsonl import DataError

__all__ = ["VERSION", "cache_root", "encode_rows", "encode_corpus", "tokenizer_fingerprint"]

VERSION = 1  # bump when encode_rows changes what it writes: old cache files are then not read
CHAT_LOSS = ("assistant", "all")


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    for part in (vocab, str(getattr(tokenizer, "chat_template", None)), json.dumps(tokenizer("").input_ids)):
        h.update(part.encode())
    return h.hexdigest()


def encode_rows(
    batch: dict,
    indices: list[int],
    *,
    tokenizer,
    fmt: str,
    max_length: float,
    chunk_overlap: int = 0,
    chat_loss: str = "assistant",
    where=None,
) -> dict:
    """Columns of rows -> columns of examples (``datasets.map(batched=True)`` or a plain dict):
    ``prompt_ids``, ``completion_ids``, ``eos``, ``loss_spans`` (flat ``[a0, b0, a1, b1, ...]`` over
    the example's tokens; ``[]`` = all) and ``row`` (the row it came from)."""
    out = {"prompt_ids": [], "completion_ids": [], "eos": [], "loss_spans": [], "row": []}

    def emit(prompt_ids, completion_ids, eos, spans, row):
        for key, value in zip(out, (prompt_ids, completion_ids, eos, spans, row)):
            out[key].append(value)

    where = where or (lambda i: f"training row {i + 1}")
    if fmt == "prompt_completion":
        prompts = tokenizer(batch["prompt"]).input_ids
        completions = tokenizer(batch["completion"], add_special_tokens=False).input_ids
        for p, c, i in zip(prompts, completions, indices):
            emit(p, c, True, [], i)
    elif fmt == "text":
        prefix = tokenizer("").input_ids
        width = max_length - len(prefix) - 1
        if width - chunk_overlap < 1:
            raise DataError(
                f"data.max_length={max_length} leaves {width} tokens per chunk after {len(prefix)} "
                f"special token(s) and EOS; it must exceed data.chunk_overlap={chunk_overlap}"
            )
        docs = tokenizer(batch["text"], add_special_tokens=False, verbose=False).input_ids
        for doc, i in zip(docs, indices):
            start = 0
            while doc:  # an empty document gives no example
                last = start + width >= len(doc)
                chunk = doc[start : start + width]
                context = chunk_overlap if start else 0
                spans = [len(prefix) + context, len(prefix) + len(chunk) + last] if context else []
                emit(prefix, chunk, last, spans, i)
                if last:
                    break
                start += width - chunk_overlap
    elif fmt == "chat":
        for messages, i in zip(batch["messages"], indices):
            ids, spans = _chat(tokenizer, messages, chat_loss, lambda: where(i))
            emit([], ids, False, spans, i)
    else:
        raise DataError(f"data.format {fmt!r}: use prompt_completion, text or chat")
    return out


def _chat(tokenizer, messages: list[dict], chat_loss: str, where) -> tuple[list[int], list[int]]:
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    if chat_loss == "all":
        return enc.input_ids, []
    chars = []  # character ranges of the assistant turns in the rendered conversation
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True) if k else ""
        upto = tokenizer.apply_chat_template(messages[: k + 1], tokenize=False)
        if not (text.startswith(upto) and upto.startswith(head)):
            raise DataError(
                f"{where()}: this tokenizer's chat template does not render a conversation's first turns "
                "as the start of the whole; set data.chat_loss=all"
            )
        chars.append((len(head), len(upto)))
    if not chars:
        raise DataError(
            f"{where()}: no assistant message to train on (data.chat_loss=assistant); add one or set data.chat_loss=all"
        )
    spans: list[int] = []
    for t, (start, _) in enumerate(enc.offset_mapping):
        if any(a <= start < b for a, b in chars):
            if spans and spans[-1] == t:
                spans[-1] = t + 1
            else:
                spans += [t, t + 1]
    return enc.input_ids, spans


def encode_corpus(rows, tokenizer, data_cfg, cache_root: Path | None = None):
    """The examples of ``rows`` (a :class:`~bico.data.corpus.Corpus` or a list of row dicts) as
    columns (a dict of lists, as :func:`encode_rows` writes them), and whether they came from the
    cache. Only a Corpus with a cache folder is cached."""
    fmt = data_cfg.format
    options = dict(
        tokenizer=tokenizer,
        fmt=fmt,
        max_length=data_cfg.max_length,
        chunk_overlap=data_cfg.chunk_overlap,
        chat_loss=data_cfg.chat_loss,
    )
    if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DataError("data.format=chat needs a tokenizer with a chat template; this model's has none")
    if not hasattr(rows, "dataset"):
        columns = {key: [row[key] for row in rows] for key in ("prompt", "completion")}
        return encode_rows(columns, list(range(len(rows))), **options), False
    from bico.data.corpus import quiet_datasets

    key = hashlib.sha256(
        json.dumps(
            {
                "rows": rows.key,
                "tokenizer": tokenizer_fingerprint(tokenizer),
                "version": VERSION,
                **{k: v for k, v in options.items() if k not in ("tokenizer", "fmt")},
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    path = cache_root / "tokenized" / f"{key}.arrow" if cache_root else None
    hit = path is not None and path.is_file()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_datasets():
        encoded = rows.dataset.map(
            encode_rows,
            batched=True,
            with_indices=True,
            remove_columns=rows.dataset.column_names,
            fn_kwargs={**options, "where": rows.where},
            new_fingerprint=key,
            cache_file_name=str(path) if path else None,
            keep_in_memory=path is None,
        )
    table = encoded.data  # pyarrow: columns to Python lists at once, not row by row
    return {name: table.column(name).to_pylist() for name in table.column_names}, hit


def cache_root(data_cfg) -> Path | None:
    """Where tokenised corpora are kept: ``data.cache_dir``, else ``$BICO_CACHE/datasets``; None
    when ``data.cache`` is off."""
    if not data_cfg.cache:
        return None
    if data_cfg.cache_dir:
        return Path(data_cfg.cache_dir).expanduser()
    from bico.paths import cache_dir

    return cache_dir() / "datasets"
