"""bico inside TRL: BicoSFTTrainer (a trl.SFTTrainer) computes what `bico train` computes.

Set up as tests/test_hf.py sets up BicoTrainer (same model, seeds and rows in StepPlan's order),
with an ``SFTConfig``; its per-step losses are compared with ``bico train``'s ``metrics.jsonl``.
"""

from __future__ import annotations

import math
import sys

import pytest

pytest.importorskip("trl", reason="TRL is in the test extra: pip install -e '.[test]'")

from test_hf import LOSS_TOL, bico_setup, bico_train_metrics, hf_trainer, recipe, step_losses
from trl import SFTTrainer

from bico.hf import BicoTrainer
from bico.training.examples import load_training_rows


def test_sft_trainer_matches_bico_train_with_the_ntp_denoise_coin(tmp_path, reversal_dir):
    r = recipe(
        tmp_path,
        reversal_dir,
        "objective.name=bico",
        "finetune.method=full",
        "train.max_steps=4",
        "train.warmup_steps=2",
        "train.weight_decay=0.1",
    )
    reference = bico_train_metrics(r)
    assert {"ntp", "denoise"} <= set(",".join(m["mode"] for m in reference).split(","))
    trainer = hf_trainer(r, tmp_path, 4, bico_optimizer=True, sft=True)
    assert isinstance(trainer, SFTTrainer) and isinstance(trainer, BicoTrainer)
    trainer.train()
    ours = step_losses(trainer)
    worst = max(abs(a - m["loss"]) for a, m in zip(ours, reference))
    print(f"max |loss(BicoSFTTrainer) - loss(bico train)| = {worst:.2e} over {len(ours)} steps")
    assert len(ours) == 4 and worst <= LOSS_TOL, (ours, [m["loss"] for m in reference])


def test_sft_trainer_matches_bico_train_with_lora_dropout_and_annealing(tmp_path, reversal_dir):
    r = recipe(
        tmp_path,
        reversal_dir,
        "objective.name=anneal",
        "objective.options.inner=bico",
        "objective.options.steps=6",
        "finetune.method=lora",
        "finetune.lora_r=4",
        "finetune.lora_dropout=0.1",
        "train.max_steps=3",
        "train.weight_decay=0.01",
    )
    reference = bico_train_metrics(r)
    trainer = hf_trainer(r, tmp_path, 3, sft=True)
    assert type(trainer.model).__name__ == "PeftModelForCausalLM"
    trainer.train()
    ours = step_losses(trainer)
    worst = max(abs(a - m["loss"]) for a, m in zip(ours, reference))
    print(f"LoRA + anneal under SFTTrainer: max |loss - bico train loss| = {worst:.2e}")
    assert len(ours) == 3 and worst <= LOSS_TOL, (ours, [m["loss"] for m in reference])
    rows, _ = load_training_rows(r)
    first = trainer.evaluate(eval_dataset=[rows[i] for i in range(4)])["eval_loss"]
    assert math.isfinite(first) and trainer.evaluate(eval_dataset=[rows[i] for i in range(4)])["eval_loss"] == first


def test_sft_options_that_bico_replaces_are_refused_in_one_line(tmp_path, reversal_dir):
    from trl import SFTConfig

    from bico.hf import BicoDataCollator, BicoSFTTrainer

    r = recipe(tmp_path, reversal_dir, "objective.name=ntp")
    model, tokenizer, objective, rows = bico_setup(r)
    collator = BicoDataCollator(objective, tokenizer, max_length=96)
    data = [rows[i] for i in range(4)]
    for option, message in [
        ({"packing": True}, r"SFTConfig.packing=True is not used \(use BicoDataCollator\(pack"),
        ({"assistant_only_loss": True}, "SFTConfig.assistant_only_loss=True is not used"),
        ({"loss_type": "dft"}, "SFTConfig.loss_type='dft' is not used"),
    ]:
        args = SFTConfig(output_dir=str(tmp_path / "sft"), use_cpu=True, report_to="none", **option)
        with pytest.raises(ValueError, match=message) as err:
            BicoSFTTrainer(model=model, args=args, train_dataset=data, data_collator=collator)
        assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="needs data_collator=BicoDataCollator"):
        BicoSFTTrainer(
            model=model, args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"), train_dataset=data
        )


def test_without_trl_the_error_names_the_extra(monkeypatch):
    import bico.hf

    monkeypatch.delitem(bico.hf.__dict__, "BicoSFTTrainer", raising=False)
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl raises ImportError
    with pytest.raises(ImportError, match=r"^bico.hf.BicoSFTTrainer needs TRL: pip install 'bico\[trl\]'$"):
        _ = bico.hf.BicoSFTTrainer
