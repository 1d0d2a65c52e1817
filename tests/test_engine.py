"""The engine boundary and the model setup: one interface, shared pieces, one order."""

import json
import math
from pathlib import Path

import pytest
import torch

from bico.config import load_recipe
from bico.training.checkpoints import CHECKPOINTS, TRAINER_STATE, latest_checkpoint, read_trainer_state
from bico.training.engine import Engine, TorchEngine, adamw, check_precision

BICO = Path(__file__).resolve().parent.parent / "bico" / "training"


def test_engines_implement_one_interface():
    """(Which engine imports which, and that the plain one loads no DeepSpeed: tests/test_import_graph.py.)"""
    from bico.training.deepspeed_engine import DeepSpeedEngine

    assert issubclass(TorchEngine, Engine) and issubclass(DeepSpeedEngine, Engine)
    with pytest.raises(TypeError):
        Engine()  # abstract: an engine must implement every method the loop calls
    assert (TorchEngine.lockstep, DeepSpeedEngine.lockstep) == (False, True)  # declared, not probed with getattr
    assert "getattr(engine" not in (BICO / "train.py").read_text()


def test_precision_rules_are_one_function():
    check_precision("fp32", "cpu")
    check_precision("bf16", "cpu")  # autocast to bf16 on CPU, fp32 master weights
    with pytest.raises(ValueError, match="train.precision 'fp8': use auto, fp32, bf16 or fp16"):
        check_precision("fp8", "cuda")
    with pytest.raises(ValueError, match="fp16 needs a GPU; use fp32 or bf16 on CPU"):
        check_precision("fp16", "cpu")
    from bico.training.deepspeed_engine import DeepSpeedConfigError, fill_config

    with pytest.raises(DeepSpeedConfigError, match="fp16 needs a GPU; use fp32 or bf16 on CPU"):
        fill_config({}, load_recipe(None, ["train.precision=fp16"]), world_size=1, hidden_size=8, device_type="cpu")


def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_it_natively(monkeypatch):
    import bico.training.engine as E

    monkeypatch.delenv(E.AUTO_PRECISION_ENV, raising=False)
    monkeypatch.setattr(E, "cpu_bf16_flags", lambda: ["amx_bf16", "avx512_bf16"])
    assert E.resolve_precision("auto", "cpu") == (
        "bf16",
        "auto: this CPU multiplies bf16 natively (amx_bf16, avx512_bf16)",
    )
    monkeypatch.setattr(E, "cpu_bf16_flags", lambda: [])
    assert E.resolve_precision("auto", "cpu")[0] == "fp32"
    assert E.resolve_precision("bf16", "cpu") == ("bf16", "train.precision")  # asked for: allowed, even if emulated
    monkeypatch.setenv(E.AUTO_PRECISION_ENV, "bf16")
    assert E.resolve_precision("auto", "cpu") == ("bf16", f"auto, set by {E.AUTO_PRECISION_ENV}")
    assert E.resolve_precision("fp32", "cpu")[0] == "fp32"  # the variable decides auto only
    monkeypatch.setenv(E.AUTO_PRECISION_ENV, "fp8")
    with pytest.raises(ValueError, match="BICO_AUTO_PRECISION='fp8': use fp32, bf16 or fp16"):
        E.resolve_precision("auto", "cpu")
    from bico.training.deepspeed_engine import fill_config

    monkeypatch.setenv(E.AUTO_PRECISION_ENV, "bf16")
    config = fill_config({}, load_recipe(None, []), world_size=1, hidden_size=8, device_type="cpu")
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False


def test_bf16_training_on_cpu_keeps_fp32_masters_and_the_mask(monkeypatch):
    """bf16 autocast on CPU: weights and optimizer state stay fp32, the loss is finite, and the
    interval mask still takes effect (a bidirectional mask changes the first row's logits)."""
    from bico.masks import IntervalMask
    from helpers import make_llama

    model = make_llama("bico")
    engine = TorchEngine(model, load_recipe(None, ["train.precision=bf16", "train.lr=1e-3"]), 4, torch.device("cpu"))
    assert engine.precision == "bf16" and engine.autocast_dtype is torch.bfloat16
    ids = torch.randint(3, 128, (1, 9))
    with engine._autocast():
        causal = model(input_ids=ids, bico_mask=IntervalMask.causal(9)).logits
        both = model(input_ids=ids, bico_mask=IntervalMask.bidirectional(9)).logits
    assert causal.dtype == torch.bfloat16 or causal.dtype == torch.float32
    assert not torch.allclose(causal[0, 0].float(), both[0, 0].float()), "the mask was ignored under autocast"
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    loss = engine.backward_loss(lambda: model(input_ids=ids, labels=ids, bico_mask=IntervalMask.causal(9)).loss, 1)
    engine.step()
    assert math.isfinite(loss) and all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.equal(before, model.model.layers[0].mlp.up_proj.weight)
    assert all(v.dtype == torch.float32 for s in engine.optimizer.state.values() for v in s.values() if v.dim())


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

    recipe = load_recipe(
        None,
        [
            "model.name=tiny-random",
            "model.layers=1",
            "model.hidden_size=32",
            "model.heads=2",
            "model.kv_heads=1",
            "model.intermediate_size=64",
            "objective.name=bico",
            "objective.options.mask_token=added",
            "finetune.method=lora",
            "finetune.lora_r=2",
        ],
    )
    model, tokenizer, objective = setup_model(recipe, reversal_dir, torch.device("cpu"))
    assert objective.name == "bico" and objective.mask_id == len(tokenizer) - 1  # the objective grew the tokenizer
    assert model.get_base_model().get_input_embeddings().weight.shape[0] == len(tokenizer)  # then the embeddings
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and "lora" not in n]
    assert trainable and all("embed_tokens" in n for n in trainable), trainable  # then LoRA, told the new id


