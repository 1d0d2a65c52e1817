"""The training loop: short enough to read in one sitting.

Every source of randomness is derived from ``(train.seed, step)``: which examples form a step,
the objective's per-batch choices and its masking, and torch's own RNG (LoRA dropout), reseeded
for every micro-batch. Resuming from a checkpoint therefore replays exactly the batches an
uninterrupted run would have seen, and N ranks (each taking its share of a step's micro-batches,
see :class:`StepPlan`) compute exactly the step of one process with the same global batch.
The optimizer/backward/step mechanics live behind an *engine* (:mod:`bico.engine`, or
:mod:`bico.deepspeed_engine` when ``train.deepspeed`` is set); objectives, data and evaluation
do not know which one runs.
"""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bico import distributed
from bico.attention import require_bico
from bico.collate import collate, model_inputs
from bico.config import Recipe, check_recipe
from bico.engine import build_engine
from bico.models import apply_finetuning, count_parameters, fit_embeddings, load_model, save_model
from bico.objectives import Example, build_objective
from bico.objectives.base import IGNORE
from bico.rundir import RunDir

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


def tokenize_examples(rows: list[dict], tokenizer, max_length: int, sources: list[str] | None = None) -> list[Example]:
    """Tokenize once (prompt with the tokenizer's special tokens, completion without).
    ``sources[i]`` says where row i comes from (file and line), for the error on an over-long row."""
    examples = []
    for i, row in enumerate(rows):
        prompt_ids = tokenizer(row["prompt"]).input_ids
        completion_ids = tokenizer(row["completion"], add_special_tokens=False).input_ids
        length = len(prompt_ids) + len(completion_ids) + 1
        if length > max_length:
            where = sources[i] if sources else f"training row {i + 1}"
            raise TrainingError(
                f"{where}: {length} tokens, more than data.max_length={max_length}; "
                "raise data.max_length or shorten the row"
            )
        examples.append(Example(row["prompt"], row["completion"], prompt_ids, completion_ids, row.get("meta", {})))
    return examples


def load_training_rows(recipe: Recipe) -> tuple[list[dict], list[str]]:
    """Training rows and where each comes from (``file, line N``). Where the data dir's facts
    are known, each row gets ``meta`` = its fact's ``{"name", "description"}`` (entity spans for
    objectives such as entity-preserving reversal). ``data.identity_bridge`` adds identity rows
    for those facts (:mod:`bico.data.identity`)."""
    from bico.data import fact_groups, iter_jsonl, load_facts, resolve_data_dir
    from bico.data.identity import add_identity_bridge

    folder = resolve_data_dir(recipe.data.dir)
    rows, sources = [], []
    for name in recipe.data.train_files:
        for line, row in iter_jsonl(Path(folder) / name):
            rows.append(row)
            sources.append(f"{Path(folder) / name}, line {line}")
    facts = load_facts(folder)
    if facts:
        descriptions = {f["name"]: f["description"] for f in facts}
        for row, name in zip(rows, fact_groups(rows, facts)):
            if name is not None:
                row["meta"] = {"name": name, "description": descriptions[name]}
    return add_identity_bridge(rows, sources, recipe.data.identity_bridge)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name} but no CUDA device is visible; use train.device=cpu or auto")
    return device


def nan_hint(cfg) -> str:
    """What to change after a NaN/inf loss: the usual remedies, minus those already in force."""
    already, try_next = [], [f"lower train.lr (now {cfg.lr:g})"]
    if cfg.max_grad_norm:
        already.append(f"train.max_grad_norm={cfg.max_grad_norm:g}")
    else:
        try_next.append("set train.max_grad_norm=1.0")
    if cfg.precision == "fp32":
        already.append("train.precision=fp32")
    else:
        try_next.append("use train.precision=fp32")
    if cfg.warmup_steps:
        already.append(f"train.warmup_steps={cfg.warmup_steps}")
    else:
        try_next.append("add train.warmup_steps")
    return "; ".join(filter(None, [f"already set: {', '.join(already)}" if already else "", "try: " + ", ".join(try_next)]))


class StepPlan:
    """Which examples make up optimizer step ``step``: a seeded permutation per epoch.

    With several ranks the plan is built for the global batch (``grad_accum`` x ranks
    micro-batches per step) and rank r takes micro-batches r, r + ranks, ... (:meth:`for_rank`):
    the union over ranks is exactly the single-process step with the same global batch.
    """

    def __init__(self, num_examples: int, batch_size: int, grad_accum: int, seed: int):
        self.n, self.batch_size, self.grad_accum, self.seed = num_examples, batch_size, grad_accum, seed
        self.per_step = batch_size * grad_accum
        self.steps_per_epoch = math.ceil(num_examples / self.per_step)

    def micro_batches(self, step: int) -> list[list[int]]:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = list(range(self.n))
        random.Random(f"order-{self.seed}-{epoch}").shuffle(order)
        chosen = order[index * self.per_step : (index + 1) * self.per_step]
        return [chosen[i : i + self.batch_size] for i in range(0, len(chosen), self.batch_size)]

    def for_rank(self, step: int, rank: int, world: int) -> list[tuple[int, list[int]]]:
        """``(global micro-batch index, example indices)`` of this rank's share of the step."""
        return [(m, idx) for m, idx in enumerate(self.micro_batches(step)) if m % world == rank]


