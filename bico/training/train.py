"""The training loop: short enough to read in one sitting.

Every source of randomness is derived from ``(train.seed, step)``: which examples form a step,
the objective's per-batch choices and its masking, and torch's own RNG (LoRA dropout), reseeded
for every micro-batch (:mod:`bico.training.step`). Resuming from a checkpoint therefore replays
exactly the batches an uninterrupted run would have seen, and N ranks (each taking its share of a
step's micro-batches, see :class:`~bico.training.step.StepPlan`) compute exactly the step of one
process with the same global batch. The rows and their tokenisation: :mod:`bico.training.examples`.
The optimizer/backward/step mechanics live behind an *engine* (:mod:`bico.training.engine`, or
:mod:`bico.training.deepspeed_engine` when ``train.deepspeed`` is set); objectives, data and evaluation
do not know which one runs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bico import machine
from bico.attention import check_environment
from bico.config import Recipe, check_recipe
from bico.errors import TrainingError
from bico.machine import keep_freed_memory
from bico.models import count_parameters, save_model, setup_model
from bico.termination import StopRequest
from bico.training import distributed
from bico.training.checkpoints import checkpoint_path
from bico.training.diskspace import full_disk_is_an_error, no_space_error, out_of_space, weights_advice
from bico.training.engine import Engine, TorchEngine
from bico.training.examples import tokenize_examples, training_data
from bico.training.report import Reporter
from bico.training.rundir import LOSS_PNG, METRICS_LOG, SUMMARY_JSON, RunDir
from bico.training.step import StepPlan, batch_loss, make_batch, normalised_loss, target_logits, torch_seed

logger = logging.getLogger(__name__)


MAX_STEPS = 10**9  # more optimizer steps than any run can take: a typo in train.epochs or train.max_steps


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name} but no CUDA device is visible; use train.device=cpu or auto")
    return device


def nan_hint(cfg, precision: str) -> str:
    """What to change after a NaN/inf loss: the usual remedies, minus those already in force
    (``precision``: what ``train.precision`` resolved to)."""
    already, try_next = [], [f"lower train.lr (now {cfg.lr:g})"]
    if cfg.max_grad_norm:
        already.append(f"train.max_grad_norm={cfg.max_grad_norm:g}")
    else:
        try_next.append("set train.max_grad_norm=1.0")
    if precision == "fp32":
        already.append("train.precision=fp32")
    else:
        try_next.append("use train.precision=fp32")
    if cfg.warmup_steps:
        already.append(f"train.warmup_steps={cfg.warmup_steps}")
    else:
        try_next.append("add train.warmup_steps")
    return "; ".join(
        filter(None, [f"already set: {', '.join(already)}" if already else "", "try: " + ", ".join(try_next)])
    )


def _replay_passes(
    engine, replay, recipe, step: int, micros: list[int], pad_id: int, device, split_head: bool, counters: dict
) -> float:
    """The step's replay rows (:mod:`bico.training.replay`), one pass per micro-batch of the objective,
    their loss (next-token, or KL to the base with ``replay.loss: kl``) normalised by the step's replay
    targets and scaled by ``replay.weight``; returns their mean loss (unweighted). Their tokens count
    in ``counters["tokens"]``: they cost compute like any."""
    from bico.training.replay import kl_to_base, replay_batch

    cfg, weight = recipe.train, recipe.replay.weight
    batches = [
        (m, replay_batch(replay, recipe.replay.rows, cfg.seed, step, m, pad_id, recipe.data.pack)) for m in micros
    ]
    targets = sum(b["num_targets"] for _, b in batches)

    def loss_sum(batch):
        if "base_ids" not in batch:
            return batch_loss(engine.module, batch, device, split_head)
        logits, keep = target_logits(engine.module, batch, device, split_head)
        return kl_to_base(logits, batch["base_ids"].to(device)[keep], batch["base_logp"].to(device)[keep])

    total = 0.0
    for m, batch in batches:
        torch.manual_seed(torch_seed(cfg.seed, step, m) ^ 0x5EED)  # its own dropout stream
        total += engine.backward_loss(lambda b=batch: loss_sum(b) * weight, targets)
        counters["tokens"] += batch["num_tokens"]
    return normalised_loss(total / weight, targets)


def build_engine(model, recipe: Recipe, total_steps: int, device: torch.device) -> Engine:
    """DeepSpeed when ``train.deepspeed`` is set, plain PyTorch otherwise (imported only when used)."""
    if recipe.train.deepspeed:
        from bico.training.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, recipe, total_steps, device)
    return TorchEngine(model, recipe, total_steps, device)


@dataclass
class TrainResult:
    """What :func:`train` returns. ``summary`` is JSON (what ``train_summary.json`` holds) with the
    same keys however the run ended; ``summary["status"]`` says how: ``"finished"``,
    ``"already_finished"`` (a resumed run that had nothing left to do: no model in memory) or
    ``"interrupted"`` (``stop_after``). The live objects are set when the run finished here."""

    summary: dict
    model: Any = None
    tokenizer: Any = None
    engine: Engine | None = None

    @property
    def status(self) -> str:
        return self.summary["status"]


def train(recipe: Recipe, *, stop_after: int | None = None) -> TrainResult:
    """Train as the recipe says. ``stop_after`` simulates an interruption after that step.

    A run that ``train.resume=true`` finds already finished is not trained again: the summary
    returned is the finished run's, with status ``"already_finished"``.
    """
    from bico.data import check_eval_splits, resolve_data_dir

    check_recipe(recipe)
    cfg = recipe.train
    if distributed.launched() and not cfg.deepspeed:
        raise TrainingError(
            f"started as {distributed.world_size()} ranks but train.deepspeed is not set; several ranks train "
            "through DeepSpeed, e.g. train.deepspeed=recipes/deepspeed/zero2.json"
        )
    if cfg.deepspeed:
        from bico.training.deepspeed_engine import resolve_config

        resolve_config(cfg.deepspeed)  # a missing config fails before anything is loaded or written
    device = pick_device(cfg.device)
    check_environment()
    # Everything that can be checked without the model is checked before the output dir is touched.
    # A corpus in data.files needs no reversal data dir, unless evaluation or a word vocabulary reads it.
    needs_dir = not recipe.data.files or recipe.data.dir or recipe.eval.enabled or recipe.model.tokenizer == "words"
    data_dir = resolve_data_dir(recipe.data.dir) if needs_dir else None
    rows, sources, data_fingerprint = training_data(recipe)
    if recipe.eval.enabled:
        check_eval_splits(data_dir, recipe.eval.splits)
    # Rank 0 owns the output dir; the rank is known from the launcher's environment before setup.
    with (
        RunDir(cfg.output_dir, recipe, owner=distributed.rank() == 0, data_fingerprint=data_fingerprint) as run,
        StopRequest() as stop,
    ):
        return _train_in(run, recipe, device, data_dir, rows, sources, stop_after, stop)


def _any_rank(flag: bool, device) -> bool:
    """Whether ``flag`` is set on any rank (one all-reduce; none in one process)."""
    if distributed.world_size() == 1 or not distributed.initialized():
        return flag
    return distributed.all_reduce_sum([float(flag)], device)[0] > 0


def _train_in(run: RunDir, recipe: Recipe, device, data_dir, rows, sources, stop_after, stop) -> TrainResult:
    cfg = recipe.train
    torch.manual_seed(cfg.seed)
    device = distributed.setup(device, use_deepspeed=bool(cfg.deepspeed))
    world, rank = distributed.world_size(), distributed.rank()

    if device.type == "cpu" and machine.KEEP_FREED_MEMORY and keep_freed_memory():
        logger.info("CPU: freed memory is kept for reuse (glibc mmap off), which saves page faults")
    model, tokenizer, objective = setup_model(recipe, data_dir, device)
    trainable, total = count_parameters(model)
    examples = tokenize_examples(rows, tokenizer, recipe.data.max_length, sources, data=recipe.data)
    replay = None
    if recipe.replay.rows:
        from bico.training.replay import load_replay

        replay = load_replay(recipe, tokenizer, data_dir, progress=cfg.progress and rank == 0)
    if recipe.finetune.mlp_neurons:
        from bico.training.sparse_mlp import sparse_mlp_update

        texts = [e.prompt_ids + e.completion_ids for e in examples]
        sparse_mlp_update(
            model,
            recipe.finetune.mlp_neurons,
            texts,
            [e.prompt_ids + e.completion_ids for e in replay],
            tokenizer.pad_token_id,
        )
        trainable, total = count_parameters(model)

    plan = StepPlan(len(examples), cfg.batch_size, cfg.grad_accum * world, cfg.seed)  # the global batch
    total_steps = cfg.max_steps or cfg.epochs * plan.steps_per_epoch
    if total_steps > MAX_STEPS:  # a typo (epochs=1e308): no run has that many steps, and inf has no ceil
        asked = (
            f"train.max_steps={cfg.max_steps}"
            if cfg.max_steps
            else f"train.epochs={cfg.epochs:g} ({plan.steps_per_epoch} steps an epoch)"
        )
        raise TrainingError(f"{asked} asks for {total_steps:.3g} optimizer steps, more than {MAX_STEPS:.0e}; lower it")
    total_steps = cfg.max_steps or max(1, math.ceil(total_steps))
    finished = run.already_finished(total_steps)
    if finished is not None:
        logger.info("%s: the run finished after %d steps; nothing to do", cfg.output_dir, finished["steps"])
        return TrainResult({**finished, "status": "already_finished"})
    if run.state["step"] > total_steps:
        raise TrainingError(
            f"the checkpoint in {cfg.output_dir} is at step {run.state['step']}, past the "
            f"{total_steps} steps this recipe asks for; raise train.max_steps or train.epochs"
        )
    engine = build_engine(model, recipe, total_steps, device)
    start = 0
    if run.checkpoint is not None:
        start = engine.load_checkpoint(run.checkpoint)
        logger.info("resumed from %s at step %d", run.checkpoint, start)
    counters = {"tokens": int(run.state["tokens"]), "elapsed_s": float(run.state["elapsed_s"])}
    main = engine.is_main_process  # only rank 0 writes logs, the recipe, the summary and the model
    lockstep = engine.lockstep  # DeepSpeed: grad_accum passes per rank, always
    split_head = not cfg.deepspeed  # see batch_loss: ZeRO-3 needs the whole-model call
    run.begin(recipe.to_dict(), start)
    stop.arm()  # start-up is over: from now on SIGTERM/SIGINT stop at the next step boundary, with a checkpoint
    # After begin: the metrics log is cut back to the checkpoint, and so are the event files.
    reporter = Reporter(recipe, run.path, start_step=start, counters=counters, enabled=main)
    logger.info(
        "%s: %d examples, %d steps, objective %s, %s/%s params trainable, device %s",
        recipe.model.name,
        len(examples),
        total_steps,
        objective.describe(),
        f"{trainable:,}",
        f"{total:,}",
        device,
    )

    pad_id = tokenizer.pad_token_id
    # A run killed after its last checkpoint but before its summary resumes with no step left to do.
    began, loss_value = time.time(), float(run.state.get("loss", math.nan))

    def elapsed() -> float:  # training time over every resumption, not only this process's
        return counters["elapsed_s"] + (time.time() - began)

    def checkpoint(step: int) -> Path:
        state = {
            "step": step,
            "tokens": counters["tokens"],
            "elapsed_s": round(elapsed(), 3),
            "loss": loss_value,
            "recipe": recipe.to_dict(),
            "data": run.data_fingerprint,
        }
        target = checkpoint_path(run.path, step)
        with stop.saving(), full_disk_is_an_error(target, "the checkpoint", run.path, TrainingError):
            return engine.save_checkpoint(run.path, step, keep=cfg.keep_checkpoints, trainer_state=state)

    def make_summary(status: str, steps: int) -> dict:
        wall = elapsed()
        return {
            "status": status,
            "steps": steps,
            "final_loss": loss_value,
            "tokens": counters["tokens"],
            "wall_time_s": round(wall, 2),
            "tokens_per_s": round(counters["tokens"] / wall, 1) if wall > 0 else None,
            "objective": objective.describe(),
            "trainable_params": trainable,
            "total_params": total,
            "device": str(device),
            "precision": engine.precision,
        }

    bar = tqdm(
        range(start, total_steps),
        desc=f"train {objective.name}",
        disable=not cfg.progress or not main,
        initial=start,
        total=total_steps,
    )
    for step in bar:
        objective.set_progress(step, total_steps)
        batches = [
            (m, make_batch(objective, examples, idx, cfg.seed, step, m, pad_id, recipe.data))
            for m, idx in plan.for_rank(step, rank, world)
        ]
        # Normalise by the targets of the whole step on all ranks, so gradients match one process.
        num_targets, step_tokens = (
            int(v)
            for v in distributed.all_reduce_sum(
                [
                    sum(b["num_targets"] for _, b in batches),
                    sum(b["num_tokens"] for _, b in batches if b["num_targets"]),
                ],
                device,
            )
        )
        # (micro index, batch, weight); empty batches (e.g. a denoising batch where no token drew
        # a mask) are skipped, except in lock step where they run (and padding runs) with no effect.
        passes = [(m, b, 1.0) for m, b in batches if lockstep or b["num_targets"] > 0]
        if lockstep:
            filler = (
                batches[0]
                if batches
                else (
                    0,
                    make_batch(
                        objective, examples, plan.micro_batches(step)[0], cfg.seed, step, 0, pad_id, recipe.data
                    ),
                )
            )
            passes += [(filler[0], filler[1], 0.0)] * (cfg.grad_accum - len(passes))
        loss_sum = 0.0
        for m, batch, weight in passes:
            torch.manual_seed(torch_seed(cfg.seed, step, m))
            if weight == 1.0:
                compute = lambda b=batch: batch_loss(engine.module, b, device, split_head)  # noqa: E731
            else:
                compute = lambda b=batch: batch_loss(engine.module, b, device, split_head) * 0.0  # noqa: E731
            loss_sum += engine.backward_loss(compute, num_targets)
        replay_loss = (
            _replay_passes(engine, replay, recipe, step, [m for m, _ in batches], pad_id, device, split_head, counters)
            if replay
            else None
        )
        counters["tokens"] += step_tokens
        loss_value = normalised_loss(distributed.all_reduce_sum([loss_sum], device)[0], num_targets)
        for value in (loss_value, replay_loss if replay else 0.0):
            if not math.isfinite(value):
                raise TrainingError(f"loss became {value} at step {step + 1}; {nan_hint(cfg, engine.precision)}")
        grad_norm = engine.step()
        # step 0, not the first step of this process: a resumed run logs the same lines as an uninterrupted one
        if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps or step == 0:
            record = {
                "step": step + 1,
                "epoch": round((step + 1) / plan.steps_per_epoch, 4),
                "loss": round(loss_value, 6),
                "lr": engine.lr(),
                "grad_norm": grad_norm,
                "targets": num_targets,
                "mode": ",".join(sorted({b["mode"] for _, b in batches})),
                "tokens": counters["tokens"],
                "elapsed_s": round(elapsed(), 2),
            }
            if replay:
                record["replay_loss"] = round(replay_loss, 6)
            if main:
                with full_disk_is_an_error(run.path / METRICS_LOG, "the metrics log", run.path, TrainingError):
                    run.append_metrics(record)
                reporter.log(record)
                bar.set_postfix(loss=f"{loss_value:.4f}")
        # A checkpoint at the last step too, so that raising the step budget later goes on from there.
        saved = cfg.save_every and ((step + 1) % cfg.save_every == 0 or step + 1 == total_steps)
        if saved:
            checkpoint(step + 1)
        if stop.requested(
            lambda flag: _any_rank(flag, device)
        ):  # SIGTERM/SIGINT: this step's checkpoint, then stop (bico.termination)
            target = checkpoint_path(run.path, step + 1) if saved else checkpoint(step + 1)
            bar.close()
            reporter.close()
            raise stop.stopped(step + 1, total_steps, target)
        if stop_after is not None and step + 1 >= stop_after:
            bar.close()
            reporter.close()
            return TrainResult(make_summary("interrupted", step + 1))
    bar.close()
    model = engine.unwrapped_model()  # every rank calls it: under ZeRO-3 it gathers the weights to rank 0
    writing = ("the loss plot", run.path / LOSS_PNG)  # what a full disk stopped, for its message
    try:
        reporter.close()  # loss.png
        summary = make_summary("finished", total_steps)
        if cfg.save_model and main:
            writing = ("the model", run.path / "model")
            save_model(model, tokenizer, run.path / "model")
        if main:
            writing = ("the summary", run.path / SUMMARY_JSON)
            run.write_summary(summary)
    except Exception as err:
        if not out_of_space(err, run.path):
            raise
        kept = checkpoint_path(run.path, total_steps)
        if not kept.is_dir() and world == 1:  # (under DeepSpeed a checkpoint takes every rank)
            try:  # where the half-made model was: a LoRA checkpoint is far smaller than the merged model
                checkpoint(total_steps)
            except TrainingError:
                pass
        raise TrainingError(f"{no_space_error(writing[1], writing[0])}; {weights_advice(run.path, kept)}") from None
    distributed.barrier()
    return TrainResult(summary, model, tokenizer, engine)
