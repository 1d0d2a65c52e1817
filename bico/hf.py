"""bico inside Hugging Face ``transformers.Trainer``: a data collator and a Trainer subclass.

* :class:`BicoDataCollator` turns dataset rows (``{"prompt", "completion", "meta"?}``, as in bico's
  training files, or :class:`~bico.objectives.Example`) into a bico batch with any registered
  objective: ``input_ids``, ``position_ids``, ``bico_mask`` (the forward kwargs, so
  ``model(**batch)`` works on a model after :func:`bico.apply`) plus ``targets`` (already aligned:
  the target at t is predicted from the output at t, not HF ``labels``, which the model would
  shift), ``weights``, ``num_targets``, ``num_tokens``, ``step`` and ``micro``.
* :class:`BicoTrainer` trains with bico's loss (weighted cross-entropy at the targets, normalised
  by the targets of the whole optimizer step on all ranks: :func:`bico.training.step.normalised_loss`)
  and reproduces ``bico train``'s batches.

Reproducing ``bico train``: micro-batch ``micro`` of optimizer step ``step`` draws the objective's
choices from ``random.Random(f"objective-{seed}-{step}-{micro}")`` (:func:`bico.training.step.make_batch`),
torch's RNG (LoRA dropout) is reseeded with :func:`bico.training.step.torch_seed` before its forward, and
``objective.set_progress(step, total)`` (annealing) runs before the step's first micro-batch.
:class:`BicoTrainer` knows (step, micro) exactly: its DataLoader only hands rows through, and it
builds the step's batches itself when Trainer collects them (``get_batch_samples``, called once per
step with ``state.global_step`` = the step), so DataLoader prefetching, workers, a short last step
of an epoch and a resumed run cannot shift them. Called on its own, the collator counts its calls
(``grad_accum`` calls per step), which needs one process: it refuses DataLoader workers.

:class:`BicoSFTTrainer` (needs TRL: ``pip install 'bico[trl]'``) is the same contract inside
``trl.SFTTrainer``: it takes an ``SFTConfig`` (or ``TrainingArguments``), skips TRL's own dataset
preparation (bico tokenizes the rows) and trains with bico's objective and loss; TRL's model
loading from a name, peft_config, callbacks, model card and logging stay TRL's.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from transformers import Trainer

from bico.attention import require_bico
from bico.objectives import Example, build_objective
from bico.objectives.base import Objective
from bico.training import distributed
from bico.training.examples import tokenize_examples
from bico.training.step import batch_loss, make_batch, normalised_loss, torch_seed

__all__ = ["BicoDataCollator", "BicoTrainer"]  # and BicoSFTTrainer, built on first use (needs TRL)


class BicoDataCollator:
    """Rows -> a bico batch. ``objective``: an :class:`~bico.objectives.base.Objective` or a registered
    name (built with default options; an objective that adds tokens, e.g. ``mask_token="added"``, needs
    ``bico.models.fit_embeddings(model, tokenizer)`` afterwards). ``pack``/``max_length`` as in
    :func:`bico.collate.collate` (``max_length`` also refuses longer rows). ``seed``/``grad_accum``:
    those of the run to reproduce (``train.seed``, ``train.grad_accum``); ``total_steps`` is passed to
    ``objective.set_progress`` when used on its own (BicoTrainer passes Trainer's ``max_steps``)."""

    def __init__(
        self,
        objective,
        tokenizer,
        *,
        pack: bool = False,
        max_length: int | None = None,
        seed: int = 0,
        grad_accum: int = 1,
        total_steps: int | None = None,
    ):
        if isinstance(objective, str):
            objective = build_objective(objective, tokenizer)
        if not isinstance(objective, Objective):
            raise TypeError(
                f"BicoDataCollator: objective must be a bico Objective or a registered name, "
                f"got {type(objective).__name__}"
            )
        if int(grad_accum) < 1:
            raise ValueError(f"BicoDataCollator: grad_accum must be >= 1, got {grad_accum}")
        if pack and max_length is None:
            raise ValueError("BicoDataCollator: pack=True needs max_length (the packed row length)")
        self.objective, self.tokenizer = objective, tokenizer
        self.pack, self.max_length, self.seed, self.grad_accum = bool(pack), max_length, int(seed), int(grad_accum)
        self.total_steps = total_steps
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)  # bico's load_model pads with EOS
        self.calls = 0  # micro-batches made by __call__ (its position in the run)

    def examples(self, rows) -> list[Example]:
        """Rows tokenized exactly as ``bico train`` does (Examples pass through)."""
        rows = list(rows)
        for i, row in enumerate(rows):
            if not isinstance(row, Example) and not (isinstance(row, dict) and "prompt" in row and "completion" in row):
                got = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(f"BicoDataCollator: row {i} needs 'prompt' and 'completion' fields, got {got}")
        todo = [r for r in rows if not isinstance(r, Example)]
        done = iter(tokenize_examples(todo, self.tokenizer, self.max_length or math.inf) if todo else [])
        return [r if isinstance(r, Example) else next(done) for r in rows]

    def batch_at(self, rows, step: int, micro: int) -> dict:
        """Micro-batch ``micro`` of optimizer step ``step`` (the caller drives ``set_progress``)."""
        if not rows:
            raise ValueError("BicoDataCollator: cannot collate an empty batch")
        examples = self.examples(rows)
        data = SimpleNamespace(pack=self.pack, max_length=self.max_length)
        batch = make_batch(self.objective, examples, range(len(examples)), self.seed, step, micro, self.pad_id, data)
        del batch["mode"]  # a string; the batch holds only what the model and the loss use
        batch["step"], batch["micro"] = step, micro
        return batch

    def __call__(self, rows) -> dict:
        if torch.utils.data.get_worker_info() is not None:
            # Each worker would count its own calls: batches would repeat seeds and miss steps.
            raise RuntimeError(
                "BicoDataCollator cannot count steps inside DataLoader workers: set num_workers=0 "
                "(dataloader_num_workers=0), or use BicoTrainer, which collates outside the workers"
            )
        step, k = divmod(self.calls, self.grad_accum)
        self.calls += 1
        if k == 0:
            self.objective.set_progress(step, self.total_steps)
        # Several ranks: rank r's k-th micro-batch is the step's micro-batch k * world + r (StepPlan.for_rank).
        return self.batch_at(rows, step, k * distributed.world_size() + distributed.rank())