def test_compiled_model_trains_like_the_eager_one_and_keeps_the_mask():
    """train.compile: the same losses as eager (fp32, a few steps, two sequence lengths so that
    dynamic shapes are exercised), parameter names unchanged, the interval mask still in effect."""
    from bico.masks import IntervalMask
    from helpers import make_llama

    losses = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        model = make_llama("bico")
        engine = TorchEngine(
            model,
            load_recipe(None, ["train.precision=fp32", "train.lr=1e-3", f"train.compile={str(compiled).lower()}"]),
            4,
            torch.device("cpu"),
        )
        losses[compiled] = []
        for n in (9, 13):
            ids = torch.arange(n).remainder(100).add(3).unsqueeze(0)
            losses[compiled].append(
                engine.backward_loss(
                    lambda: model(input_ids=ids, labels=ids, bico_mask=IntervalMask.bidirectional(n)).loss, 1
                )
            )
            engine.step()
        names = [n for n, _ in model.named_parameters()]
        assert not any("_orig_mod" in n for n in names) and "_orig_mod" not in str(list(model.state_dict())[:1])
        with torch.no_grad():
            ids = torch.randint(3, 128, (1, 9))
            causal = model(input_ids=ids, bico_mask=IntervalMask.causal(9)).logits
            both = model(input_ids=ids, bico_mask=IntervalMask.bidirectional(9)).logits
        assert not torch.allclose(causal[0, 0], both[0, 0]), "the mask was ignored"
    torch._dynamo.reset()
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)


def test_raising_the_step_budget_on_resume_goes_on_with_the_new_schedule(tmp_path):
    """A linear decay over 2 steps ends at lr 0; resumed with 4 steps, step 3 runs at half the lr
    (the new schedule at step 2), not at the checkpoint's 0. With the budget unchanged: the same lr."""
    recipe = load_recipe(None, ["train.lr=0.1", "train.schedule=linear"])
    model = torch.nn.Linear(3, 2)
    engine = TorchEngine(model, recipe, total_steps=2, device=torch.device("cpu"))
    for _ in (1, 2):
        engine.backward_loss(lambda: engine.module(torch.ones(4, 3)).sum(), num_targets=4)
        engine.step()
    engine.save_checkpoint(tmp_path, 2)
    assert engine.optimizer.param_groups[0]["lr"] == 0.0
    for total, lr in ((4, 0.05), (2, 0.0)):
        resumed = TorchEngine(torch.nn.Linear(3, 2), recipe, total_steps=total, device=torch.device("cpu"))
        assert resumed.load_checkpoint(latest_checkpoint(tmp_path)) == 2
        assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(lr) and resumed.lr() == pytest.approx(lr)


def test_cpu_training_keeps_freed_memory_for_reuse():
    """With glibc, a 128 MB tensor freed and allocated again faults its pages in anew every time,
    unless ``keep_freed_memory`` is on (what ``bico train`` sets on CPU). Counted in a child process,
    so that this process's allocator keeps its defaults."""
    import platform
    import subprocess
    import sys

    child = (
        "import resource, sys, torch\n"
        "from bico.machine import keep_freed_memory\n"
        "assert keep_freed_memory(sys.argv[1] == 'keep')\n"
        "for _ in range(15):\n"  # glibc's heap settles after a few (posix_memalign splits blocks)
        "    torch.empty(2**25).fill_(1.0)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(5):\n"
        "    torch.empty(2**25).fill_(1.0)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("keep_freed_memory acts on glibc's allocator only")
    faults = {
        mode: int(
            subprocess.run([sys.executable, "-c", child, mode], capture_output=True, text=True, check=True).stdout
        )
        for mode in ("keep", "default")
    }
    pages = 5 * 2**27 // 4096  # five 128 MB tensors in 4 KiB pages
    assert faults["default"] > pages // 2, faults  # glibc maps and unmaps each one
    assert faults["keep"] < pages // 10, faults  # reused: no new pages
