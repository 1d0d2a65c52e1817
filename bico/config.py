"""Recipes: YAML files mapped onto typed dataclasses, with dotted ``key=value`` overrides.

Unknown keys (in the file or in an override) are errors that name the key and list the valid
ones, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class RecipeError(ValueError):
    """A recipe or override is wrong; the message says what and how to fix it."""


@dataclass
class ModelConfig:
    name: str = "tiny-random"  # smollm2-135m | tiny-random | a local Hugging Face folder
    dtype: str = "float32"  # float32 | bfloat16 | float16 (weights)
    attn_implementation: str = "bico"
    # auto: the model's own tokenizer (SmolLM2's for tiny-random); words: tiny-random only, a
    # word-level vocabulary built from data.dir (fast from-scratch experiments)
    tokenizer: str = "auto"
    # tiny-random sizes (ignored for other models)
    layers: int = 4
    hidden_size: int = 256
    heads: int = 8
    kv_heads: int = 4
    intermediate_size: int = 688
    init_seed: int = 0


@dataclass
class FinetuneConfig:
    method: str = "lora"  # lora | full
    lora_r: int = 32
    lora_alpha: int = 16
    lora_dropout: float = 0.01
    lora_targets: list = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class ObjectiveConfig:
    name: str = "ntp"
    options: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    dir: str | None = None  # Berglund-format folder; None = $BICO_REVERSAL_DATA or ../shared/...
    train_files: list = field(default_factory=lambda: ["all_prompts_train.jsonl"])
    max_length: int = 256
    pack: bool = False


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 8  # examples per micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: str = "linear"  # linear | cosine | constant
    max_grad_norm: float | None = 1.0
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; GPU)
    log_every: int = 10
    save_every: int | None = None  # checkpoint every N optimizer steps
    keep_checkpoints: int = 2
    resume: bool = False  # continue from the newest checkpoint in output_dir
    save_model: bool = True
    deepspeed: str | None = None  # path to a DeepSpeed JSON config
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True


@dataclass
class EvalConfig:
    splits: list = field(
        default_factory=lambda: ["p2d_prompts_test", "p2d_reverse_prompts_test", "d2p_prompts_test", "d2p_reverse_prompts_test"]
    )
    max_new_tokens: int = 32
    batch_size: int = 32
    limit: int | None = None  # first N rows of each split
    # Generate at most (longest target of the split, in tokens) + this many tokens; None = max_new_tokens
    generation_margin: int | None = None
    enabled: bool = True


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Sections whose values are free-form dicts (objective options are checked by the objective).
_FREE_FORM = {("objective", "options")}


def _merge(obj: Any, values: dict, where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise RecipeError(f"unknown recipe key {path!r}; valid keys here: {', '.join(fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise RecipeError(f"recipe key {path!r} must be a mapping, got {value!r}")
            _merge(current, value, path)
        elif (where, key) in _FREE_FORM:
            if not isinstance(value, dict):
                raise RecipeError(f"recipe key {path!r} must be a mapping, got {value!r}")
            current.update(value)
        else:
            setattr(obj, key, _coerce(value, str(fields[key].type), path))


def _coerce(value: Any, annotation: str, path: str) -> Any:
    """YAML reads ``1e-4`` as a string and ``3`` as an int; numbers go by the field's type."""
    numeric = [t for t in ("float", "int") if t in annotation]
    if not numeric or value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value = float(value) if "float" in numeric else int(value)
        except ValueError:
            raise RecipeError(f"recipe key {path!r} must be a number, got {value!r}") from None
    if "float" in numeric and isinstance(value, int):
        value = float(value)
    if not isinstance(value, (int, float)):
        raise RecipeError(f"recipe key {path!r} must be a number, got {value!r}")
    return value


def _dotted(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in items:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        pairs.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return pairs


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Recipe from a YAML file (``None`` = defaults) plus dotted overrides."""
    recipe = Recipe()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise RecipeError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of sections (model, objective, data, train, eval)")
        values.pop("description", None)  # free text for humans
        _merge(recipe, values, "")
    for key, value in parse_overrides(overrides or []):
        _merge(recipe, _dotted(key, value), "")
    return recipe