def _rows(features: list) -> list:
    """The DataLoader's collate_fn under BicoTrainer: rows pass through (see get_batch_samples)."""
    return list(features)


class BicoTrainer(Trainer):
    """``transformers.Trainer`` with bico's loss. ``data_collator`` must be a :class:`BicoDataCollator`
    (its ``seed`` is the run's bico seed; Trainer's ``gradient_accumulation_steps`` replaces its
    ``grad_accum``). The model must run the bico attention (:func:`bico.apply`); peft models work.

    The loss of a micro-batch is its summed weighted cross-entropy divided by the targets of the whole
    optimizer step on every rank, times the number of ranks, which average gradients
    (:func:`~bico.training.step.normalised_loss`), so a step's gradient is that of ``bico train``.
    Evaluation reports the mean loss per target of each batch.
    """

    def __init__(self, model=None, args=None, data_collator=None, **kwargs):
        if not isinstance(data_collator, BicoDataCollator):
            raise TypeError(
                f"BicoTrainer needs data_collator=BicoDataCollator(...), got {type(data_collator).__name__}"
            )
        if model is not None:
            require_bico(model)  # once, early: a model on another attention would silently train causally
        self.bico_collator = data_collator
        super().__init__(model=model, args=args, data_collator=_rows, **kwargs)
        # The rows' prompt/completion/meta are not forward arguments: Trainer would drop them.
        self.args.remove_unused_columns = False
        # compute_loss already divides by the whole step's targets: Trainer must not divide by grad_accum.
        self.loss_is_scaled_for_ga = True
        self._eval_calls = 0

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Build the step's micro-batches from their rows, at the step Trainer is about to take."""
        rows_list, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        step, world, rank = self.state.global_step, self.args.world_size, self.args.process_index
        self.bico_collator.objective.set_progress(step, self.state.max_steps)
        batches = [self.bico_collator.batch_at(rows, step, k * world + rank) for k, rows in enumerate(rows_list)]
        targets = torch.tensor(sum(b["num_targets"] for b in batches), device=device)
        if world > 1:
            targets = self.accelerator.gather(targets).sum()
        return batches, targets

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and "step" in inputs:  # dropout draws as in bico train's micro-batch
            torch.manual_seed(torch_seed(self.bico_collator.seed, int(inputs["step"]), int(inputs["micro"])))
        # The LM head only at the targets needs the model unwrapped: DDP and DeepSpeed must be called whole.
        split_head = self.accelerator.unwrap_model(model) is model
        loss_sum = batch_loss(model, inputs, self.args.device, head_at_targets=split_head)
        if num_items_in_batch is None:  # evaluation, or a caller outside the training loop
            return _with_outputs(normalised_loss(loss_sum, int(inputs["num_targets"])), return_outputs)
        # num_items_in_batch: the step's targets on every rank (get_batch_samples)
        step_targets = torch.as_tensor(num_items_in_batch)
        return _with_outputs(normalised_loss(loss_sum, step_targets, self.args.world_size), return_outputs)

    def evaluate(self, *args, **kwargs):
        self._eval_calls = 0  # every evaluation draws the same masks
        return super().evaluate(*args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        batch = self.bico_collator.batch_at(inputs, -1, self._eval_calls)  # step -1: never a training seed
        self._eval_calls += 1
        with torch.no_grad():
            loss = self.compute_loss(model, self._prepare_inputs(batch))
        return loss.detach(), None, None


def _with_outputs(loss, return_outputs: bool):
    return (loss, None) if return_outputs else loss


# SFTConfig options whose work bico's objective and collator do instead: refused, not silently ignored.
SFT_OPTIONS_REPLACED = {
    "packing": (False, "use BicoDataCollator(pack=True, max_length=...)"),
    "padding_free": (False, "bico batches carry their own attention mask (bico_mask)"),
    "assistant_only_loss": (False, "the objective chooses the loss tokens (chat rows: loss_spans)"),
    "completion_only_loss": (None, "the objective chooses the loss tokens"),
    "loss_type": ("nll", "the loss is bico's weighted cross-entropy at the objective's targets"),
    "label_smoothing_factor": (0.0, "the loss is bico's weighted cross-entropy at the objective's targets"),
}


def _sft_trainer_class():
    try:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        raise ImportError("bico.hf.BicoSFTTrainer needs TRL: pip install 'bico[trl]'") from None

    class BicoSFTTrainer(BicoTrainer, SFTTrainer):
        """``trl.SFTTrainer`` with :class:`BicoTrainer`'s batches and loss (same numbers as ``bico
        train``). ``data_collator`` must be a :class:`BicoDataCollator`; the datasets hold rows
        (``prompt``, ``completion``, ``meta``?) as a ``datasets.Dataset`` or a list of dicts.
        ``processing_class`` defaults to the collator's tokenizer. TRL's dataset preparation is
        skipped (``dataset_kwargs={"skip_prepare_dataset": True}``), and the SFTConfig options it
        would apply (:data:`SFT_OPTIONS_REPLACED`) must keep their defaults."""

        def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None, **kwargs):
            if kwargs.get("formatting_func") is not None or kwargs.get("compute_loss_func") is not None:
                raise ValueError(
                    "BicoSFTTrainer: formatting_func and compute_loss_func are not used: rows are "
                    "prompt/completion pairs and the loss is the bico objective's"
                )
            if args is None:
                args = SFTConfig()
            elif not isinstance(args, SFTConfig):  # as SFTTrainer converts TrainingArguments
                args = SFTConfig(**{**args.to_dict(), "hub_token": args.hub_token})
            for name, (default, instead) in SFT_OPTIONS_REPLACED.items():
                if getattr(args, name) != default:
                    raise ValueError(
                        f"BicoSFTTrainer: SFTConfig.{name}={getattr(args, name)!r} is not used "
                        f"({instead}); leave it at {default!r}"
                    )
            args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
            if isinstance(data_collator, BicoDataCollator):
                kwargs.setdefault("processing_class", data_collator.tokenizer)  # TRL would load one by model name
            super().__init__(
                model=model,
                args=args,
                data_collator=data_collator,
                train_dataset=_as_dataset(train_dataset, Dataset),
                eval_dataset=_as_dataset(eval_dataset, Dataset),
                **kwargs,
            )

    BicoSFTTrainer.__module__ = __name__
    return BicoSFTTrainer


def _as_dataset(rows, dataset_type):
    """SFTTrainer takes only ``datasets.Dataset``s: a list of row dicts becomes one (anything else passes)."""
    return dataset_type.from_list(list(rows)) if isinstance(rows, (list, tuple)) else rows


def __getattr__(name: str):
    if name == "BicoSFTTrainer":  # built on first use: TRL is optional
        cls = _sft_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
