"""Engines: how a loss becomes an optimizer step. The training loop only calls :class:`Engine`.

:class:`Engine` is the interface, with what every engine shares: AdamW and its learning-rate
schedule, the precision check, loading checkpoint files safely (their names, checksums and
rotation: :mod:`bico.training.checkpoints`). :class:`TorchEngine` is plain PyTorch (AdamW, warm-up
+ decay, clipping, autocast, checkpoints);
:class:`bico.training.deepspeed_engine.DeepSpeedEngine` is ZeRO data parallelism. This module imports
neither DeepSpeed nor that module (the loop picks one, :func:`bico.training.train.build_engine`).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import shutil
from abc import ABC, abstractmethod
from contextlib import nullcontext
from pathlib import Path

import torch

from bico.config import RecipeError
from bico.errors import BicoError, TrainingError
from bico.io_utils import temp_dir_beside
from bico.machine import cpu_bf16_flags
from bico.training.checkpoints import checkpoint_path, publish_checkpoint
from bico.training.diskspace import FileWriter
from bico.training.step import normalised_loss

logger = logging.getLogger("bico")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# What train.precision=auto becomes on every machine, when set (e.g. fp32 for runs that must match
# bit for bit across CPUs with and without bf16 hardware; the test suite sets it).
AUTO_PRECISION_ENV = "BICO_AUTO_PRECISION"
ADAM_EPS = 1e-8  # torch.optim.AdamW's default; DeepSpeed's own optimizers get it written out


class CheckpointError(BicoError, ValueError):
    """A checkpoint cannot be resumed from; the message names the file and what to do."""


def load_state(path: Path, allow: tuple = ()):
    """``torch.load`` with ``weights_only=True``: tensors, numbers, strings and containers, which is
    all bico's engine saves (RNG states are tensors), and the classes in ``allow``. A pickle that
    asks for anything else could run code while it loads, so it is refused, not loaded."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        wanted = re.search(r"GLOBAL (\S+)", str(err))
        if wanted:
            raise CheckpointError(
                f"checkpoint file {path} asks for {wanted.group(1) if wanted else 'more than tensors'} "
                "when loaded, which could run code, so bico does not load it; resume only from "
                "checkpoints bico wrote, or start over with train.overwrite=true"
            ) from None
        raise _damaged(path, err) from None
    except (RuntimeError, EOFError) as err:  # a truncated or foreign file: torch's zip reader
        raise _damaged(path, err) from None


def _damaged(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint file {path} is damaged or not a bico checkpoint ({' '.join(str(err).split())}); "
        "start over with train.overwrite=true"
    )


def lr_lambda(schedule: str, warmup: int, total: int):
    if schedule not in ("linear", "cosine", "constant"):
        raise RecipeError(f"train.schedule {schedule!r}: use linear, cosine or constant")

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def check_precision(precision: str, device_type: str, *, on_cpu: tuple = ("fp32", "bf16"), error=RecipeError) -> None:
    """An explicit ``train.precision`` is known and, off a GPU, one of ``on_cpu``."""
    if precision not in PRECISIONS[1:]:
        raise error(f"train.precision {precision!r}: use auto, fp32, bf16 or fp16")
    if device_type != "cuda" and precision not in on_cpu:
        raise error(f"train.precision={precision} needs a GPU; use {' or '.join(on_cpu)} on CPU")


def resolve_precision(
    precision: str, device_type: str, *, on_cpu: tuple = ("fp32", "bf16"), error=RecipeError
) -> tuple[str, str]:
    """``(precision, why)``: ``train.precision`` with ``auto`` decided for this device.

    auto is bf16 where the hardware multiplies bf16 natively (a CUDA GPU that supports it; a CPU
    with AMX or AVX512-BF16, where bf16 matmuls run 4-6x faster than fp32), fp32 elsewhere (a CPU
    without them emulates bf16, slower than fp32). Autocast keeps fp32 master weights either way.
    """
    if precision == "auto":
        forced = os.environ.get(AUTO_PRECISION_ENV)
        if forced:
            if forced not in PRECISIONS[1:]:
                raise error(f"{AUTO_PRECISION_ENV}={forced!r}: use fp32, bf16 or fp16")
            precision, why = forced, f"auto, set by {AUTO_PRECISION_ENV}"
        elif device_type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
            why = "auto: this GPU " + ("supports bf16" if precision == "bf16" else "has no bf16")
        else:
            flags = cpu_bf16_flags()
            precision = "bf16" if flags else "fp32"
            why = (
                f"auto: this CPU multiplies bf16 natively ({', '.join(flags)})"
                if flags
                else "auto: this CPU has no native bf16 matmuls (no AMX or AVX512-BF16)"
            )
    else:
        why = "train.precision"
    check_precision(precision, device_type, on_cpu=on_cpu, error=error)
    return precision, why


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("no trainable parameters: check finetune.method / lora_targets")
    return params


