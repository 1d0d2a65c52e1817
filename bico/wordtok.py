"""A word-level tokenizer built from a data folder, for from-scratch ``tiny-random`` runs.

With SmolLM2's 49K-token vocabulary a tiny Llama spends almost all of its compute in the
embedding and the output layer. Facts data has a few hundred distinct words, so a vocabulary
of exactly those words makes from-scratch experiments (the behavioural test, CI ablations)
tens of times faster while keeping every other part of the pipeline identical.

Words keep their leading space (``▁word``) so decoding restores the text exactly, and the
prompt/completion boundary tokenizes the same way as the whole text.
"""

from __future__ import annotations

import json
from pathlib import Path

from bico.data.jsonl import DataError

SPECIALS = ["<unk>", "<pad>", "<eos>", "<mask>"]


def _words(text: str) -> list[str]:
    pieces = text.replace(" ", " ▁").split(" ")
    return [p for p in pieces if p]


def build_word_tokenizer(data_dir: str | Path):
    """A ``PreTrainedTokenizerFast`` whose vocabulary is every word of the folder's JSONL files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIALS)}
    files = sorted(Path(data_dir).glob("*.jsonl"))
    if not files:
        raise DataError(f"no .jsonl files in {data_dir} to build a word vocabulary from")
    for path in files:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ("prompt", "completion"):
                for word in _words(str(row.get(key, ""))):
                    vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<eos>",
        mask_token="<mask>",
    )
