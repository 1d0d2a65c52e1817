"""Seeing a run: TensorBoard event files (every logged step, once, across a resume), W&B offline,
loss.png, and the errors of ``train.report_to``."""

import json
import shutil
import sys
from collections import Counter

import pytest
from test_train import losses, tiny_recipe

from bico.config import RecipeError, load_recipe
from bico.training.report import eval_scalars, loss_series, step_scalars
from bico.training.train import train

RESUMABLE = ["objective.name=bico", "train.max_steps=6", "train.save_every=3", "train.save_model=false"]
QUICK_EVAL = ["eval.enabled=true", "eval.limit=2", "eval.max_new_tokens=4", "eval.splits=[p2d_prompts_test]"]


def scalars(log_dir, tag):
    """``[(step, value)]`` of ``tag`` as TensorBoard shows it (restart markers applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)] if tag in accumulator.Tags()["scalars"] else []


def raw_steps(log_dir, tag):
    """Every step at which the event files hold ``tag``, duplicates included."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    steps = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for raw in RawEventFileLoader(str(path)).Load():
            event = Event.FromString(raw)
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def test_tensorboard_holds_every_logged_step_once_across_a_resume(tmp_path, reversal_dir):
    pytest.importorskip("tensorboard", reason="tensorboard is in bico's test extra: pip install -e '.[test]'")
    from bico.tools.pipeline import train_and_evaluate

    out = tmp_path / "run"
    common = [*RESUMABLE, "train.report_to=[tensorboard]"]
    train(tiny_recipe(out, reversal_dir, *common), stop_after=4)  # dies after step 4; checkpoint at 3
    log_dir = out / "tensorboard"
    assert [s for s, _ in scalars(log_dir, "loss")] == [1, 2, 3, 4]
    before = tmp_path / "seen-before-the-resume"  # what a TensorBoard watching the run had read
    shutil.copytree(log_dir, before)
    (next(log_dir.glob("events.*"))).open("ab").write(b"\x17\x00\x00")  # a torn record: killed mid-write

    outcome = train_and_evaluate(tiny_recipe(out, reversal_dir, *common, "train.resume=true", *QUICK_EVAL))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {r["mode"] for r in records} == {"ntp", "denoise"}  # BICO's two kinds of step, both logged
    # The loss of every logged step, once, in the files themselves and as TensorBoard shows them.
    assert raw_steps(log_dir, "loss") == [1, 2, 3, 4, 5, 6]
    assert scalars(log_dir, "loss") == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records]
    for mode in ("ntp", "denoise"):
        assert [s for s, _ in scalars(log_dir, f"loss/{mode}")] == [r["step"] for r in records if r["mode"] == mode]
    for tag in ("lr", "grad_norm", "tokens_per_s"):
        assert [s for s, _ in scalars(log_dir, tag)] == [1, 2, 3, 4, 5, 6], tag
    assert scalars(log_dir, "lr") == [(r["step"], pytest.approx(r["lr"], rel=1e-6)) for r in records]
    # The evaluation after training, at the last step.
    em = outcome.scores["splits"]["p2d_prompts_test"]["exact_match"]
    assert scalars(log_dir, "eval/p2d_prompts_test/exact_match") == [(6, pytest.approx(em))]
    # A TensorBoard that had read the killed run's step 4 before the resume: the new writer's
    # restart marker makes it drop that step, so step 4 is shown once there too.
    for path in log_dir.glob("events.*"):
        if not (before / path.name).exists():
            shutil.copy(path, before)
    assert Counter(raw_steps(before, "loss"))[4] == 2
    assert [s for s, _ in scalars(before, "loss")] == [1, 2, 3, 4, 5, 6]
    for png in ("loss.png", "eval.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # Trained further: the stale eval scalars go, every step is still there once.
    train(tiny_recipe(out, reversal_dir, *common, "train.resume=true", "train.max_steps=8"))
    assert raw_steps(log_dir, "loss") == list(range(1, 9))
    assert scalars(log_dir, "eval/p2d_prompts_test/exact_match") == []


def test_wandb_offline_files_in_the_run_dir(tmp_path, reversal_dir, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is optional (pip install 'bico[wandb]'); tested where installed")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # bico's default: offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "run"
    train(tiny_recipe(out, reversal_dir, *RESUMABLE, "train.report_to=[wandb]"), stop_after=4)
    train(tiny_recipe(out, reversal_dir, *RESUMABLE, "train.report_to=[wandb]", "train.resume=true"))
    run_id = (out / "wandb" / "bico-run-id").read_text().strip()
    offline = sorted((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(run_id) for p in offline)  # one run, continued
    assert all((p / f"run-{run_id}.wandb").stat().st_size > 0 for p in offline)
    assert (out / "loss.png").is_file()


def test_report_to_errors(tmp_path, reversal_dir, monkeypatch, capsys):
    from bico.cli import main

    with pytest.raises(RecipeError, match="unknown 'mlflow'; available: tensorboard, wandb"):
        load_recipe(None, ["train.report_to=[mlflow]"])
    with pytest.raises(RecipeError, match=r"must be a list .*train.report_to=\[tensorboard\]"):
        load_recipe(None, ["train.report_to=tensorboard"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    with pytest.raises(RecipeError, match=r"lists wandb but it is not installed; pip install 'bico\[wandb\]'"):
        load_recipe(None, ["train.report_to=[wandb]"])
    out = tmp_path / "never"
    args = [
        "train",
        "recipes/demo/tiny.yaml",
        f"data.dir={reversal_dir}",
        f"train.output_dir={out}",
        "train.report_to=[wandb]",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'bico[wandb]'" in err
    assert not out.exists()  # refused before training started


def test_report_to_may_change_on_resume(tmp_path, reversal_dir):
    pytest.importorskip("tensorboard", reason="tensorboard is in bico's test extra: pip install -e '.[test]'")
    common = ["train.max_steps=4", "train.save_every=2", "train.save_model=false"]
    train(tiny_recipe(tmp_path, reversal_dir, *common), stop_after=2)
    train(tiny_recipe(tmp_path, reversal_dir, *common, "train.resume=true", "train.report_to=[tensorboard]"))
    assert raw_steps(tmp_path / "tensorboard", "loss") == [3, 4] and len(losses(tmp_path)) == 4


def test_scalars_of_a_record_and_of_scores():
    record = {
        "step": 20,
        "loss": 2.5,
        "lr": 1e-4,
        "grad_norm": None,
        "mode": "denoise",
        "tokens": 3000,
        "elapsed_s": 12.0,
    }
    assert step_scalars(record, {"tokens": 1000, "elapsed_s": 2.0}) == {
        "loss": 2.5,
        "loss/denoise": 2.5,
        "lr": 1e-4,
        "tokens_per_s": 200.0,
    }  # no grad norm: none logged
    scores = {
        "splits": {"p2d": {"n": 10, "exact_match": 0.5, "examples": [{"prompt": "x"}]}},
        "retention": {"ppl": 9.0},
    }
    assert eval_scalars(scores) == {"eval/p2d/n": 10.0, "eval/p2d/exact_match": 0.5, "eval/retention/ppl": 9.0}
    records = [
        {"step": 1, "loss": 3.0, "mode": "ntp"},
        {"step": 2, "loss": 9.0, "mode": "denoise"},
        {"step": 3, "loss": 2.0, "mode": "ntp"},
        {"step": 4, "loss": None, "mode": "ntp"},
    ]
    assert loss_series(records) == {"ntp": ([1, 3], [3.0, 2.0]), "denoise": ([2], [9.0])}
