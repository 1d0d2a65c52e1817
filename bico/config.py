"""Recipes: YAML files mapped onto typed dataclasses, with dotted ``key=value`` overrides.

Unknown keys (in the file or in an override) are errors that name the key and list the valid
ones, so a typo never silently falls back to a default; values are checked against their type
and range (:func:`check_recipe`) before anything is loaded or written.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bico import resources
from bico.errors import BicoError
from bico.yaml_load import DuplicateKeyError, load_yaml


class RecipeError(BicoError, ValueError):
    """A recipe or override is wrong; the message says what and how to fix it."""


# One vocabulary for number formats in a recipe (model.dtype, train.precision) and in `bico bench
# --dtype`: fp32 | bf16 | fp16. torch's names are read as the same.
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
DTYPE_KEYS = (("model", "dtype"), ("train", "precision"))


def canonical_dtype(value):
    """``fp32``/``bf16``/``fp16`` for torch's long names; anything else as it is."""
    return DTYPE_ALIASES.get(value, value) if isinstance(value, str) else value


def canonical_recipe_dict(recipe: dict) -> dict:
    """A recipe's dict (e.g. a saved ``recipe.json``) with its number formats in the one vocabulary,
    so that a run saved as ``model.dtype: float32`` equals one that says ``fp32``."""
    for section, key in DTYPE_KEYS:
        if isinstance(recipe.get(section), dict) and key in recipe[section]:
            recipe[section][key] = canonical_dtype(recipe[section][key])
    return recipe


@dataclass
class ModelConfig:
    name: str = "tiny-random"  # smollm2-135m | tiny-random | a local Hugging Face folder
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (the weights' format; float32 etc. read as the same)
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
    # full only: parameters that do not train, as fnmatch patterns over their names, e.g.
    # ["model.embed_tokens.*"] (SmolLM2 ties it to the LM head) or ["model.layers.[0-9].*"]
    freeze: list = field(default_factory=list)
    # full only: train only this fraction of each layer's MLP neurons, those the training text uses most
    # relative to the replay text (bico/training/sparse_mlp.py); 0 trains every weight
    mlp_neurons: float = 0.0


@dataclass
class ObjectiveConfig:
    name: str = "ntp"
    options: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    dir: str | None = None  # Berglund-format folder; None = $BICO_REVERSAL_DATA or ../shared/...
    train_files: list = field(default_factory=lambda: ["all_prompts_train.jsonl"])  # in dir, unless files is set
    # Training files or save_to_disk folders (.jsonl .json .csv .parquet .txt), read through `datasets`;
    # set, they replace dir + train_files for training (dir still holds the evaluation splits)
    files: list | None = None
    format: str = "prompt_completion"  # prompt_completion | text | chat (see bico/data/encode.py)
    fields: dict = field(default_factory=dict)  # column names in the files, e.g. {prompt: question}
    chunk_overlap: int = 0  # text: tokens a chunk repeats from the one before, as context (no loss)
    chat_loss: str = "assistant"  # chat: assistant (loss and masking on assistant turns only) | all
    cache: bool = True  # keep tokenised corpora, so the next run on the same files skips tokenising
    cache_dir: str | None = None  # None = $BICO_CACHE/datasets (~/.cache/bico/datasets)
    max_length: int = 256
    pack: bool = False
    # {rate, templates}: identity statements for the facts' entities (bico/data/identity.py); {} = off
    identity_bridge: dict = field(default_factory=dict)


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
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast, fp32 master weights; fp16 GPU only); auto: bf16 where the hardware has it
    compile: bool = False  # torch.compile the model (dynamic shapes); costs compile time at the first steps
    log_every: int = 10
    save_every: int | None = None  # checkpoint every N optimizer steps
    keep_checkpoints: int = 2  # 0 = keep all
    resume: bool = False  # continue from the newest checkpoint in output_dir
    overwrite: bool = False  # delete the run already in output_dir, then start afresh
    save_model: bool = True
    deepspeed: str | None = None  # path to a DeepSpeed JSON config
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True
    report_to: list = field(default_factory=list)  # tensorboard | wandb: see REPORT_TO


