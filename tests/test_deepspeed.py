"""DeepSpeed on CPU ranks: the 2-rank path matches one process, resumes exactly, exports.

The distributed tests start two ranks as separate processes, exactly as ``torchrun`` would
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``),
with ``DS_ACCELERATOR=cpu``: DeepSpeed runs over gloo on the loopback interface. The single-
process reference is the plain PyTorch engine with the same global batch (``grad_accum`` x 2).

Measured on the tiny-random model (6 steps, lr 1e-3, clipping active): the 2-rank loss curve
equals the single-process one to the 6 decimals that metrics.jsonl keeps, for ZeRO-2 and ZeRO-3,
full finetuning and LoRA with dropout. The tests allow LOSS_TOL.

Run as a script, this file is the rank worker for the tests that need ``stop_after`` or the
engine itself (see ``worker``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY_MODEL, launch

LOSS_TOL = 1e-4  # |2-rank loss - 1-process loss| per step; measured: <= 1e-6 (metrics keep 6 decimals)
LOGIT_TOL = 1e-4  # exported model (plain transformers) vs the engine's forward
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
    "train.max_steps=6",
    "train.save_every=3",
    "train.max_grad_norm=0.1",
]
SETUPS = {
    # stage config, finetuning, objective: full finetuning with NTP under ZeRO-2, LoRA with dropout and
    # BICO (mirrored RoPE, denoising steps) under ZeRO-3.
    "zero2": ["train.deepspeed=zero2", "finetune.method=full", "objective.name=ntp"],
    "zero3": [
        "train.deepspeed=zero3",
        "finetune.method=lora",
        "finetune.lora_r=4",
        "finetune.lora_dropout=0.1",
        "objective.name=bico",
    ],
}
EVAL = [
    "eval.enabled=true",
    "eval.splits=[p2d_prompts_test,p2d_reverse_prompts_test]",
    "eval.limit=3",
    "eval.max_new_tokens=4",
    "eval.batch_size=8",
]
PROBE_IDS = [[1, 5, 6, 7, 8, 9, 10, 11]]


def losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


# -- configs (no processes, no DeepSpeed needed) -----------------------------------------------
def _recipe(*overrides):
    from bico.config import load_recipe

    return load_recipe(None, list(overrides))


def test_auto_values_are_filled_from_the_recipe():
    from bico.training.deepspeed_engine import fill_config, resolve_config

    recipe = _recipe(
        "train.batch_size=4",
        "train.grad_accum=3",
        "train.lr=2e-4",
        "train.max_grad_norm=0.5",
        "train.precision=bf16",
        "train.weight_decay=0.1",
    )
    for name in ("zero2", "zero3", "zero3_offload"):
        raw, where = resolve_config(name)
        assert where.endswith(f"recipes/deepspeed/{name}.json")
        ds = fill_config(raw, recipe, world_size=8, hidden_size=4096)
        assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
        assert ds["train_batch_size"] == 4 * 3 * 8
        assert ds["gradient_clipping"] == 0.5
        assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
        assert ds["zero_optimization"]["reduce_bucket_size"] == 4096 * 4096
        if ds["zero_optimization"]["stage"] == 3:
            assert ds["zero_optimization"]["stage3_prefetch_bucket_size"] == int(0.9 * 4096 * 4096)
            assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 40960
        if "optimizer" in ds:
            assert ds["optimizer"]["params"] == {"lr": 2e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1}
        assert "auto" not in json.dumps(ds)
    # the same config by path, relative to the source checkout
    assert resolve_config("recipes/deepspeed/zero3.json")[0] == resolve_config("zero3")[0]


def test_config_errors_say_what_to_change(tmp_path):
    from bico.training.deepspeed_engine import DeepSpeedConfigError, fill_config, resolve_config

    recipe = _recipe("train.batch_size=8")
    with pytest.raises(
        DeepSpeedConfigError, match="'train_micro_batch_size_per_gpu' is 4 but the recipe says train.batch_size=8"
    ):
        fill_config({"train_micro_batch_size_per_gpu": 4}, recipe, world_size=1, hidden_size=64)
    with pytest.raises(DeepSpeedConfigError, match='remove the "scheduler" section'):
        fill_config({"scheduler": {"type": "WarmupLR"}}, recipe, world_size=1, hidden_size=64)
    with pytest.raises(DeepSpeedConfigError, match='cannot fill "auto" for zero_optimization.sub_group_size'):
        fill_config({"zero_optimization": {"stage": 3, "sub_group_size": "auto"}}, recipe, world_size=1, hidden_size=64)
    with pytest.raises(DeepSpeedConfigError, match="fp16 needs a GPU"):
        fill_config({}, _recipe("train.precision=fp16"), world_size=1, hidden_size=64, device_type="cpu")
    with pytest.raises(DeepSpeedConfigError, match="no such file .*zero2"):
        resolve_config(tmp_path / "missing.json")
    # values that agree with the recipe may be written out
    ds = fill_config({"gradient_clipping": 1.0, "bf16": {"enabled": False}}, recipe, world_size=2, hidden_size=None)
    assert ds["train_batch_size"] == 16 and ds["zero_allow_untested_optimizer"] is True


def test_several_ranks_without_deepspeed_is_refused(tmp_path, monkeypatch):
    from bico.training.train import TrainingError, train

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainingError, match="train.deepspeed is not set"):
        train(_recipe(f"train.output_dir={tmp_path}"))


def test_plan_llama_2_7b_on_8_gpus(capsys):
    pytest.importorskip("deepspeed")
    from bico.cli import main

    assert main(["plan", "llama-2-7b", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "llama-2-7b: 6.74B parameters" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ZeRO")}
    assert set(rows) == {
        "ZeRO-2",
        "ZeRO-2 + optimizer offload",
        "ZeRO-3",
        "ZeRO-3 + optimizer offload",
        "ZeRO-3 + optimizer and parameter offload",
    }
    gib = {k: float(v.split("|")[3].split()[0]) for k, v in rows.items()}
    # DeepSpeed's formulas: ZeRO-2 = 2P + 18P/8 bytes, ZeRO-3 = 4 x largest layer + 18P/8 bytes
    assert gib["ZeRO-2"] == pytest.approx((2 + 18 / 8) * 6.738e9 / 2**30, rel=0.01)
    assert gib["ZeRO-3"] < gib["ZeRO-2"] and gib["ZeRO-3 + optimizer and parameter offload"] < 1


# -- 2 CPU ranks --------------------------------------------------------------------------------
def _common(stage: str, data_dir) -> list[str]:
    return TINY + SETUPS[stage] + [f"data.dir={data_dir}"]


def _reference(tmp_path: Path, stage: str, data_dir) -> Path:
    """One process, plain PyTorch engine, the same global batch (grad_accum x 2)."""
    from bico.training.train import train

    out = tmp_path / "single"
    overrides = [o for o in _common(stage, data_dir) if not o.startswith("train.deepspeed")]
    train(
        _recipe(
            *overrides, "train.grad_accum=4", "eval.enabled=false", "train.save_model=false", f"train.output_dir={out}"
        )
    )
    return out


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory, reversal_dir):
    """Per stage, one uninterrupted 2-rank run through the CLI (``python -m bico train``)."""
    pytest.importorskip("deepspeed")
    runs = {}

    def get(stage: str) -> tuple[Path, float]:
        if stage not in runs:
            out = tmp_path_factory.mktemp(f"{stage}-2ranks")
            recipe = out / "recipe.yaml"
            recipe.write_text("description: 2-rank test run\n")
            began = time.time()
            launch(
                [
                    "-m",
                    "bico",
                    "train",
                    str(recipe),
                    *_common(stage, reversal_dir),
                    *EVAL,
                    f"train.output_dir={out / 'run'}",
                ],
                out / "logs",
            )
            runs[stage] = (out / "run", time.time() - began)
        return runs[stage]

    return get


@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_ranks_match_one_process_and_rank0_evaluates(two_rank_runs, tmp_path, reversal_dir, stage):
    run, seconds = two_rank_runs(stage)
    reference = _reference(tmp_path, stage, reversal_dir)
    two, one = losses(run), losses(reference)
    assert len(two) == 6, "only rank 0 writes metrics, one line per step"
    worst = max(abs(a - b) for a, b in zip(two, one))
    print(f"{stage}: 2-rank launch {seconds:.1f}s, max |loss(2 ranks) - loss(1 process)| = {worst:.2e}")
    assert worst <= LOSS_TOL, (two, one)
    # rank 0 evaluated after training; single-process evaluation of the exported model agrees
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bico.evaluation.reversal import evaluate

    reported = json.loads((run / "eval.json").read_text())["splits"]
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    again = evaluate(
        model,
        tokenizer,
        reversal_dir,
        ["p2d_prompts_test", "p2d_reverse_prompts_test"],
        limit=3,
        max_new_tokens=4,
        batch_size=8,
        progress=False,
    )["splits"]
    for split, metrics in reported.items():
        for key in ("n", "exact_match", "substring_match", "logprob_win_rate"):
            assert again[split][key] == metrics[key], (split, key)
        # LoRA: rank 0 evaluates the unmerged adapter model, the export is merged (float rounding)
        assert again[split]["mean_logprob"] == pytest.approx(metrics["mean_logprob"], abs=1e-3)
    assert [e["generated"] for e in again["p2d_prompts_test"]["examples"]] == [
        e["generated"] for e in reported["p2d_prompts_test"]["examples"]
    ]


@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_ranks_resume_exactly_and_export(two_rank_runs, tmp_path, reversal_dir, stage):
    whole, _ = two_rank_runs(stage)
    out = tmp_path / "run"
    common = [*_common(stage, reversal_dir), f"train.output_dir={out}"]
    began = time.time()
    launch([__file__, "--stop-after", "4", "--", *common], tmp_path / "logs-a")  # both ranks die after step 4
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-0000003"]
    launch([__file__, "--probe-logits", "--", *common, "train.resume=true"], tmp_path / "logs-b")
    print(f"{stage}: interrupted + resumed 2-rank launches {time.time() - began:.1f}s")
    assert losses(out) == losses(whole)  # bit-identical curve, 6 lines, no duplicates
    # the exported folder loads with plain transformers and computes what the engine computed
    from transformers import AutoModelForCausalLM

    engine_logits = torch.load(out / "engine_logits.pt")
    exported = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    with torch.no_grad():
        logits = exported(torch.tensor(PROBE_IDS)).logits
    assert (logits - engine_logits).abs().max().item() <= LOGIT_TOL


def worker(argv: list[str]) -> None:
    """One rank: ``train(recipe, stop_after=...)``; ``--probe-logits`` saves the engine's logits."""
    import argparse

    from bico.config import load_recipe
    from bico.training.train import train

    parser = argparse.ArgumentParser()
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--probe-logits", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    recipe = load_recipe(None, args.overrides + ["eval.enabled=false"])
    result = train(recipe, stop_after=args.stop_after)
    if args.stop_after is not None:
        os._exit(0)  # die without any clean-up, like a killed job
    if args.probe_logits:
        engine = result.engine
        engine.module.eval()
        with torch.no_grad():  # every rank runs the forward: ZeRO-3 gathers the shards
            logits = engine.module(input_ids=torch.tensor(PROBE_IDS)).logits
        if engine.is_main_process:
            torch.save(logits, Path(recipe.train.output_dir) / "engine_logits.pt")


if __name__ == "__main__":
    worker(sys.argv[1:])
