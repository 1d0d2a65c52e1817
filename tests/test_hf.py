"""bico inside Hugging Face Trainer: BicoDataCollator and BicoTrainer compute what `bico train` computes.

The equivalence tests build the model exactly as ``bico train`` does (same seeds, same setup order),
feed Trainer the training rows in ``StepPlan``'s order with a sequential sampler, and compare
Trainer's per-step losses with ``bico train``'s ``metrics.jsonl`` (6 decimals kept there).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bico.config import load_recipe
from bico.training.examples import load_training_rows
from bico.training.step import StepPlan, make_batch
from bico.training.train import train
from helpers import TINY_MODEL

DS_SETUP = ["objective.name=bico", "finetune.method=lora", "finetune.lora_r=4", "finetune.lora_dropout=0.1"]
LOSS_TOL = 1e-5  # |Trainer loss - bico train loss| per step
TINY = [
    "model.name=tiny-random",
    *TINY_MODEL,
    "data.train_files=[p2d_prompts_train.jsonl]",
    "data.max_length=96",
    "train.batch_size=2",
    "train.grad_accum=2",
    "train.lr=1e-3",
    "train.log_every=1",
    "train.progress=false",
    "train.max_grad_norm=0.1",
    "eval.enabled=false",
    "train.save_model=false",
]


def recipe(tmp_path, reversal_dir, *extra):
    return load_recipe(None, TINY + [f"data.dir={reversal_dir}", f"train.output_dir={tmp_path / 'bico'}"] + list(extra))


def bico_train_metrics(r) -> list[dict]:
    train(r)
    lines = (Path(r.train.output_dir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in lines.splitlines()]


def bico_setup(r):
    """Model, tokenizer, objective and rows as `bico train` builds them (same RNG use, same order)."""
    from bico.data import resolve_data_dir
    from bico.models import apply_finetuning, fit_embeddings, load_model
    from bico.objectives import build_objective

    torch.manual_seed(r.train.seed)
    model, tokenizer = load_model(r.model, data_dir=resolve_data_dir(r.data.dir))
    objective = build_objective(r.objective.name, tokenizer, r.objective.options)
    model = apply_finetuning(model, r.finetune, fit_embeddings(model, tokenizer))
    rows, _ = load_training_rows(r)
    return model, tokenizer, objective, rows


def hf_trainer(r, tmp_path, steps, *, bico_optimizer=False, world=1, sft=False, **args):
    """A BicoTrainer set up like the recipe; its dataset is the rows in StepPlan's order.
    ``sft``: a BicoSFTTrainer (trl.SFTTrainer) with an SFTConfig instead."""
    from transformers import TrainingArguments

    from bico.hf import BicoDataCollator, BicoTrainer

    if sft:
        from trl import SFTConfig as TrainingArguments  # the same arguments, and TRL's

        from bico.hf import BicoSFTTrainer as BicoTrainer

    cfg = r.train
    model, tokenizer, objective, rows = bico_setup(r)
    plan = StepPlan(len(rows), cfg.batch_size, cfg.grad_accum * world, cfg.seed)  # the global batch
    ordered = [rows[i] for s in range(steps) for batch in plan.micro_batches(s) for i in batch]
    training_args = TrainingArguments(
        **{
            "output_dir": str(tmp_path / "hf"),
            "per_device_train_batch_size": cfg.batch_size,
            "gradient_accumulation_steps": cfg.grad_accum,
            "max_steps": steps,
            "learning_rate": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "adam_beta1": cfg.betas[0],
            "adam_beta2": cfg.betas[1],
            "adam_epsilon": 1e-8,
            "max_grad_norm": cfg.max_grad_norm,
            "lr_scheduler_type": cfg.schedule,
            "warmup_steps": cfg.warmup_steps,
            "train_sampling_strategy": "sequential",
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "use_cpu": True,
            "seed": cfg.seed,
            "disable_tqdm": True,
            **args,
        }
    )
    optimizers = (None, None)
    if bico_optimizer:  # bico's AdamW (weight decay on every parameter) and warm-up schedule (bico.training.engine)
        from bico.training.engine import lr_lambda

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
        optimizers = (
            optimizer,
            torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.schedule, cfg.warmup_steps, steps)),
        )
    collator = BicoDataCollator(objective, tokenizer, max_length=r.data.max_length, seed=cfg.seed)
    return BicoTrainer(
        model=model, args=training_args, train_dataset=ordered, data_collator=collator, optimizers=optimizers
    )


def step_losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_trainer_matches_bico_train_with_the_ntp_denoise_coin(tmp_path, reversal_dir):
    # Warm-up, weight decay and clipping all active: Trainer gets bico's optimizer and schedule,
    # because HF's AdamW skips decay on norms and its warm-up starts from lr 0.
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
    assert {"ntp", "denoise"} <= set(",".join(m["mode"] for m in reference).split(","))  # both sides of the coin
    trainer = hf_trainer(r, tmp_path, 4, bico_optimizer=True)
    trainer.train()
    ours = step_losses(trainer)
    worst = max(abs(a - m["loss"]) for a, m in zip(ours, reference))
    print(f"max |loss(BicoTrainer) - loss(bico train)| = {worst:.2e} over {len(ours)} steps")
    assert len(ours) == 4 and worst <= LOSS_TOL, (ours, [m["loss"] for m in reference])


def test_trainer_matches_bico_train_with_lora_dropout_annealing_and_workers(tmp_path, reversal_dir):
    # LoRA with dropout (torch reseeded per micro-batch), annealing driven by the step Trainer is at,
    # DataLoader workers (rows only cross them), and HF's own AdamW and schedule, which equal bico's
    # without warm-up for LoRA weights (all decayed).
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
    trainer = hf_trainer(r, tmp_path, 3, dataloader_num_workers=1)
    assert type(trainer.model).__name__ == "PeftModelForCausalLM"
    trainer.train()
    ours = step_losses(trainer)
    worst = max(abs(a - m["loss"]) for a, m in zip(ours, reference))
    print(f"LoRA + anneal: max |loss(BicoTrainer) - loss(bico train)| = {worst:.2e}")
    assert len(ours) == 3 and worst <= LOSS_TOL, (ours, [m["loss"] for m in reference])
    assert trainer.bico_collator.objective.ratio == pytest.approx(3 / 6)  # set_progress(2, 3) before the last step
    rows, _ = load_training_rows(r)
    first = trainer.evaluate(eval_dataset=rows[:4])["eval_loss"]
    assert math.isfinite(first) and trainer.evaluate(eval_dataset=rows[:4])["eval_loss"] == first


def test_a_resumed_trainer_continues_exactly(tmp_path, reversal_dir):
    # Trainer skips the rows of the steps already done; the batches are built at state.global_step,
    # so the coin, the masks and the dropout of the remaining steps are those of the whole run.
    r = recipe(
        tmp_path,
        reversal_dir,
        "objective.name=bico",
        "finetune.method=lora",
        "finetune.lora_r=4",
        "finetune.lora_dropout=0.1",
    )
    whole = hf_trainer(r, tmp_path, 4, save_strategy="steps", save_steps=2)
    whole.train()
    resumed = hf_trainer(r, tmp_path / "again", 4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "hf" / "checkpoint-2"))
    assert [h["step"] for h in resumed.state.log_history if "loss" in h] == [1, 2, 3, 4]
    assert step_losses(resumed)[2:] == pytest.approx(step_losses(whole)[2:], abs=1e-6)


def test_collator_batches_are_bico_trains_and_feed_the_model_directly(tmp_path, reversal_dir):
    from types import SimpleNamespace

    import bico
    from bico.collate import model_inputs
    from bico.hf import BicoDataCollator
    from bico.training.examples import tokenize_examples

    r = recipe(tmp_path, reversal_dir, "objective.name=bico")
    model, tokenizer, objective, rows = bico_setup(r)
    rows = rows[:4]
    collator = BicoDataCollator(objective, tokenizer, max_length=96, seed=3, grad_accum=2)
    batches = [collator(rows[:2]), collator(rows[2:]), collator(rows[:2])]  # (step, micro) = (0,0), (0,1), (1,0)
    assert [(b["step"], b["micro"]) for b in batches] == [(0, 0), (0, 1), (1, 0)]
    examples = tokenize_examples(rows, tokenizer, 96)
    data = SimpleNamespace(pack=False, max_length=96)
    for batch, (indices, step, micro) in zip(batches, [([0, 1], 0, 0), ([2, 3], 0, 1), ([0, 1], 1, 0)]):
        expected = make_batch(objective, examples, indices, 3, step, micro, tokenizer.pad_token_id, data)
        for key in ("input_ids", "position_ids", "targets", "weights"):
            assert torch.equal(batch[key], expected[key]), key
        assert batch["bico_mask"] == expected["bico_mask"] and batch["num_targets"] == expected["num_targets"]
    assert torch.equal(collator.batch_at(examples[:2], 1, 0)["input_ids"], batches[2]["input_ids"])  # Examples too

    # model(**batch): the loss fields ride along unused; the mask is applied (a denoising batch differs from causal)
    model = bico.apply(model).eval()
    denoise = [b for b in batches if b["bico_mask"].rope == "mirrored"]
    assert denoise, "seed 3 should draw at least one denoising batch"
    with torch.no_grad():
        direct = model(**denoise[0]).logits
        assert torch.equal(direct, model(**model_inputs(denoise[0])).logits)
        assert not torch.allclose(direct, model(input_ids=denoise[0]["input_ids"]).logits)


def test_collator_drives_annealing_when_used_on_its_own(tokenizer, reversal_dir):
    from bico.hf import BicoDataCollator
    from bico.objectives import build_objective

    objective = build_objective("anneal", tokenizer, {"inner": "ntp", "steps": 10})
    collator = BicoDataCollator(objective, tokenizer, grad_accum=2, total_steps=5)
    row = {"prompt": "Who is Ada?", "completion": " A poet."}
    for _ in range(3):  # micro-batches (0,0), (0,1), (1,0): set_progress(1, 5) before step 1
        collator([row])
    assert objective.ratio == pytest.approx(2 / 10)


def test_bad_inputs_are_one_line_errors(tmp_path, reversal_dir, tokenizer):
    from transformers import TrainingArguments

    from bico.attention import UnsupportedModelError
    from bico.hf import BicoDataCollator, BicoTrainer

    collator = BicoDataCollator("ntp", tokenizer, max_length=8)
    for rows, message in [
        ([{"text": "x"}], r"row 0 needs 'prompt' and 'completion' fields, got \['text'\]"),
        ([], "cannot collate an empty batch"),
        ([{"prompt": "a " * 20, "completion": "b"}], "more than data.max_length=8"),
    ]:
        with pytest.raises(Exception, match=message) as err:
            collator(rows)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="pack=True needs max_length"):
        BicoDataCollator("ntp", tokenizer, pack=True)
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        BicoDataCollator("nope", tokenizer)
    # DataLoader workers would each count their own calls
    loader = torch.utils.data.DataLoader(
        [{"prompt": "a", "completion": "b"}] * 2,
        batch_size=1,
        num_workers=1,
        collate_fn=BicoDataCollator("ntp", tokenizer),
    )
    with pytest.raises(RuntimeError, match="cannot count steps inside DataLoader workers: set num_workers=0"):
        next(iter(loader))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    from helpers import make_llama

    with pytest.raises(UnsupportedModelError, match="runs 'sdpa' attention, which ignores bico_mask"):
        BicoTrainer(model=make_llama("sdpa"), args=args, data_collator=collator)
    with pytest.raises(TypeError, match="needs data_collator=BicoDataCollator"):
        BicoTrainer(model=make_llama("bico"), args=args)


def test_the_example_runs_in_its_tiny_mode(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "hf_trainer.py"
    spec = importlib.util.spec_from_file_location("hf_trainer_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--steps", "2", "--output-dir", str(tmp_path)])
    assert len(result["losses"]) == 2 and all(math.isfinite(x) for x in result["losses"])


@pytest.mark.distributed
def test_deepspeed_zero3_on_two_cpu_ranks_matches_one_bico_train_process(tmp_path, reversal_dir):
    # TrainingArguments(deepspeed=<bico's zero3.json>, "auto" values filled by transformers), LoRA with
    # dropout, 2 gloo ranks vs one `bico train` process with the same global batch (grad_accum x 2).
    # ZeRO-2 matches the same way (checked by hand); one launch keeps the test short.
    pytest.importorskip("deepspeed")
    from helpers import launch

    out = tmp_path / "ranks" / "result.json"
    out.parent.mkdir()
    launch([__file__, str(reversal_dir), str(out), "zero3", "3"], tmp_path / "logs")
    result = json.loads(out.read_text())
    assert result["engine"] == "DeepSpeedEngine"
    reference = bico_train_metrics(recipe(tmp_path, reversal_dir, *DS_SETUP, "train.max_steps=3", "train.grad_accum=4"))
    worst = max(abs(a - m["loss"]) for a, m in zip(result["losses"], reference))
    print(f"ZeRO-3, 2 ranks: max |loss(BicoTrainer) - loss(bico train, 1 process)| = {worst:.2e}")
    assert len(result["losses"]) == 3 and worst <= LOSS_TOL, (result["losses"], [m["loss"] for m in reference])


def worker(argv: list[str]) -> None:
    """One rank of the DeepSpeed test: BicoTrainer under ``TrainingArguments(deepspeed=...)``; rank 0
    writes Trainer's per-step losses to ``OUT``. Args: DATA_DIR OUT STAGE STEPS."""
    from bico.training import distributed
    from bico.training.deepspeed_engine import resolve_config

    data_dir, out, stage, steps = argv[0], Path(argv[1]), argv[2], int(argv[3])
    distributed.setup(torch.device("cpu"), use_deepspeed=True)  # gloo, without DeepSpeed's shm build
    r = recipe(out.parent, data_dir, *DS_SETUP)
    trainer = hf_trainer(r, out.parent, steps, world=distributed.world_size(), deepspeed=resolve_config(stage)[0])
    trainer.train()
    if distributed.rank() == 0:
        out.write_text(json.dumps({"losses": step_losses(trainer), "engine": type(trainer.model_wrapped).__name__}))
    distributed.teardown()


if __name__ == "__main__":
    import sys

    worker(sys.argv[1:])
