"""The training loop: exact resume, clear stops, recipes and their errors; the loss of a batch."""

import json
import random

import pytest
import torch
import torch.nn.functional as F

from bico.collate import collate
from bico.config import RecipeError, load_recipe
from bico.objectives import IGNORE, build_objective
from bico.training.step import batch_loss
from bico.training.train import TrainingError, train
from helpers import TINY_MODEL, example, make_llama

TINY = [
    "model.name=tiny-random",
    *TINY_MODEL,
    "data.train_files=[p2d_prompts_train.jsonl]",
    "data.max_length=96",
    "train.batch_size=4",
    "train.lr=1e-3",
    "train.log_every=1",
    "train.progress=false",
    "eval.enabled=false",
]


def tiny_recipe(tmp_path, reversal_dir, *extra):
    return load_recipe(None, TINY + [f"data.dir={reversal_dir}", f"train.output_dir={tmp_path}"] + list(extra))


def losses(folder):
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["ntp", "bico"])
def test_resume_continues_exactly(tmp_path, reversal_dir, objective):
    common = [
        f"objective.name={objective}",
        "train.max_steps=6",
        "train.save_every=3",
        "train.save_model=false",
        "finetune.method=lora",
        "finetune.lora_r=4",
        "finetune.lora_dropout=0.1",
    ]
    whole = train(tiny_recipe(tmp_path / "a", reversal_dir, *common))
    train(tiny_recipe(tmp_path / "b", reversal_dir, *common), stop_after=4)  # dies after step 4
    resumed = train(tiny_recipe(tmp_path / "b", reversal_dir, *common, "train.resume=true"))
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # bit-identical curve
    assert len(losses(tmp_path / "b")) == 6
    assert whole.summary["final_loss"] == resumed.summary["final_loss"]


def test_training_lowers_the_loss_and_saves_a_loadable_model(tmp_path, reversal_dir):
    result = train(tiny_recipe(tmp_path, reversal_dir, "train.max_steps=12", "finetune.method=full", "train.lr=3e-3"))
    curve = losses(tmp_path)
    assert curve[-1] < curve[0] - 0.5
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, result.model.eval()(ids).logits, atol=1e-5)


def test_lora_model_saves_merged_model_and_adapter(tmp_path, reversal_dir):
    result = train(
        tiny_recipe(
            tmp_path, reversal_dir, "train.max_steps=2", "finetune.method=lora", "finetune.lora_r=4", "train.lr=1e-2"
        )
    )
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    base = result.model.get_base_model()
    assert (tmp_path / "model" / "adapter" / "adapter_config.json").is_file()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = result.model.eval()(ids).logits
        assert torch.allclose(merged(ids).logits, expected, atol=1e-4)
    assert isinstance(result.model, PeftModel) and base is not None


def test_nan_loss_stops_with_a_clear_message(tmp_path, reversal_dir, monkeypatch):
    import bico.training.train as T

    monkeypatch.setattr(
        T, "batch_loss", lambda model, batch, device, *_: torch.tensor(float("nan"), requires_grad=True)
    )
    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        train(tiny_recipe(tmp_path, reversal_dir, "train.max_steps=2"))


def test_over_long_rows_are_refused(tmp_path, reversal_dir):
    with pytest.raises(TrainingError, match="more than data.max_length=8"):
        train(tiny_recipe(tmp_path, reversal_dir, "data.max_length=8"))


def test_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe key 'train.lrr'"):
        load_recipe(None, ["train.lrr=1"])
    with pytest.raises(RecipeError, match="not key=value"):
        load_recipe(None, ["train.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nme: x\n")
    with pytest.raises(RecipeError, match="unknown recipe key 'model.nme'"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    r = load_recipe(None, ["objective.options.mask_ratio=0.3", "train.lr=2e-5"])
    assert r.objective.options == {"mask_ratio": 0.3} and r.train.lr == 2e-5


def test_shipped_recipes_parse():
    from pathlib import Path

    from bico.tools.ablate import build_cells, load_spec

    recipes = sorted(Path(__file__).parent.parent.glob("recipes/**/*.yaml"))
    assert recipes
    for path in recipes:
        if path.parent.name == "ablations":  # grids over a base recipe, each cell a full recipe
            assert build_cells(load_spec(path))
        else:
            load_recipe(path)


@pytest.mark.parametrize("lora", [False, True])
def test_loss_on_target_positions_equals_the_full_logits_loss(tokenizer, lora):
    """The loss computes the LM head only where a target is; it must equal the loss from full logits."""
    model = make_llama(vocab=len(tokenizer) + 8).train()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", lora_dropout=0.0)
        )
    obj = build_objective("bico", tokenizer)
    rng = random.Random(1)
    fact = {
        "prompt": "Known as Daphne Barrington,",
        "completion": " she is the director of A Journey Through Time.",
        "meta": {"name": "Daphne Barrington", "description": "the director of A Journey Through Time"},
    }
    exs = [example(tokenizer, **fact), example(tokenizer, **{**fact, "prompt": "Maria is"})]
    batch = collate([obj.encode(e, rng, "denoise") for e in exs], tokenizer.pad_token_id, pack=True, max_length=64)
    fast = batch_loss(model, batch, torch.device("cpu"))
    assert batch["bico_mask"].rope == "mirrored"
    logits = model(
        input_ids=batch["input_ids"], bico_mask=batch["bico_mask"], position_ids=batch["position_ids"], use_cache=False
    ).logits
    full = (
        F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE, reduction="none")
        * batch["weights"].flatten()
    ).sum()
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    whole = batch_loss(model, batch, torch.device("cpu"), head_at_targets=False)  # the DeepSpeed path
    torch.testing.assert_close(whole, full, rtol=1e-5, atol=1e-5)
    fast.backward()
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_train_on_cpu_keeps_freed_memory_for_reuse(monkeypatch, tmp_path, reversal_dir):
    """``bico train`` on CPU turns on ``bico.machine.keep_freed_memory`` (tested in test_engine)."""
    import bico.training.train as T

    calls = []
    monkeypatch.setattr(T, "keep_freed_memory", lambda: calls.append(True) or True)
    train(tiny_recipe(tmp_path, reversal_dir, "train.max_steps=1", "train.save_model=false"))
    assert calls == [True]
