"""Shared fixtures: the SmolLM2 tokenizer, small Llama models, generated reversal data."""
from __future__ import annotations

import copy
import os

# Triton kernels run on CPU tensors through Triton's interpreter; it must be chosen before
# triton is first imported (importing bico imports transformers, which may import triton).
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass

import pytest
import torch

import bico  # noqa: F401  (registers "bico")


@pytest.fixture(scope="session")
def tokenizer():
    from bico.models import load_tokenizer

    return load_tokenizer("tiny-random")


def make_llama(attn: str = "bico", *, vocab: int = 128, hidden: int = 64, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, seed: int = 0):
    """A small random Llama; every call gets its own config object (they are mutable)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(copy.deepcopy(config)).eval()
    model.set_attn_implementation(attn)
    return model


def twin_models(vocab: int = 128, **kwargs):
    """The same weights under "bico" and under stock "sdpa"."""
    a = make_llama("bico", vocab=vocab, **kwargs)
    b = make_llama("sdpa", vocab=vocab, **kwargs)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.fixture(scope="session")
def reversal_dir(tmp_path_factory):
    from bico.data import generate_reversal_dataset

    out = tmp_path_factory.mktemp("reversal")
    generate_reversal_dataset(out, facts_per_subset=4, train_paraphrases=6, test_paraphrases=3, seed=0)
    return out
