"""finetune.mlp_neurons (bico/training/sparse_mlp.py): only the chosen MLP neurons train."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import tiny_recipe

from bico.config import RecipeError, load_recipe
from bico.models import setup_model
from bico.training.sparse_mlp import mean_activations, restrict_to_neurons, select_neurons
from bico.training.train import train
from helpers import make_llama

TINY = str(Path(__file__).resolve().parent.parent / "recipes" / "demo" / "tiny.yaml")


def test_neurons_are_ranked_by_training_over_background_activation():
    train_act = torch.tensor([[1.0, 4.0, 2.0, 0.01], [3.0, 3.0, 3.0, 3.0]], dtype=torch.float64)
    background = torch.tensor([[1.0, 1.0, 0.1, 0.0], [1.0, 3.0, 6.0, 0.5]], dtype=torch.float64)
    chosen = select_neurons(train_act, background, 0.5)
    assert chosen.sum(1).tolist() == [2, 2]
    # layer 0: 2/(0.1+0.053) beats 4/(1+0.053); the silent neuron 3 (0.01 over the floor) loses
    assert chosen[0].tolist() == [False, True, True, False]
    assert chosen[1].tolist() == [True, False, False, True]
    assert select_neurons(train_act, background, 0.01).sum(1).tolist() == [1, 1]  # at least one


def test_mean_activations_ignore_padding_and_match_a_direct_computation():
    torch.manual_seed(0)
    model = make_llama("bico", vocab=64)
    seqs = [[5, 6, 7, 8, 9], [10, 11]]
    got = mean_activations(model, seqs, pad_id=0)
    assert got.shape == (len(model.model.layers), model.config.intermediate_size)
    rows = []
    with torch.no_grad():
        for seq in seqs:  # one unpadded row at a time
            seen = {}
            hook = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(
                lambda _m, args: seen.__setitem__("x", args[0])
            )
            model(input_ids=torch.tensor([seq]))
            hook.remove()
            rows.append(seen["x"][0].abs().double())
    want = torch.cat(rows).mean(0)
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-7)


def test_only_the_chosen_neurons_move_and_the_rest_of_the_model_is_frozen():
    torch.manual_seed(0)
    model = make_llama("bico", vocab=64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    width = model.config.intermediate_size
    chosen = torch.zeros(len(model.model.layers), width, dtype=torch.bool)
    chosen[:, [1, width - 2]] = True
    restrict_to_neurons(model, chosen)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    ids = torch.randint(1, 64, (2, 9))
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    for name, param in model.named_parameters():
        moved = (param.detach() != before[name]).reshape(param.shape)
        if "gate_proj" in name or "up_proj" in name:
            assert moved.any(1).tolist() == chosen[0].tolist(), name
        elif "down_proj" in name:
            assert moved.any(0).tolist() == chosen[0].tolist(), name
        elif "embed_tokens" in name:
            assert moved.any(), "the input embedding follows finetune.freeze, here trainable"
        else:
            assert not moved.any(), f"{name} moved"


def test_a_tiny_run_with_replay_trains_only_the_chosen_neurons(tmp_path, reversal_dir):
    replay = tmp_path.parent / f"{tmp_path.name}-replay.txt"
    replay.write_text("The river runs past the old mill and into the valley below, where the town begins.\n")
    recipe = tiny_recipe(
        tmp_path,
        reversal_dir,
        "train.max_steps=3",
        "train.save_model=true",
        "finetune.method=full",
        "finetune.mlp_neurons=0.25",
        "finetune.freeze=[model.embed_tokens.*]",
        "replay.rows=1",
        f"replay.source={replay}",
        "replay.length=8",
    )
    initial = {n: p.detach().clone() for n, p in setup_model(recipe, reversal_dir)[0].named_parameters()}
    train(recipe)
    trained = load_file(tmp_path / "model" / "model.safetensors")
    width = recipe.model.intermediate_size
    for name, before in initial.items():
        moved = trained[name] != before
        if "gate_proj" in name or "up_proj" in name:
            assert 0 < int(moved.any(1).sum()) <= round(0.25 * width), name
        elif "down_proj" in name:
            assert 0 < int(moved.any(0).sum()) <= round(0.25 * width), name
        else:
            assert not moved.any(), f"{name} moved"


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["finetune.method=lora", "replay.rows=2"], "finetune.method is not full"),
        (["finetune.method=full", "train.weight_decay=0.1", "replay.rows=2"], "weight_decay=0.1"),
        (["finetune.method=full"], "replay.rows is 0"),
        (["finetune.method=full", "finetune.mlp_neurons=1.5"], "in [0, 1]"),
    ],
)
def test_a_recipe_that_cannot_rank_or_restrict_neurons_is_refused(overrides, words):
    with pytest.raises(RecipeError, match=r".*") as err:
        load_recipe(TINY, ["finetune.mlp_neurons=0.1", *overrides])
    assert words in str(err.value) and "mlp_neurons" in str(err.value)
