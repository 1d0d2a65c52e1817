"""finetune.freeze: the named parameters do not move, everything else trains, an added token's
embedding row still learns, and a pattern that names nothing is a one-line error."""

import pytest
import torch
from safetensors.torch import load_file
from test_cli import SMALL, TINY
from test_train import tiny_recipe

from bico.cli import main
from bico.config import RecipeError
from bico.models import ModelError, setup_model
from bico.training.train import train

EMBED = "model.embed_tokens.weight"


def _trained_and_initial(tmp_path, reversal_dir, *extra):
    recipe = tiny_recipe(tmp_path, reversal_dir, "train.max_steps=3", "train.save_model=true", *extra)
    initial = {n: p.detach().clone() for n, p in setup_model(recipe, reversal_dir)[0].named_parameters()}
    train(recipe)
    return load_file(tmp_path / "model" / "model.safetensors"), initial


def test_frozen_parameters_keep_their_values_and_the_rest_trains(tmp_path, reversal_dir):
    trained, initial = _trained_and_initial(
        tmp_path, reversal_dir, "finetune.method=full", "finetune.freeze=[model.embed_tokens.*,model.layers.0.mlp.*]"
    )
    frozen = [n for n in initial if n == EMBED or n.startswith("model.layers.0.mlp.")]
    assert len(frozen) == 4 and all(torch.equal(trained[n], initial[n]) for n in frozen)
    assert all(not torch.equal(trained[n], initial[n]) for n in initial if n not in frozen)
    model = setup_model(tiny_recipe(tmp_path, reversal_dir, "finetune.method=full", "finetune.freeze=[model.norm.*]"))[
        0
    ]
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["model.norm.weight"]


def test_a_frozen_embedding_still_trains_the_rows_of_added_tokens(tmp_path, reversal_dir):
    """BICO's added mask token starts as the mean row: it must learn although the table is frozen."""
    added_and_frozen = [
        "objective.name=bico",
        "objective.options.mask_token=added",
        "finetune.method=full",
        "finetune.freeze=[model.embed_tokens.*]",
    ]
    trained, initial = _trained_and_initial(tmp_path, reversal_dir, *added_and_frozen)
    old, new = trained[EMBED][:-1], trained[EMBED][-1]
    assert torch.equal(old, initial[EMBED][:-1]) and not torch.equal(new, initial[EMBED][-1])
    for extra, message in [
        ("train.deepspeed=zero2", "that DeepSpeed's partitioned parameters bypass"),
        ("train.weight_decay=0.1", r"set train.weight_decay=0$"),
    ]:
        with pytest.raises(ModelError, match=message):
            setup_model(tiny_recipe(tmp_path, reversal_dir, *added_and_frozen, extra), reversal_dir)


def test_bad_freeze_settings_are_one_line_errors(tmp_path, reversal_dir, capsys):
    with pytest.raises(RecipeError, match="finetune.freeze is for finetune.method=full"):
        tiny_recipe(tmp_path, reversal_dir, "finetune.method=lora", "finetune.freeze=[model.norm.*]")
    with pytest.raises(RecipeError, match="must be a list of parameter-name patterns"):
        tiny_recipe(tmp_path, reversal_dir, "finetune.method=full", "finetune.freeze=model.norm.*")
    argv = ["train", TINY, *SMALL, f"data.dir={reversal_dir}", f"train.output_dir={tmp_path / 'run'}"]
    code = main([*argv, "finetune.method=full", "finetune.freeze=[lm_head.*]"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "finetune.freeze pattern 'lm_head.*' matches no parameter of this model" in err
    assert "model.layers.N.mlp.down_proj.weight" in err and "model.embed_tokens.weight" in err  # what it can name
    assert not (tmp_path / "run").exists()  # nothing half-written
