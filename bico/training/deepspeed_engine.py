"""The DeepSpeed engine: :class:`bico.training.engine.TorchEngine`'s API on ``deepspeed.initialize``.

A recipe switches to it with one key, ``train.deepspeed``: a JSON file (such as
``recipes/deepspeed/zero3.json``), the name of a shipped one (``zero2``, ``zero3``,
``zero3_offload``) or an inline mapping. Values written ``"auto"`` (or left out) are filled
from the recipe, so the recipe stays the one source of truth:

==========================================  ==============================================
DeepSpeed key                               filled from
==========================================  ==============================================
``train_micro_batch_size_per_gpu``          ``train.batch_size``
``gradient_accumulation_steps``             ``train.grad_accum``
``train_batch_size``                        batch_size x grad_accum x number of ranks
``gradient_clipping``                       ``train.max_grad_norm`` (0 = off)
``bf16.enabled`` / ``fp16.enabled``         ``train.precision``
``optimizer.params.lr/betas/weight_decay``  ``train.lr/betas/weight_decay`` (eps: 1e-8)
``zero_optimization.reduce_bucket_size``    hidden_size² ("auto" only)
``stage3_prefetch_bucket_size``             0.9 x hidden_size² ("auto" only)
``stage3_param_persistence_threshold``      10 x hidden_size ("auto" only)
==========================================  ==============================================

A value that is written out and disagrees with the recipe is an error (set it to "auto").
Without an ``"optimizer"`` section bico passes the same ``torch.optim.AdamW`` as the plain
engine (so the two give the same training, see ``tests/test_deepspeed.py``); with one,
DeepSpeed builds its own (FusedAdam on GPUs, DeepSpeedCPUAdam with optimizer offload). The
learning-rate schedule is always bico's (``train.schedule``, ``train.warmup_steps``); a
``"scheduler"`` section is refused rather than silently ignored.

The training loop keeps every rank in lock step (:attr:`DeepSpeedEngine.lockstep`): each rank
runs exactly ``train.grad_accum`` forward/backward passes per step, since ZeRO's collectives
(gradient reduce-scatter, ZeRO-3 parameter gathers) must line up across ranks.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import torch

from bico import resources
from bico.errors import BicoError
from bico.training import distributed
from bico.training.checkpoints import checkpoint_path, publish_checkpoint
from bico.training.engine import (
    ADAM_EPS,
    CheckpointError,
    Engine,
    adamw,
    load_state,
    lr_schedule,
    resolve_precision,
    resume_schedule,
    trainable_parameters,
)
from bico.training.step import normalised_loss

logger = logging.getLogger(__name__)
AUTO = "auto"
TMP_TAG_PREFIX = ".tmp-"  # checkpoint tags being written; a killed save leaves one behind


def deepspeed_state_types() -> tuple:
    """The classes, besides tensors and containers, that DeepSpeed's own checkpoint files pickle
    (``torch.serialization.get_unsafe_globals_in_checkpoint`` on ZeRO-2 and ZeRO-3 checkpoints):
    plain records whose loading runs no code of the file's choosing."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return (ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address)


class DeepSpeedConfigError(BicoError, ValueError):
    """The DeepSpeed config cannot be used with this recipe; the message says what to change."""


def resolve_config(value) -> tuple[dict, str]:
    """``(config dict, where it came from)`` for ``train.deepspeed``: a dict, a path or a shipped name."""
    if isinstance(value, dict):
        return copy.deepcopy(value), "train.deepspeed"
    path = Path(str(value))
    candidates = [resources.find(path)]  # as given, or recipes/deepspeed/... shipped with bico
    if not path.is_absolute() and path.suffix == "":
        candidates.append(resources.shipped("deepspeed", f"{path}.json"))  # zero2 | zero3 | zero3_offload
    for candidate in candidates:
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text()), str(candidate)
            except json.JSONDecodeError as err:
                raise DeepSpeedConfigError(f"{candidate}: not valid JSON ({err})") from None
    shipped = ", ".join(sorted(p.stem for p in resources.shipped("deepspeed").glob("*.json"))) or "none found"
    raise DeepSpeedConfigError(f"train.deepspeed={value!r}: no such file (shipped configs: {shipped})")


def _agree(section: dict, key: str, value, where: str, recipe_key: str) -> None:
    """Fill ``section[key]`` when missing or "auto"; otherwise it must equal the recipe's value."""
    current = section.get(key, AUTO)
    if current == AUTO:
        section[key] = value
        return
    same = list(current) == list(value) if isinstance(value, (list, tuple)) else current == value
    if isinstance(value, float) and isinstance(current, (int, float)) and not isinstance(current, bool):
        same = abs(float(current) - value) <= 1e-12 * max(1.0, abs(value))
    if not same:
        raise DeepSpeedConfigError(
            f"{where}: DeepSpeed key {key!r} is {current!r} but the recipe says {recipe_key}={value!r}; "
            f'set it to "auto" (bico fills it from the recipe) or change the recipe'
        )


