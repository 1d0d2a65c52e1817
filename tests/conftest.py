"""Shared fixtures: the SmolLM2 tokenizer, small Llama models, generated reversal data."""

from __future__ import annotations

import os

# Triton kernels run on CPU tensors through Triton's interpreter; it must be chosen before
# triton is first imported (importing bico imports transformers, which may import triton).
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass

# train.precision=auto would pick bf16 on CPUs with AMX/AVX512-BF16 and fp32 elsewhere; the suite
# compares runs bit for bit, so it decides auto the same on every machine (bf16 has its own tests).
os.environ.setdefault("BICO_AUTO_PRECISION", "fp32")

import pytest
import torch

import bico

bico.register()  # the helpers build models with attn_implementation="bico"


@pytest.fixture(scope="session")
def tokenizer():
    from bico.models import load_tokenizer

    return load_tokenizer("tiny-random")


@pytest.fixture(scope="session")
def reversal_dir(tmp_path_factory):
    from bico.data import generate_reversal_dataset

    out = tmp_path_factory.mktemp("reversal")
    generate_reversal_dataset(out, facts_per_subset=4, train_paraphrases=6, test_paraphrases=3, seed=0)
    return out
