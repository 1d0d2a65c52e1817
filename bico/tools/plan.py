"""``bico plan MODEL --gpus N [--nodes M]``: GPU and CPU memory per ZeRO setup, before buying time.

The numbers come from DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs``,
``estimate_zero3_model_states_mem_needs``) for the model's parameter count, which is read
from its config alone: the model is built on the ``meta`` device, no weights are loaded.
They cover *model states* for full finetuning with Adam in mixed precision (16-bit weights and
gradients, fp32 master weights and moments); activations, communication buffers and the CUDA
context come on top. bico builds the model on every rank before handing it to DeepSpeed (no
``zero.Init``), so the CPU column assumes that (``zero_init=False``).

MODEL is a preset (``bico plan --list``) or a local Hugging Face folder / ``config.json``.
"""

from __future__ import annotations

from pathlib import Path

from bico.config import ModelConfig
from bico.errors import UsageError

GIB = 1024**3

# Architecture sizes of well-known checkpoints (from their published config.json files).
# One checkpoint a line (a table: the formatter leaves it so).
# fmt: off
_CHECKPOINTS = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40, vocab_size=32000, tie_word_embeddings=False),
    "llama-2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False),
}
# fmt: on
_TINY = ModelConfig()  # tiny-random's sizes are the recipe defaults (SmolLM2's vocabulary, tied)
PRESET_CONFIGS = {
    "tiny-random": dict(
        hidden_size=_TINY.hidden_size,
        intermediate_size=_TINY.intermediate_size,
        num_hidden_layers=_TINY.layers,
        num_attention_heads=_TINY.heads,
        num_key_value_heads=_TINY.kv_heads,
        vocab_size=_CHECKPOINTS["smollm2-135m"]["vocab_size"],
        tie_word_embeddings=True,
    ),
    **_CHECKPOINTS,
}

# (label, shipped recipe or None, stage, offload optimizer, offload parameters)
SETUPS = [
    ("ZeRO-2", "recipes/deepspeed/zero2.json", 2, False, False),
    ("ZeRO-2 + optimizer offload", None, 2, True, False),
    ("ZeRO-3", "recipes/deepspeed/zero3.json", 3, False, False),
    ("ZeRO-3 + optimizer offload", None, 3, True, False),
    ("ZeRO-3 + optimizer and parameter offload", "recipes/deepspeed/zero3_offload.json", 3, True, True),
]


def load_config(model: str):
    """A transformers config for a preset name, a model folder or a config.json file."""
    from transformers import AutoConfig, LlamaConfig

    if model in PRESET_CONFIGS:
        return LlamaConfig(**PRESET_CONFIGS[model])
    path = Path(model)
    if path.is_file() and path.name.endswith(".json"):
        return AutoConfig.from_pretrained(path.parent if path.name == "config.json" else path)
    if (path / "config.json").is_file():
        return AutoConfig.from_pretrained(path)
    raise UsageError(f"model {model!r} is neither a preset ({', '.join(PRESET_CONFIGS)}) nor a folder with config.json")


def sizes_from_config(config) -> tuple[int, int]:
    """``(total parameters, parameters of the largest single module)``, built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum({id(p): p.numel() for p in model.parameters()}.values())  # tied weights once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def estimate(total: int, largest: int, gpus: int, nodes: int) -> list[dict]:
    """One row per setup: bytes per GPU and per node's CPU (DeepSpeed's estimators)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    rows = []
    for label, recipe, stage, offload_opt, offload_params in SETUPS:
        if stage == 2:
            cpu, gpu = estimate_zero2_model_states_mem_needs(
                total, num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=offload_opt
            )
        else:
            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                total,
                largest,
                num_gpus_per_node=gpus,
                num_nodes=nodes,
                cpu_offload=offload_opt,
                cpu_offload_params=offload_params,
                zero_init=False,
            )
        rows.append({"setup": label, "recipe": recipe, "gpu_bytes": gpu, "cpu_bytes": cpu})
    return rows


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def render(
    model: str, total: int, largest: int, gpus: int, nodes: int, rows: list[dict], gpu_memory: float | None = None
) -> str:
    lines = [
        f"{model}: {_human(total)} parameters (largest module {_human(largest)}), "
        f"{gpus} GPU{'s' if gpus > 1 else ''} per node x {nodes} node{'s' if nodes > 1 else ''}",
        "Model states for full finetuning with Adam in mixed precision (DeepSpeed's estimators); "
        "activations and buffers come on top. CPU: every rank loads the whole model before DeepSpeed "
        "partitions it (no zero.Init).",
        "",
        "| setup | recipe | GPU memory per GPU | CPU memory per node |" + (" fits? |" if gpu_memory else ""),
        "|---|---|---:|---:|" + ("---|" if gpu_memory else ""),
    ]
    for r in rows:
        line = (
            f"| {r['setup']} | {r['recipe'] or '-'} | {r['gpu_bytes'] / GIB:.1f} GiB | {r['cpu_bytes'] / GIB:.1f} GiB |"
        )
        if gpu_memory:
            line += " yes |" if r["gpu_bytes"] / GIB <= gpu_memory else " no |"
        lines.append(line)
    return "\n".join(lines) + "\n"
