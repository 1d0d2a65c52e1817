"""The engine boundary and the model setup: one interface, shared pieces, no import cycle, one order."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bico.config import load_recipe
from bico.engine import (CHECKPOINTS, TRAINER_STATE, Engine, TorchEngine, adamw, check_precision, latest_checkpoint,
                         read_trainer_state)

BICO = Path(__file__).resolve().parent.parent / "bico"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_engines_implement_one_interface_without_an_import_cycle():
    from bico.deepspeed_engine import DeepSpeedEngine

    assert issubclass(TorchEngine, Engine) and issubclass(DeepSpeedEngine, Engine)
    with pytest.raises(TypeError):
        Engine()  # abstract: an engine must implement every method the loop calls
    assert (TorchEngine.lockstep, DeepSpeedEngine.lockstep) == (False, True)  # declared, not probed with getattr
    assert "bico.engine" in _imports(BICO / "deepspeed_engine.py")
    assert not {"bico.deepspeed_engine", "bico.train", "deepspeed"} & _imports(BICO / "engine.py")
    assert "getattr(engine" not in (BICO / "train.py").read_text()
    done = subprocess.run([sys.executable, "-c", "import sys, bico.engine; "
                           "print(sorted(m for m in ('bico.deepspeed_engine', 'deepspeed') if m in sys.modules))"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_precision_rules_are_one_function():
    check_precision("fp32", "cpu")
    with pytest.raises(ValueError, match="train.precision 'fp8': use fp32, bf16 or fp16"):
        check_precision("fp8", "cuda")
    with pytest.raises(ValueError, match="bf16 needs a GPU; use fp32 on CPU"):
        check_precision("bf16", "cpu")  # the plain engine
    check_precision("bf16", "cpu", on_cpu=("fp32", "bf16"))  # DeepSpeed's CPU ranks run bf16
    from bico.deepspeed_engine import DeepSpeedConfigError, fill_config

    with pytest.raises(DeepSpeedConfigError, match="fp16 needs a GPU; use fp32 or bf16 on CPU"):
        fill_config({}, load_recipe(None, ["train.precision=fp16"]), world_size=1, hidden_size=8, device_type="cpu")


def test_torch_engine_checkpoints_rotate_and_restore(tmp_path):
    recipe = load_recipe(None, ["train.lr=0.1", "train.schedule=constant"])
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    engine = TorchEngine(model, recipe, total_steps=10, device=torch.device("cpu"))
    assert isinstance(engine.optimizer, torch.optim.AdamW) and engine.optimizer.defaults["eps"] == 1e-8
    x = torch.ones(4, 3)
    for step in range(1, 4):
        engine.backward_loss(lambda: engine.module(x).sum(), num_targets=4)
        engine.step()
        engine.save_checkpoint(tmp_path, step, keep=2, trainer_state={"step": step})
    kept = sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir())
    assert kept == ["step-0000002", "step-0000003"]  # rotation keeps the newest two, no temporary folder
    newest = latest_checkpoint(tmp_path)
    assert read_trainer_state(newest) == {"step": 3}
    weights = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    assert engine.load_checkpoint(newest) == 3 and torch.equal(model.weight, weights)
    assert json.loads((newest / TRAINER_STATE).read_text()) == {"step": 3}


def test_adamw_is_shared():
    recipe = load_recipe(None, ["train.lr=2e-4", "train.weight_decay=0.1", "train.betas=[0.8,0.9]"])
    opt = adamw([torch.nn.Parameter(torch.zeros(2))], recipe.train, torch.device("cpu"))
    assert (opt.defaults["lr"], opt.defaults["weight_decay"], opt.defaults["betas"]) == (2e-4, 0.1, (0.8, 0.9))


def test_setup_model_grows_the_vocabulary_before_lora(reversal_dir):
    """BICO with an added mask token: the embeddings grow to the tokenizer and LoRA trains the new row."""
    from bico.models import setup_model

    recipe = load_recipe(None, ["model.name=tiny-random", "model.layers=1", "model.hidden_size=32", "model.heads=2",
                                "model.kv_heads=1", "model.intermediate_size=64", "objective.name=bico",
                                "objective.options.mask_token=added", "finetune.method=lora", "finetune.lora_r=2"])
    model, tokenizer, objective = setup_model(recipe, reversal_dir, torch.device("cpu"))
    assert objective.name == "bico" and objective.mask_id == len(tokenizer) - 1  # the objective grew the tokenizer
    assert model.get_base_model().get_input_embeddings().weight.shape[0] == len(tokenizer)  # then the embeddings
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and "lora" not in n]
    assert trainable and all("embed_tokens" in n for n in trainable), trainable  # then LoRA, told the new id