def torch_seed(seed: int, step: int, micro: int) -> int:
    """Seed of torch's RNG (dropout) for one micro-batch: the same whichever rank runs it."""
    return random.Random(f"torch-{seed}-{step}-{micro}").getrandbits(63)


def make_batch(objective, examples, indices, seed: int, step: int, micro: int, pad_id: int, data_cfg) -> dict:
    rng = random.Random(f"objective-{seed}-{step}-{micro}")
    state = objective.start_batch(rng)
    samples = [objective.encode(examples[i], rng, state) for i in indices]
    batch = collate(samples, pad_id, pack=data_cfg.pack, max_length=data_cfg.max_length)
    batch["mode"] = state if isinstance(state, str) else objective.name
    return batch


def batch_loss(model, batch: dict, device: torch.device, head_at_targets: bool = True) -> torch.Tensor:
    """Summed weighted cross-entropy over the batch's targets (the caller normalises).

    ``head_at_targets``: run the decoder and the LM head as two calls, the head only on positions
    that have a target (a denoising step predicts ~15% of its tokens). Under DeepSpeed ZeRO-3 the
    model must be called as a whole (its parameter gathering hangs on the top-level forward; the
    split call moved 2 ranks off 1 process by 2.5e-4 in loss), so the trainer turns it off there.
    """
    require_bico(model)  # a model on another attention would ignore the mask: no silent causal fallback
    inputs = model_inputs(batch, device)  # input_ids, position_ids, bico_mask (RoPE mode included)
    targets = batch["targets"].to(device)
    keep = targets != IGNORE
    if head_at_targets:
        hidden = model.get_decoder()(use_cache=False, **inputs).last_hidden_state
        logits = model.get_output_embeddings()(hidden[keep])
    else:
        logits = model(use_cache=False, **inputs).logits[keep]
    losses = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    return (losses * batch["weights"].to(device)[keep]).sum()