def adamw(params, cfg, device: torch.device) -> torch.optim.AdamW:
    """The optimizer of every engine (DeepSpeed gets this one unless its config names its own)."""
    # fused: one kernel over all parameters (on CPU too); 2-3x faster than the per-tensor loop
    return torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas), eps=ADAM_EPS, fused=True
    )


def lr_schedule(cfg, total_steps: int):
    """``optimizer -> LambdaLR`` with bico's warm-up and decay (``train.schedule``)."""
    factor = lr_lambda(cfg.schedule, cfg.warmup_steps, total_steps)
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resume_schedule(scheduler) -> None:
    """After a checkpoint's scheduler and optimizer states are loaded: the learning rate of the
    next step from this run's schedule. The loaded one is the checkpoint's, computed for its step
    budget: after raising ``train.max_steps`` a linear decay would start the new steps at 0.
    With the budget unchanged this is the same number."""
    lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


class Engine(ABC):
    """What the training loop calls; an engine owns the optimizer, the schedule and checkpoints.

    ``module`` is called like the model. ``is_main_process``: this process writes the run's
    files. ``lockstep``: every rank must run exactly ``train.grad_accum`` backward passes per
    step, since the engine's collectives must line up across ranks; the loop then runs an empty
    micro-batch with weight 0 where it would otherwise skip it.
    """

    module: torch.nn.Module
    scheduler: torch.optim.lr_scheduler.LRScheduler
    is_main_process: bool = True
    lockstep: bool = False
    precision: str = "fp32"  # what train.precision resolved to (auto decided)

    @abstractmethod
    def backward_loss(self, compute_loss_sum, num_targets: int) -> float:
        """Backward of ``compute_loss_sum()`` (loss summed over a micro-batch) scaled by
        :func:`~bico.training.step.normalised_loss` (``num_targets``: the targets of the whole step,
        on all ranks); returns the sum."""

    @abstractmethod
    def step(self) -> float | None:
        """The optimizer step after the step's backward passes; returns the gradient norm, if known."""

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    @abstractmethod
    def unwrapped_model(self) -> torch.nn.Module:
        """The trained model as a plain module (every rank calls it)."""

    @abstractmethod
    def save_checkpoint(self, output_dir: Path, step: int, keep: int = 2, trainer_state: dict | None = None) -> Path:
        """Atomically write ``checkpoints/step-N`` (see :func:`publish_checkpoint`)."""

    @abstractmethod
    def load_checkpoint(self, path: Path) -> int:
        """Restore a checkpoint written by this kind of engine; returns its step."""


class TorchEngine(Engine):
    """Plain PyTorch in one process: AdamW, autocast (fp16 with a gradient scaler), clipping."""

    def __init__(self, model, recipe, total_steps: int, device: torch.device):
        cfg = recipe.train
        self.module, self.cfg, self.device = model, cfg, device
        # fp16 needs the GPU's loss scaler; bf16 autocast runs on CPUs too
        self.precision, why = resolve_precision(cfg.precision, device.type)
        logger.info("precision %s (%s)", self.precision, why)
        self.params = trainable_parameters(model)
        self.optimizer = adamw(self.params, cfg, device)
        self.scheduler = lr_schedule(cfg, total_steps)(self.optimizer)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.module.train()
        if cfg.compile:  # in place: parameter names and the saved model stay as they are
            self.module.compile(dynamic=True)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def backward_loss(self, compute_loss_sum, num_targets: int) -> float:
        """Backward of (loss summed over a micro-batch) / (targets in the whole step)."""
        with self._autocast():
            loss_sum = compute_loss_sum()
        loss = normalised_loss(loss_sum, num_targets)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        return float(loss_sum.detach())

    def step(self) -> float | None:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        norm = None
        if self.cfg.max_grad_norm:
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def unwrapped_model(self):
        return self.module

    def _trainable_state(self) -> dict:
        return {n: p.detach().cpu() for n, p in self.module.named_parameters() if p.requires_grad}

    def save_checkpoint(self, output_dir: Path, step: int, keep: int = 2, trainer_state: dict | None = None) -> Path:
        target = checkpoint_path(output_dir, step)
        tmp = temp_dir_beside(target)
        state = {
            "step": step,
            "params": self._trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }
        try:
            with FileWriter(tmp / "state.pt") as f:  # a full disk: OSError, not torch's "unexpected pos"
                torch.save(state, f)
            return publish_checkpoint(tmp, target, keep, trainer_state)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def load_checkpoint(self, path: Path) -> int:
        state = load_state(Path(path) / "state.pt")
        keys = ("step", "params", "optimizer", "scheduler", "torch_rng")
        if not isinstance(state, dict) or not all(k in state for k in keys):
            raise _damaged(Path(path) / "state.pt", ValueError("not the state bico saves"))
        named = dict(self.module.named_parameters())
        missing = set(state["params"]) ^ {n for n, p in named.items() if p.requires_grad}
        if missing:
            raise CheckpointError(
                f"checkpoint {path} does not match this model/finetune setup ({len(missing)} params differ)"
            )
        with torch.no_grad():
            for name, value in state["params"].items():
                named[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        resume_schedule(self.scheduler)
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return int(state["step"])