@dataclass
class EvalConfig:
    splits: list = field(
        default_factory=lambda: [
            "p2d_prompts_test",
            "p2d_reverse_prompts_test",
            "d2p_prompts_test",
            "d2p_reverse_prompts_test",
        ]
    )
    max_new_tokens: int = 32
    batch_size: int = 32
    limit: int | None = None  # first N rows of each split
    # Generate at most (longest target of the split, in tokens) + this many tokens; None = max_new_tokens
    generation_margin: int | None = None
    enabled: bool = True
    # Perplexity on a prose sample + general-knowledge exact match (bico/data/retention/)
    retention: bool = False
    # Also evaluate the model before finetuning (cached per model and data) as the report's base row
    base: bool = True


@dataclass
class ReplayConfig:
    """General text trained with next-token prediction beside the objective (bico/training/replay.py)."""

    rows: int = 0  # replay rows per micro-batch; 0 = off
    source: str = "self"  # self: sampled from the model before finetuning | a .txt or .jsonl file of text
    weight: float = 1.0  # the replay tokens' mean loss, relative to the objective's mean loss
    # ntp: next-token loss on the replay text's own tokens | kl: KL(base || tuned) over the base
    # model's top_k next tokens at every replay position (distillation; computed once, cached)
    loss: str = "ntp"
    top_k: int = 64
    samples: int = 256  # self: how many texts to sample
    length: int = 64  # self: tokens sampled per text; file: tokens per piece
    temperature: float = 1.0  # self: sampling temperature
    top_p: float = 0.95  # self: nucleus sampling
    seed: int = 0  # self: sampling seed
    # self: what each sample continues. none: nothing (the start token only) | generic: bico's
    # shipped openings of expository English (bico/data/replay/generic_prompts.txt) | the path of
    # a .txt file, one opening per line. Samples are spread evenly over the openings.
    prompts: str = "none"


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Sections whose values are free-form dicts (objective options are checked by the objective).
_FREE_FORM = {("objective", "options"), ("data", "fields"), ("data", "identity_bridge")}


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
    if value is None and "None" not in annotation:
        # `train.lr=` (or `lr: null`) would otherwise skip every range check and fail deep inside
        raise RecipeError(
            f"recipe key {path!r} has no value; give one (e.g. {path}={_EXAMPLES.get(annotation, 'VALUE')})"
        )
    if annotation.split(" | ")[0] == "str" and isinstance(value, (list, dict, bool)):
        raise RecipeError(f"recipe key {path!r} must be a single name, got {value!r}")
    if annotation == "bool" and not isinstance(value, bool):
        raise RecipeError(f"recipe key {path!r} must be true or false, got {value!r}")
    numeric = [t for t in ("float", "int") if t in annotation]
    if not numeric or value is None:
        return value
    if isinstance(value, bool):
        raise RecipeError(f"recipe key {path!r} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value) if "float" in numeric else int(value)
        except ValueError:
            raise RecipeError(f"recipe key {path!r} must be a number, got {value!r}") from None
    if "float" in numeric and isinstance(value, int):
        value = float(value)
    if not isinstance(value, (int, float)):
        raise RecipeError(f"recipe key {path!r} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise RecipeError(f"recipe key {path!r} must be a finite number, got {value!r}")
    if "float" not in numeric and isinstance(value, float):
        if not value.is_integer():
            raise RecipeError(f"recipe key {path!r} must be a whole number, got {value!r}")
        value = int(value)
    return value


_EXAMPLES = {"float": "0.5", "int": "8", "bool": "true", "str": "NAME", "list": "[A, B]", "dict": "{KEY: VALUE}"}


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
        try:
            value = load_yaml(raw) if raw.strip() else None
        except yaml.constructor.ConstructorError:  # a tag such as !!python/object: never constructed
            raise RecipeError(f"override {item!r}: YAML tags (!!...) are not allowed in a value") from None
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise RecipeError(
                f"override {item!r} is not a valid YAML value ({problem}); close its brackets or quote the value"
            ) from None
        pairs.append((key.strip(), value))
    return pairs


def read_yaml_file(path: Path):
    """The YAML document in a file; a duplicate key, bad YAML or a non-UTF-8 file is a one-line
    :class:`RecipeError` naming the file (recipes and ablation specs alike)."""
    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as err:
        raise RecipeError(f"{path}, {err}") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a UTF-8 text file") from None


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Recipe from a YAML file (``None`` = defaults) plus dotted overrides. A relative
    ``recipes/...`` path that is not in the current directory is looked up among bico's shipped ones."""
    recipe = Recipe()
    if path is not None:
        path = resources.find(path)  # recipes/... also names a recipe shipped with bico
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        values = read_yaml_file(path)
        if values is None or values == {}:
            # Training with every default is never what an empty file meant.
            raise RecipeError(f"recipe file {path} is empty; see recipes/demo/tiny.yaml for a small complete one")
        if not isinstance(values, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of sections (model, objective, data, train, eval)")
        values.pop("description", None)  # free text for humans
        _merge(recipe, values, "")
    for key, value in parse_overrides(overrides or []):
        _merge(recipe, _dotted(key, value), "")
    _expand_home(recipe)
    for section, key in DTYPE_KEYS:
        part = getattr(recipe, section)
        setattr(part, key, canonical_dtype(getattr(part, key)))
    check_recipe(recipe)
    return recipe


def _expand_home(recipe: Recipe) -> None:
    """``~`` at the start of a path key is the home folder, as in a shell: the shell leaves the
    ``~`` of an override (``train.output_dir=~/runs``) and of a YAML value as it is."""

    def expand(value):
        return str(Path(value).expanduser()) if isinstance(value, str) and value.startswith("~") else value

    train, data = recipe.train, recipe.data
    train.output_dir, train.deepspeed = expand(train.output_dir), expand(train.deepspeed)
    data.dir, data.cache_dir, recipe.model.name = expand(data.dir), expand(data.cache_dir), expand(recipe.model.name)
    if isinstance(data.files, list):
        data.files = [expand(f) for f in data.files]
    elif isinstance(data.files, str):
        data.files = expand(data.files)
    if isinstance(recipe.eval.splits, list):
        recipe.eval.splits = [expand(split) for split in recipe.eval.splits]


# train.report_to: each name is the module it needs and the extra that installs it (bico[NAME]).
REPORT_TO = ("tensorboard", "wandb")


def _check_report_to(names) -> None:
    import importlib.util

    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)) or len(set(names)) != len(names):
        raise RecipeError(
            f"recipe key 'train.report_to' must be a list of distinct names from {', '.join(REPORT_TO)} "
            f"(e.g. train.report_to=[tensorboard]), got {names!r}"
        )
    for name in names:
        if name not in REPORT_TO:
            raise RecipeError(f"train.report_to: unknown {name!r}; available: {', '.join(REPORT_TO)}")
        # find_spec imports nothing: a missing package fails here, before anything is loaded or written
        if importlib.util.find_spec(name) is None:
            raise RecipeError(f"train.report_to lists {name} but it is not installed; pip install 'bico[{name}]'")


# Ranges of numeric keys: (key, test, what the test requires). None passes where the default is None.
_AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
_AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
_POSITIVE = (lambda v: v > 0, "> 0")
_RANGES = {
    "model.layers": _AT_LEAST_1,
    "model.hidden_size": _AT_LEAST_1,
    "model.heads": _AT_LEAST_1,
    "model.kv_heads": _AT_LEAST_1,
    "model.intermediate_size": _AT_LEAST_1,
    "model.init_seed": _AT_LEAST_0,
    "finetune.lora_r": _AT_LEAST_1,
    "finetune.lora_alpha": _POSITIVE,
    "finetune.lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "finetune.mlp_neurons": (lambda v: 0 <= v <= 1, "in [0, 1] (0: off)"),
    "data.max_length": (lambda v: v >= 2, ">= 2 (a prompt token and EOS)"),
    "data.chunk_overlap": _AT_LEAST_0,
    "train.epochs": _POSITIVE,
    "train.max_steps": _AT_LEAST_1,
    "train.batch_size": _AT_LEAST_1,
    "train.grad_accum": _AT_LEAST_1,
    "train.lr": _POSITIVE,
    "train.weight_decay": _AT_LEAST_0,
    "train.warmup_steps": _AT_LEAST_0,
    "train.max_grad_norm": (lambda v: v >= 0, ">= 0 (0 or null: no clipping)"),
    "train.seed": _AT_LEAST_0,
    "train.log_every": _AT_LEAST_1,
    "train.save_every": (lambda v: v >= 1, ">= 1 (or null)"),
    "train.keep_checkpoints": (lambda v: v >= 0, ">= 0 (0: keep all)"),
    "eval.max_new_tokens": _AT_LEAST_1,
    "eval.batch_size": _AT_LEAST_1,
    "eval.limit": (lambda v: v >= 1, ">= 1 (or null)"),
    "eval.generation_margin": (lambda v: v >= 0, ">= 0 (or null)"),
    "replay.rows": _AT_LEAST_0,
    "replay.weight": _POSITIVE,
    "replay.samples": _AT_LEAST_1,
    "replay.length": (lambda v: v >= 2, ">= 2"),
    "replay.temperature": _POSITIVE,
    "replay.top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "replay.seed": _AT_LEAST_0,
    "replay.top_k": _AT_LEAST_1,
}
# Objective options that are fractions, by name; each objective checks its own exact range too
# (it needs the tokenizer to be built), this catches the typo before the model is loaded.
_FRACTION_OPTION = re.compile(r"(ratio|rate|prob|mix|dropout)$")
_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def check_recipe(recipe: Recipe) -> None:
    """Every value in its range; raises :class:`RecipeError` naming the key and the range."""
    values = {
        f"{section}.{key}": value for section, fields in recipe.to_dict().items() for key, value in fields.items()
    }
    check_ranges({key: values[key] for key in _RANGES})
    _check_options(recipe.objective.options, "objective.options")
    from bico.data.identity import identity_settings  # torch-free

    try:
        identity_settings(recipe.data.identity_bridge)
    except ValueError as err:
        raise RecipeError(str(err)) from None
    betas = recipe.train.betas
    if not (
        isinstance(betas, list)
        and len(betas) == 2
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
    ):
        raise RecipeError(f"recipe key 'train.betas' must be two numbers in [0, 1), got {betas!r}")
    train_files = recipe.data.train_files
    if not (isinstance(train_files, list) and train_files and all(isinstance(f, str) and f for f in train_files)):
        raise RecipeError(f"recipe key 'data.train_files' must be a non-empty list of file names, got {train_files!r}")
    _check_data(recipe.data)
    _check_freeze(recipe)
    _check_mlp_neurons(recipe)
    if not isinstance(recipe.eval.splits, list) or not all(isinstance(s, str) for s in recipe.eval.splits):
        raise RecipeError(f"recipe key 'eval.splits' must be a list of split names, got {recipe.eval.splits!r}")
    if not isinstance(recipe.train.device, str) or not _DEVICE.fullmatch(recipe.train.device):
        raise RecipeError(
            f"recipe key 'train.device' must be auto, cpu, cuda, cuda:N or mps, got {recipe.train.device!r}"
        )
    if not isinstance(recipe.train.output_dir, str) or not recipe.train.output_dir.strip():
        raise RecipeError("recipe key 'train.output_dir' must be a folder name")
    _check_report_to(recipe.train.report_to)
    if recipe.replay.rows and recipe.train.deepspeed:
        raise RecipeError(
            "replay.rows is not supported with train.deepspeed yet; set replay.rows=0 or train without DeepSpeed"
        )
    _check_replay(recipe.replay)
    if recipe.train.resume and recipe.train.overwrite:
        raise RecipeError(
            "train.resume=true continues the run in train.output_dir and train.overwrite=true deletes it; "
            "set one of them"
        )
    model = recipe.model
    if model.name == "tiny-random":
        if model.hidden_size % model.heads:
            raise RecipeError(f"model.hidden_size={model.hidden_size} must be a multiple of model.heads={model.heads}")
        if model.heads % model.kv_heads:
            raise RecipeError(f"model.heads={model.heads} must be a multiple of model.kv_heads={model.kv_heads}")


def _check_freeze(recipe: Recipe) -> None:
    freeze = recipe.finetune.freeze
    if not (isinstance(freeze, list) and all(isinstance(p, str) and p.strip() for p in freeze)):
        raise RecipeError(
            f"recipe key 'finetune.freeze' must be a list of parameter-name patterns, e.g. [model.embed_tokens.*], "
            f"got {freeze!r}"
        )
    if freeze and recipe.finetune.method != "full":
        raise RecipeError(
            "finetune.freeze is for finetune.method=full (LoRA trains only its adapters already); "
            "set finetune.method=full or finetune.freeze=[]"
        )


def _check_mlp_neurons(recipe: Recipe) -> None:
    if not recipe.finetune.mlp_neurons:
        return
    why = (
        "finetune.method is not full"
        if recipe.finetune.method != "full"
        else "train.deepspeed is set"
        if recipe.train.deepspeed
        else f"train.weight_decay={recipe.train.weight_decay} would move the frozen neurons"
        if recipe.train.weight_decay
        else "replay.rows is 0: the neurons are ranked against the replay text"
        if not recipe.replay.rows
        else None
    )
    if why:
        raise RecipeError(
            f"finetune.mlp_neurons={recipe.finetune.mlp_neurons:g} needs full finetuning without DeepSpeed or weight "
            f"decay, with replay rows, but {why}; fix that or set finetune.mlp_neurons=0"
        )


def _check_replay(replay: ReplayConfig) -> None:
    if replay.loss not in ("ntp", "kl"):
        raise RecipeError(f"recipe key 'replay.loss' must be ntp or kl, got {replay.loss!r}")
    prompts = replay.prompts
    if not isinstance(prompts, str) or not prompts.strip():
        raise RecipeError("recipe key 'replay.prompts' must be none, generic or the path of a .txt file")
    if prompts != "none" and replay.source != "self":
        raise RecipeError(
            "replay.prompts needs replay.source=self (a file's text is used as it is); set replay.prompts=none"
        )
    if prompts not in ("none", "generic") and replay.rows:
        path = Path(prompts).expanduser()
        if path.suffix != ".txt" or not path.is_file():
            raise RecipeError(
                f"replay.prompts {prompts}: no such .txt file; give one opening per line, or use none or generic"
            )
    source = replay.source
    if not isinstance(source, str) or not source.strip():
        raise RecipeError("recipe key 'replay.source' must be self or the path of a .txt or .jsonl file")
    if source != "self" and replay.rows:
        path = Path(source).expanduser()
        if path.suffix not in (".txt", ".jsonl"):
            raise RecipeError(f"replay.source {source}: use a .txt or .jsonl file, or replay.source=self")
        if not path.is_file():
            raise RecipeError(
                f"replay.source {source}: no such file; give a .txt or .jsonl file, or replay.source=self"
            )


# Each data.format and the columns its rows have (data.fields renames them from the files' own)
DATA_FORMATS = {"prompt_completion": ("prompt", "completion"), "text": ("text",), "chat": ("messages",)}


def _check_data(data: DataConfig) -> None:
    if isinstance(data.files, str):
        data.files = [data.files]  # one file may be written without brackets
    if data.files is not None and not (data.files and all(isinstance(f, str) and f for f in data.files)):
        raise RecipeError(f"recipe key 'data.files' must be a non-empty list of paths (or null), got {data.files!r}")
    if data.format not in DATA_FORMATS:
        raise RecipeError(f"recipe key 'data.format' must be one of {', '.join(DATA_FORMATS)}, got {data.format!r}")
    if data.format != "prompt_completion" and not data.files:
        raise RecipeError(f"data.format={data.format} reads data.files; name the files (data.files=[PATH, ...])")
    columns = DATA_FORMATS[data.format]
    for key, value in data.fields.items():
        if key not in columns:
            raise RecipeError(
                f"recipe key 'data.fields.{key}': data.format={data.format} has the fields {', '.join(columns)}"
            )
        if not isinstance(value, str) or not value:
            raise RecipeError(f"recipe key 'data.fields.{key}' must be a column name, got {value!r}")
    if data.chat_loss not in ("assistant", "all"):
        raise RecipeError(f"recipe key 'data.chat_loss' must be assistant or all, got {data.chat_loss!r}")
    if data.chunk_overlap >= data.max_length - 2:
        raise RecipeError(
            f"data.chunk_overlap={data.chunk_overlap} must be less than data.max_length - 2 "
            f"({data.max_length - 2}): a chunk must bring a new token"
        )


def check_ranges(values: dict[str, Any], names: dict[str, str] | None = None) -> None:
    """Each recipe key's value in its range (the one table, used for recipes and for command-line
    options that set the same values); ``names`` says how the user wrote a key (``--limit``)."""
    for key, value in values.items():
        ok, requirement = _RANGES[key]
        if value is not None and not ok(value):
            name = (names or {}).get(key) or f"recipe key {key!r}"
            raise RecipeError(f"{name} must be {requirement}, got {value!r}")


def _check_options(options: dict, where: str) -> None:
    for name, value in options.items():
        if isinstance(value, dict):
            _check_options(value, f"{where}.{name}")
        elif isinstance(value, list):
            for k, item in enumerate(value):
                if isinstance(item, dict):
                    _check_options(item, f"{where}.{name}[{k}]")
        elif _FRACTION_OPTION.search(name) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not 0 <= value <= 1:
                raise RecipeError(f"recipe key '{where}.{name}' is a fraction and must be in [0, 1], got {value!r}")