def _find_auto(value, path: str = "") -> list[str]:
    if value == AUTO:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _find_auto(v, f"{path}.{k}" if path else k)]
    return []


def fill_config(
    config: dict,
    recipe,
    *,
    world_size: int,
    hidden_size: int | None,
    where: str = "train.deepspeed",
    device_type: str = "cuda",
) -> dict:
    """A copy of ``config`` with every "auto" value filled from the recipe (see the module docs)."""
    cfg = recipe.train
    ds = copy.deepcopy(config)
    if "scheduler" in ds:
        raise DeepSpeedConfigError(
            f'{where}: remove the "scheduler" section; bico drives the learning rate from train.schedule, '
            "train.warmup_steps and train.lr"
        )
    _agree(ds, "train_micro_batch_size_per_gpu", cfg.batch_size, where, "train.batch_size")
    _agree(ds, "gradient_accumulation_steps", cfg.grad_accum, where, "train.grad_accum")
    _agree(
        ds,
        "train_batch_size",
        cfg.batch_size * cfg.grad_accum * world_size,
        where,
        f"train.batch_size x train.grad_accum x {world_size} ranks",
    )
    _agree(ds, "gradient_clipping", float(cfg.max_grad_norm or 0.0), where, "train.max_grad_norm")
    # DeepSpeed runs bf16 on CPU ranks; fp16 needs its GPU loss scaler
    precision, _ = resolve_precision(cfg.precision, device_type, error=DeepSpeedConfigError)
    for name in ("bf16", "fp16"):
        section = ds.setdefault(name, {})
        if not isinstance(section, dict):
            raise DeepSpeedConfigError(f'{where}: {name!r} must be a mapping such as {{"enabled": "auto"}}')
        _agree(section, "enabled", precision == name, f"{where} ({name})", "train.precision")
    optimizer = ds.get("optimizer")
    if optimizer is not None:
        params = optimizer.setdefault("params", {})
        _agree(params, "lr", float(cfg.lr), f"{where} (optimizer)", "train.lr")
        _agree(params, "betas", [float(b) for b in cfg.betas], f"{where} (optimizer)", "train.betas")
        _agree(params, "weight_decay", float(cfg.weight_decay), f"{where} (optimizer)", "train.weight_decay")
        if params.get("eps", AUTO) == AUTO:
            params["eps"] = ADAM_EPS
    else:
        # bico hands DeepSpeed a torch.optim.AdamW (same maths as the plain engine).
        ds.setdefault("zero_allow_untested_optimizer", True)
    zero = ds.get("zero_optimization", {})
    if hidden_size:
        h = int(hidden_size)
        for key, value in (
            ("reduce_bucket_size", h * h),
            ("stage3_prefetch_bucket_size", int(0.9 * h * h)),
            ("stage3_param_persistence_threshold", 10 * h),
        ):
            if zero.get(key) == AUTO:
                zero[key] = value
    ds.setdefault("steps_per_print", 10**12)  # bico logs its own metrics
    ds.setdefault("wall_clock_breakdown", False)
    left = _find_auto(ds)
    if left:
        raise DeepSpeedConfigError(f'{where}: bico cannot fill "auto" for {", ".join(left)}; write a value')
    return ds


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def _hidden_size(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "hidden_size", None) or getattr(getattr(config, "text_config", None), "hidden_size", None)


def _quiet_deepspeed() -> None:
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.INFO if logger.isEnabledFor(logging.INFO) else logging.WARNING)


