"""One optimizer step's pieces, shared by ``bico train`` (:mod:`bico.training.train`, both engines)
and :mod:`bico.hf`'s trainers: which examples form a step (:class:`StepPlan`), the seeds of its
micro-batches (:func:`make_batch`, :func:`torch_seed`), their loss (:func:`batch_loss`) and the one
rule that scales it (:func:`normalised_loss`).

Every source of randomness derives from ``(seed, step, micro)``, whichever process or rank runs
the micro-batch: a resumed run replays exactly the batches of an uninterrupted one, and N ranks
compute exactly the step of one process with the same global batch.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from bico.attention import require_bico
from bico.collate import collate, model_inputs
from bico.objectives.base import IGNORE


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
    """Summed weighted cross-entropy over the batch's targets (:func:`normalised_loss` scales it).

    ``head_at_targets``: run the decoder and the LM head as two calls, the head only on positions
    that have a target (a denoising step predicts ~15% of its tokens). Under DeepSpeed ZeRO-3 the
    model must be called as a whole (its parameter gathering hangs on the top-level forward; the
    split call moved 2 ranks off 1 process by 2.5e-4 in loss), so the trainer turns it off there.
    """
    logits, keep = target_logits(model, batch, device, head_at_targets)
    targets = batch["targets"].to(device)
    losses = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    return (losses * batch["weights"].to(device)[keep]).sum()


def target_logits(model, batch: dict, device: torch.device, head_at_targets: bool = True):
    """``(logits, keep)``: the LM head's output at the batch's target positions (``keep``, a
    ``[B, T]`` bool), in the order of ``batch["targets"][keep]``; see :func:`batch_loss`."""
    require_bico(model)  # a model on another attention would ignore the mask: no silent causal fallback
    inputs = model_inputs(batch, device)  # input_ids, position_ids, bico_mask (RoPE mode included)
    keep = batch["targets"].to(device) != IGNORE
    if head_at_targets:
        hidden = model.get_decoder()(use_cache=False, **inputs).last_hidden_state
        return model.get_output_embeddings()(hidden[keep]), keep
    return model(use_cache=False, **inputs).logits[keep], keep


def normalised_loss(loss_sum, step_targets, ranks: int = 1):
    """The loss that is backpropagated for one micro-batch: its summed weighted cross-entropy
    (:func:`batch_loss`) divided by the targets of the whole optimizer step on every rank
    (``step_targets``, at least 1), times ``ranks``, the number of ranks whose gradients are averaged
    (DeepSpeed, DDP; 1 in one process).

    Summed over the step's micro-batches and averaged over ranks, the gradients are then those of
    the mean loss per target of the global batch: every target of the step weighs the same,
    whichever micro-batch or rank holds it (a denoising micro-batch that masked few tokens counts for
    little), so any split of the step gives the gradient of one process. With ``ranks=1`` it is also
    the mean loss per target that ``bico train`` logs. ``step_targets`` may be a tensor
    (``transformers.Trainer``'s ``num_items_in_batch``)."""
    if isinstance(step_targets, torch.Tensor):
        return loss_sum * ranks / step_targets.to(loss_sum.device).clamp(min=1)
    return loss_sum * ranks / max(step_targets, 1)