def train(recipe: Recipe, *, stop_after: int | None = None) -> dict:
    """Train as the recipe says; returns a summary. ``stop_after`` simulates an interruption.

    A run that ``train.resume=true`` finds already finished is not trained again: the summary
    returned is the finished run's, with ``"already_finished": True`` (and no model).
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
        from bico.deepspeed_engine import resolve_config

        resolve_config(cfg.deepspeed)  # a missing config fails before anything is loaded or written
    device = pick_device(cfg.device)
    # Everything that can be checked without the model is checked before the output dir is touched.
    data_dir = resolve_data_dir(recipe.data.dir)
    rows, sources = load_training_rows(recipe)
    if recipe.eval.enabled:
        check_eval_splits(data_dir, recipe.eval.splits)
    # Rank 0 owns the output dir; the rank is known from the launcher's environment before setup.
    with RunDir(cfg.output_dir, recipe, owner=distributed.rank() == 0) as run:
        return _train_in(run, recipe, device, data_dir, rows, sources, stop_after)


def _train_in(run: RunDir, recipe: Recipe, device, data_dir, rows, sources, stop_after) -> dict:
    cfg = recipe.train
    torch.manual_seed(cfg.seed)
    device = distributed.setup(device, use_deepspeed=bool(cfg.deepspeed))
    world, rank = distributed.world_size(), distributed.rank()

    model, tokenizer = load_model(recipe.model, data_dir=data_dir)
    objective = build_objective(recipe.objective.name, tokenizer, recipe.objective.options)
    new_ids = fit_embeddings(model, tokenizer)
    model = apply_finetuning(model, recipe.finetune, new_ids).to(device)
    trainable, total = count_parameters(model)
    examples = tokenize_examples(rows, tokenizer, recipe.data.max_length, sources)

    plan = StepPlan(len(examples), cfg.batch_size, cfg.grad_accum * world, cfg.seed)  # the global batch
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * plan.steps_per_epoch))
    finished = run.already_finished(total_steps)
    if finished is not None:
        logger.info("%s: the run finished after %d steps; nothing to do", cfg.output_dir, finished["steps"])
        return {**finished, "already_finished": True}
    if run.state["step"] > total_steps:
        raise TrainingError(f"the checkpoint in {cfg.output_dir} is at step {run.state['step']}, past the "
                            f"{total_steps} steps this recipe asks for; raise train.max_steps or train.epochs")
    engine = build_engine(model, recipe, total_steps, device)
    start = 0
    if run.checkpoint is not None:
        start = engine.load_checkpoint(run.checkpoint)
        logger.info("resumed from %s at step %d", run.checkpoint, start)
    counters = {"tokens": int(run.state["tokens"]), "elapsed_s": float(run.state["elapsed_s"])}
    main = engine.is_main_process  # only rank 0 writes logs, the recipe, the summary and the model
    lockstep = getattr(engine, "lockstep", False)  # DeepSpeed: grad_accum passes per rank, always
    split_head = not cfg.deepspeed  # see batch_loss: ZeRO-3 needs the whole-model call
    run.begin(recipe.to_dict(), start)
    logger.info(
        "%s: %d examples, %d steps, objective %s, %s/%s params trainable, device %s",
        recipe.model.name, len(examples), total_steps, objective.describe(), f"{trainable:,}", f"{total:,}", device,
    )

    pad_id = tokenizer.pad_token_id
    # A run killed after its last checkpoint but before its summary resumes with no step left to do.
    began, loss_value = time.time(), float(run.state.get("loss", math.nan))

    def elapsed() -> float:  # training time over every resumption, not only this process's
        return counters["elapsed_s"] + (time.time() - began)

    bar = tqdm(range(start, total_steps), desc=f"train {objective.name}", disable=not cfg.progress or not main,
               initial=start, total=total_steps)
    for step in bar:
        objective.set_progress(step, total_steps)
        batches = [
            (m, make_batch(objective, examples, idx, cfg.seed, step, m, pad_id, recipe.data))
            for m, idx in plan.for_rank(step, rank, world)
        ]
        # Normalise by the targets of the whole step on all ranks, so gradients match one process.
        num_targets, step_tokens = (int(v) for v in distributed.all_reduce_sum(
            [sum(b["num_targets"] for _, b in batches), sum(b["num_tokens"] for _, b in batches if b["num_targets"])],
            device))
        # (micro index, batch, weight); empty batches (e.g. a denoising batch where no token drew
        # a mask) are skipped, except in lock step where they run (and padding runs) with no effect.
        passes = [(m, b, 1.0) for m, b in batches if lockstep or b["num_targets"] > 0]
        if lockstep:
            filler = batches[0] if batches else (0, make_batch(objective, examples, plan.micro_batches(step)[0],
                                                                cfg.seed, step, 0, pad_id, recipe.data))
            passes += [(filler[0], filler[1], 0.0)] * (cfg.grad_accum - len(passes))
        loss_sum = 0.0
        for m, batch, weight in passes:
            torch.manual_seed(torch_seed(cfg.seed, step, m))
            if weight == 1.0:
                compute = lambda b=batch: batch_loss(engine.module, b, device, split_head)  # noqa: E731
            else:
                compute = lambda b=batch: batch_loss(engine.module, b, device, split_head) * 0.0  # noqa: E731
            loss_sum += engine.backward_loss(compute, num_targets)
        counters["tokens"] += step_tokens
        loss_value = distributed.all_reduce_sum([loss_sum], device)[0] / max(num_targets, 1)
        if not math.isfinite(loss_value):
            raise TrainingError(f"loss became {loss_value} at step {step + 1}; {nan_hint(cfg)}")
        grad_norm = engine.step()
        # step 0, not the first step of this process: a resumed run logs the same lines as an uninterrupted one
        if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps or step == 0:
            record = {
                "step": step + 1, "epoch": round((step + 1) / plan.steps_per_epoch, 4), "loss": round(loss_value, 6),
                "lr": engine.lr(), "grad_norm": grad_norm, "targets": num_targets,
                "mode": ",".join(sorted({b["mode"] for _, b in batches})), "tokens": counters["tokens"],
                "elapsed_s": round(elapsed(), 2),
            }
            if main:
                run.append_metrics(record)
                bar.set_postfix(loss=f"{loss_value:.4f}")
        # A checkpoint at the last step too, so that raising the step budget later goes on from there.
        if cfg.save_every and ((step + 1) % cfg.save_every == 0 or step + 1 == total_steps):
            state = {"step": step + 1, "tokens": counters["tokens"], "elapsed_s": round(elapsed(), 3),
                     "loss": loss_value, "recipe": recipe.to_dict()}
            engine.save_checkpoint(run.path, step + 1, keep=cfg.keep_checkpoints, trainer_state=state)
        if stop_after is not None and step + 1 >= stop_after:
            bar.close()
            return {"steps": step + 1, "interrupted": True, "loss": loss_value}
    bar.close()
    wall = elapsed()
    summary = {
        "steps": total_steps, "final_loss": loss_value, "tokens": counters["tokens"], "wall_time_s": round(wall, 2),
        "tokens_per_s": round(counters["tokens"] / wall, 1) if wall > 0 else None, "objective": objective.describe(),
        "trainable_params": trainable, "total_params": total, "device": str(device),
    }
    model = engine.unwrapped_model()  # every rank calls it: under ZeRO-3 it gathers the weights to rank 0
    if cfg.save_model and main:
        save_model(model, tokenizer, run.path / "model")
    if main:
        run.write_summary(summary)
    distributed.barrier()
    summary["model"], summary["tokenizer"], summary["engine"] = model, tokenizer, engine
    return summary