class DeepSpeedEngine(Engine):
    """ZeRO data parallelism behind bico's :class:`~bico.training.engine.Engine` interface.

    ``module`` is the DeepSpeed engine itself (call it like the model; ZeRO-3 gathers the
    parameters it needs). ``is_main_process`` is global rank 0.
    """

    lockstep = True  # every rank runs exactly train.grad_accum passes per step (see train.py)

    def __init__(self, model, recipe, total_steps: int, device: torch.device):
        try:
            import deepspeed
        except ImportError:
            raise DeepSpeedConfigError(
                "train.deepspeed needs DeepSpeed: pip install deepspeed (or bico[deepspeed])"
            ) from None
        _quiet_deepspeed()
        cfg = recipe.train
        self.cfg, self.device = cfg, device
        raw, where = resolve_config(cfg.deepspeed)
        self.world_size = distributed.world_size()
        self.config = fill_config(
            raw,
            recipe,
            world_size=self.world_size,
            hidden_size=_hidden_size(model),
            where=where,
            device_type=device.type,
        )
        self.stage = zero_stage(self.config)
        self.precision = next((n for n in ("bf16", "fp16") if self.config.get(n, {}).get("enabled") is True), "fp32")
        params = trainable_parameters(model)
        self.has_frozen = any(not p.requires_grad for p in model.parameters())
        # without an "optimizer" section DeepSpeed steps the plain engine's AdamW (same training)
        optimizer = adamw(params, cfg, device) if "optimizer" not in self.config else None
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=params,
            optimizer=optimizer,
            config=self.config,
            lr_scheduler=lr_schedule(cfg, total_steps),
        )
        self.module = self.ds
        self.is_main_process = distributed.rank() == 0
        self.grad_accum = cfg.grad_accum
        self._passes = 0
        self._unwrapped = None
        self.ds.train()
        logger.info("DeepSpeed ZeRO-%d on %d ranks from %s", self.stage, self.world_size, where)

    # -- training -------------------------------------------------------------------------
    def backward_loss(self, compute_loss_sum, num_targets: int) -> float:
        """Backward of (loss summed over a micro-batch) / (targets in the whole step, all ranks),
        times the number of ranks, since DeepSpeed averages gradients over them
        (:func:`~bico.training.step.normalised_loss`)."""
        self._passes += 1
        if self._passes > self.grad_accum:
            raise RuntimeError(f"more than train.grad_accum={self.grad_accum} backward passes in one step")
        loss_sum = compute_loss_sum()
        loss = normalised_loss(loss_sum, num_targets, self.world_size)
        self.ds.backward(loss, scale_wrt_gas=False)
        if self._passes < self.grad_accum:
            self.ds.step()  # not an accumulation boundary: DeepSpeed only counts the micro-step
        return float(loss_sum.detach())

    def step(self) -> float | None:
        if self._passes != self.grad_accum:
            raise RuntimeError(
                f"{self._passes} backward passes in a step; DeepSpeed expects train.grad_accum="
                f"{self.grad_accum} on every rank"
            )
        self._passes = 0
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        return None if norm is None else float(norm)

    # -- the trained model ----------------------------------------------------------------
    def unwrapped_model(self):
        """The trained model as a plain module (call on every rank: a collective under ZeRO-3).

        ZeRO-0/1/2: every rank holds the full weights; this is the wrapped module.
        ZeRO-3: the 16-bit weights are gathered to rank 0 into a plain copy of the module (no
        DeepSpeed hooks), on which rank 0 can evaluate or save alone; other ranks get their
        partitioned module back. The result is cached.
        """
        if self._unwrapped is None:
            self._unwrapped = self._consolidated() if self.stage == 3 else self.ds.module
        return self._unwrapped

    def _consolidated(self):
        state = self.ds._zero3_consolidated_16bit_state_dict()  # collective; full dict on rank 0
        module = self.ds.module
        if not self.is_main_process:
            return module
        memo: dict = {}
        for name, param in module.named_parameters(remove_duplicate=False):
            if id(param) not in memo:  # tied weights stay tied: one memo entry per parameter object
                memo[id(param)] = torch.nn.Parameter(state[name].to(self.device), requires_grad=param.requires_grad)
        for sub in module.modules():
            for attr, value in vars(sub).items():
                if "hook" in attr and isinstance(value, dict):
                    memo[id(value)] = type(value)()  # drop DeepSpeed's gather/partition hooks
        plain = copy.deepcopy(module, memo)
        for sub in plain.modules():
            for attr in [a for a in vars(sub) if a.startswith("ds_") or a.startswith("_ds_")]:
                delattr(sub, attr)
        return plain

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, output_dir: Path, step: int, keep: int = 2, trainer_state: dict | None = None) -> Path:
        """Every rank writes its shards into a temporary tag; rank 0 renames it ``step-N``.

        ``output_dir`` must be on a file system that all nodes share.
        """
        target = checkpoint_path(output_dir, step)
        folder = target.parent
        folder.mkdir(parents=True, exist_ok=True)
        tmp_tag = f"{TMP_TAG_PREFIX}{target.name}"
        if self.is_main_process and (folder / tmp_tag).exists():
            shutil.rmtree(folder / tmp_tag)
        distributed.barrier()
        self.ds.save_checkpoint(
            str(folder),
            tag=tmp_tag,
            save_latest=False,
            exclude_frozen_parameters=self.has_frozen,
            client_state={"bico_step": step, "bico_world_size": self.world_size},
        )
        distributed.barrier()
        if self.is_main_process:
            publish_checkpoint(folder / tmp_tag, target, keep, trainer_state)
        distributed.barrier()
        return target

    def load_checkpoint(self, path: Path) -> int:
        path = Path(path)
        for part in sorted(path.glob("*.pt")):  # DeepSpeed unpickles them with weights_only=False: vet them first
            load_state(part, allow=deepspeed_state_types())
        loaded, client = self.ds.load_checkpoint(
            str(path.parent), tag=path.name, load_module_strict=not self.has_frozen
        )
        if loaded is None:
            raise CheckpointError(f"checkpoint {path} could not be loaded by DeepSpeed (is it a DeepSpeed checkpoint?)")
        written_by = client.get("bico_world_size")
        if written_by is not None and written_by != self.world_size:
            raise CheckpointError(
                f"checkpoint {path} was written by {written_by} ranks; resume it with {written_by} ranks"
            )
        if "bico_step" not in client:
            raise CheckpointError(f"checkpoint {path} has no bico step counter; it was not written by bico")
        if self.ds.lr_scheduler is not None:
            resume_schedule(self.ds.lr_scheduler)
        return int(client["bico_step"])
