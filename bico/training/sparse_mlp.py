"""A sparse update: train only the MLP neurons that the training data uses far more than general text.

``finetune.mlp_neurons: f`` (0 < f <= 1; 0, the default, is off) keeps, in every layer, the fraction
``f`` of the MLP's intermediate neurons whose mean activation magnitude on the training text is
highest *relative to* their mean on the replay text (the base model's own general text), and trains
only their weights: rows of ``gate_proj`` and ``up_proj``, columns of ``down_proj``. Attention, norms
and every other neuron stay as the base model has them; the embedding follows ``finetune.freeze``.
It is the MLP analog of sparse memory finetuning (Lin et al. 2025, arXiv 2510.15103), which updates
only the memory slots a batch uses far more than pretraining data does (a TF-IDF ranking) and
forgets far less than full finetuning or LoRA for the same new facts.

The scores come from one causal forward pass of the *base* model over both texts, before training
and before a checkpoint is loaded, so that a resumed run selects the same neurons.
"""

from __future__ import annotations

import logging

import torch

from bico.errors import TrainingError

logger = logging.getLogger(__name__)
BATCH_ROWS = 16
RELATIVE_FLOOR = 0.1  # of a layer's mean background activation: neurons that are silent everywhere don't win


def _mlps(model) -> list:
    layers = getattr(getattr(model, "model", model), "layers", None)
    mlps = [getattr(layer, "mlp", None) for layer in layers or []]
    if not mlps or not all(hasattr(m, name) for m in mlps for name in ("gate_proj", "up_proj", "down_proj")):
        raise TrainingError(
            "finetune.mlp_neurons needs a Llama-style MLP (gate_proj, up_proj, down_proj) in every layer; "
            "set finetune.mlp_neurons=0"
        )
    return mlps


@torch.no_grad()
def mean_activations(model, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """``[layers, neurons]``: mean |input of down_proj| over the real tokens of ``sequences``."""
    mlps = _mlps(model)
    sums = torch.zeros(len(mlps), mlps[0].down_proj.in_features, dtype=torch.float64)
    keep: dict = {}
    hooks = [
        m.down_proj.register_forward_pre_hook(lambda _m, args, i=i: keep.__setitem__(i, args[0]))
        for i, m in enumerate(mlps)
    ]
    device = next(model.parameters()).device
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(sequences), BATCH_ROWS):
            chunk = sequences[start : start + BATCH_ROWS]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            real = torch.zeros(len(chunk), width, dtype=torch.bool)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq)
                real[row, : len(seq)] = True
            model(input_ids=ids.to(device), attention_mask=real.long().to(device))
            for i in range(len(mlps)):
                sums[i] += keep[i].abs().double().cpu()[real].sum(0)
            tokens += int(real.sum())
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return sums / max(1, tokens)


def select_neurons(train_act: torch.Tensor, background_act: torch.Tensor, fraction: float) -> torch.Tensor:
    """``[layers, neurons]`` bool: per layer, the top ``fraction`` by train / background activation."""
    floor = RELATIVE_FLOOR * background_act.mean(dim=1, keepdim=True)
    score = train_act / (background_act + floor)
    k = max(1, round(fraction * score.shape[1]))
    chosen = torch.zeros_like(score, dtype=torch.bool)
    chosen.scatter_(1, score.topk(k, dim=1).indices, True)
    return chosen


def restrict_to_neurons(model, chosen: torch.Tensor) -> int:
    """Freeze every parameter but the embedding (``finetune.freeze`` decides it) and the MLPs; mask the
    MLPs' gradients to the ``chosen`` neurons. Returns the number of trainable weights left in MLPs."""
    mlps = _mlps(model)
    keep = {id(p) for m in mlps for p in (m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight)}
    embedding = model.get_input_embeddings().weight
    for param in model.parameters():
        if id(param) not in keep and param is not embedding:
            param.requires_grad_(False)
    trained = 0
    for mlp, rows in zip(mlps, chosen):
        row_mask = rows.float()
        for linear in (mlp.gate_proj, mlp.up_proj):
            linear.weight.register_hook(lambda g, m=row_mask: g * m.to(g.device, g.dtype)[:, None])
        mlp.down_proj.weight.register_hook(lambda g, m=row_mask: g * m.to(g.device, g.dtype)[None, :])
        trained += int(rows.sum()) * 3 * mlp.gate_proj.in_features
    return trained


def sparse_mlp_update(model, fraction: float, train_seqs: list[list[int]], background_seqs: list[list[int]], pad_id):
    """``finetune.mlp_neurons``: score on the base model, then restrict the update (see the module)."""
    if not background_seqs:
        raise TrainingError(
            "finetune.mlp_neurons ranks neurons against general text and takes it from the replay rows; "
            "set replay.rows (e.g. replay.rows=4) or finetune.mlp_neurons=0"
        )
    chosen = select_neurons(
        mean_activations(model, train_seqs, pad_id), mean_activations(model, background_seqs, pad_id), fraction
    )
    trained = restrict_to_neurons(model, chosen)
    logger.info(
        "finetune.mlp_neurons=%g: %d of %d MLP neurons per layer train (%s MLP weights)",
        fraction,
        int(chosen[0].sum()),
        chosen.shape[1],
        f"{trained:,}",
    )
    return chosen
