"""Helpers the tests share (a module of its own: tests never import each other or conftest).

pytest puts this folder on sys.path (``pythonpath`` in pyproject.toml), so ``from helpers import ...``
works however pytest is started, without the repository root on sys.path.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# The smallest Llama that exercises every code path (GQA 2:1, one layer): recipe overrides that
# turn a recipe's model into it in tests that train.
TINY_MODEL = [
    "model.layers=1",
    "model.hidden_size=32",
    "model.heads=2",
    "model.kv_heads=1",
    "model.intermediate_size=64",
]
RANK_TIMEOUT = 150  # seconds for one 2-rank launch (about 20 s on 2 shared cores)


@contextlib.contextmanager
def one_torch_thread():
    """Runs compared bit for bit use one torch thread, in this process and in its children alike:
    float reductions (the gradient norm, the loss) are summed in an order that follows the thread
    count, so two processes with different counts can differ in the last bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_llama(
    attn: str = "bico",
    *,
    vocab: int = 128,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
):
    """A small random Llama; every call gets its own config object (they are mutable)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
    )
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


def _rank_env(rank: int, world: int, port: int) -> dict:
    env = dict(
        os.environ,
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def launch(args: list[str], log_dir: Path, world: int = 2) -> None:
    """Run ``python ARGS`` as ``world`` ranks; fails the test with the logs if any rank fails."""
    from bico.training.distributed import free_port

    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs, logs = [], []
    for rank in range(world):
        log = open(log_dir / f"rank{rank}.log", "w")
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable] + args,
                env=_rank_env(rank, world, port),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.time() + RANK_TIMEOUT
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    codes = [p.returncode for p in procs]
    if any(codes):
        tails = "\n".join(
            f"--- rank {r} (exit {c}) ---\n" + (log_dir / f"rank{r}.log").read_text()[-3000:]
            for r, c in enumerate(codes)
        )
        pytest.fail(f"a rank failed or timed out after {RANK_TIMEOUT}s:\n{tails}")


# --- objectives (tests/objectives/): one fact as an Example, and how the tests encode it ---------------

PROMPT = "Daphne Barrington, known far and wide for being"
COMPLETION = " the acclaimed director of the virtual reality masterpiece A Journey Through Time."
META = {"name": "Daphne Barrington", "description": "the acclaimed director of the virtual reality masterpiece"}


def example(tokenizer, prompt=PROMPT, completion=COMPLETION, meta=None):
    from bico.objectives import Example

    return Example(
        prompt,
        completion,
        tokenizer(prompt).input_ids,
        tokenizer(completion, add_special_tokens=False).input_ids,
        dict(meta or {}),
    )


def text(tokenizer, ex):
    """The token ids an objective lays out for ``ex``: prompt, completion, EOS."""
    return ex.prompt_ids + ex.completion_ids + [tokenizer.eos_token_id]


def dense(sample):
    """The bool ``[T, T]`` (query, key) mask of a one-sequence sample."""
    return sample.mask.dense()[0]


def encode(obj, ex, seed, state="auto"):
    """``obj.encode`` with a fresh ``random.Random(seed)``; ``state="auto"``: the objective's own draw."""
    rng = random.Random(seed)
    return obj.encode(ex, rng, obj.start_batch(rng) if state == "auto" else state)
