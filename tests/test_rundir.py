"""A run owns its output dir: ownership, the lock, resume checks, counters, the metrics log, files."""

import json
import os
import subprocess
import sys

import pytest
from test_train import tiny_recipe

from bico.cli import main
from bico.training.rundir import LOCK, RunDirError, RunLock, recipe_differences
from bico.training.train import TrainingError, train

RESUMABLE = ["train.max_steps=6", "train.save_every=2", "train.save_model=false"]
WALL_CLOCK = {"elapsed_s", "wall_time_s", "tokens_per_s"}


def records(folder):
    """metrics.jsonl without its wall-clock field."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in lines]


def summary(folder):
    return {k: v for k, v in strict_json(folder / "train_summary.json").items() if k not in WALL_CLOCK}


def strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_counters_survive_resume(tmp_path, reversal_dir):
    """tokens, steps and elapsed time go on from the checkpoint: log and summary equal the uninterrupted run's."""
    whole = train(tiny_recipe(tmp_path / "a", reversal_dir, *RESUMABLE, "train.log_every=2"))
    cut = train(tiny_recipe(tmp_path / "b", reversal_dir, *RESUMABLE, "train.log_every=2"), stop_after=3)
    resumed = train(tiny_recipe(tmp_path / "b", reversal_dir, *RESUMABLE, "train.log_every=2", "train.resume=true"))
    assert records(tmp_path / "a") == records(tmp_path / "b")
    assert summary(tmp_path / "a") == summary(tmp_path / "b")
    assert resumed.summary["tokens"] == whole.summary["tokens"] > 0
    # an interrupted run's summary has the finished one's keys (and JSON values), its status says it stopped
    assert (cut.status, cut.summary["steps"], cut.model) == ("interrupted", 3, None)
    assert (
        set(json.loads(json.dumps(cut.summary)))
        == set(whole.summary)
        == set(strict_json(tmp_path / "a" / "train_summary.json"))
    )
    assert whole.status == summary(tmp_path / "a")["status"] == "finished" and whole.model is not None
    elapsed = [json.loads(line)["elapsed_s"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert elapsed == sorted(elapsed)  # the clock went on from the checkpoint, not from 0


def test_torn_metrics_line_is_repaired_on_resume(tmp_path, reversal_dir):
    train(tiny_recipe(tmp_path / "a", reversal_dir, *RESUMABLE))
    train(tiny_recipe(tmp_path / "b", reversal_dir, *RESUMABLE), stop_after=5)  # checkpoint at 4, logged 5
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "epoch": 1.0, "lo')  # killed while appending
    train(tiny_recipe(tmp_path / "b", reversal_dir, *RESUMABLE, "train.resume=true"))
    assert records(tmp_path / "a") == records(tmp_path / "b")


def test_bad_metrics_line_elsewhere_is_named(tmp_path, reversal_dir):
    train(tiny_recipe(tmp_path, reversal_dir, *RESUMABLE), stop_after=4)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lines[1] = "garbage"
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError, match=r"metrics.jsonl, line 2: not a metrics record"):
        train(tiny_recipe(tmp_path, reversal_dir, *RESUMABLE, "train.resume=true"))
    assert not (tmp_path / LOCK).exists()


def test_copied_run_is_neither_mixed_nor_resumed_with_another_recipe(tmp_path, reversal_dir, capsys):
    """The issue's probe: a finished seed-3 run copied to a new name, then trained into with seed 5."""
    train(tiny_recipe(tmp_path / "old", reversal_dir, *RESUMABLE, "train.seed=3"))
    os.rename(tmp_path / "old", tmp_path / "copy")
    with pytest.raises(RunDirError, match="holds another run .*train.resume=true.*train.overwrite=true"):
        train(tiny_recipe(tmp_path / "copy", reversal_dir, *RESUMABLE, "train.seed=5"))
    with pytest.raises(RunDirError, match=r"another recipe \(train.seed: 3 -> 5\)"):
        train(tiny_recipe(tmp_path / "copy", reversal_dir, *RESUMABLE, "train.seed=5", "train.resume=true"))
    # Moving a run and resuming it with its own recipe (and a new step budget) is fine.
    result = train(
        tiny_recipe(
            tmp_path / "copy",
            reversal_dir,
            "train.max_steps=8",
            "train.save_every=2",
            "train.save_model=false",
            "train.seed=3",
            "train.resume=true",
        )
    )
    assert result.summary["steps"] == 8
    assert [r["step"] for r in records(tmp_path / "copy")] == list(range(1, 9))


def test_overwrite_replaces_the_old_run_only_once_start_up_succeeded(tmp_path, reversal_dir):
    train(tiny_recipe(tmp_path, reversal_dir, *RESUMABLE, "train.seed=3"))
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(TrainingError, match="more than data.max_length"):  # fails at start-up: old run kept
        train(tiny_recipe(tmp_path, reversal_dir, *RESUMABLE, "train.overwrite=true", "data.max_length=8"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    train(tiny_recipe(tmp_path, reversal_dir, "train.max_steps=3", "train.save_every=3", "train.overwrite=true"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000003"]
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3]


def test_resume_finished_run_does_nothing_unless_the_budget_grew(tmp_path, reversal_dir, capsys):
    common = ["train.save_every=2", "eval.limit=2", "eval.max_new_tokens=4"]
    first = train(tiny_recipe(tmp_path, reversal_dir, "train.max_steps=4", *common))
    assert first.summary["steps"] == 4
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    again = train(tiny_recipe(tmp_path, reversal_dir, "train.max_steps=4", *common, "train.resume=true"))
    assert again.status == "already_finished" and again.summary["steps"] == 4 and again.model is None
    assert set(json.loads(json.dumps(again.summary))) == set(first.summary)  # same keys, JSON
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files  # nothing rewritten
    more = train(tiny_recipe(tmp_path, reversal_dir, "train.max_steps=6", *common, "train.resume=true"))
    assert more.summary["steps"] == 6 and [r["step"] for r in records(tmp_path)] == list(range(1, 7))
    assert summary(tmp_path)["tokens"] > json.loads(files[tmp_path / "train_summary.json"])["tokens"]
    with pytest.raises(TrainingError, match="at step 6, past the 4 steps"):  # a lowered budget
        os.remove(tmp_path / "train_summary.json")
        train(tiny_recipe(tmp_path, reversal_dir, "train.max_steps=4", *common, "train.resume=true"))


def test_cli_resume_of_finished_run_exits_0_and_completes_a_missing_eval(tmp_path, reversal_dir, capsys):
    from test_cli import SMALL, TINY

    argv = ["train", TINY, f"data.dir={reversal_dir}", f"train.output_dir={tmp_path}", *SMALL, "train.save_every=2"]
    assert main(argv) == 0
    evaluated = (tmp_path / "eval.json").read_text()
    capsys.readouterr()
    assert main(argv + ["train.resume=true"]) == 0
    out = capsys.readouterr().out
    assert "is finished (2 steps); nothing to do" in out and "nan" not in out
    os.remove(tmp_path / "eval.json")  # as if killed while evaluating
    assert main(argv + ["train.resume=true"]) == 0
    assert (tmp_path / "eval.json").read_text() == evaluated


def test_files_are_json_with_plain_permissions(tmp_path, reversal_dir):
    from test_cli import SMALL, TINY

    old = os.umask(0o022)
    try:
        assert (
            main(
                [
                    "train",
                    TINY,
                    f"data.dir={reversal_dir}",
                    f"train.output_dir={tmp_path / 'run'}",
                    *SMALL,
                    "train.save_every=1",
                    "finetune.method=lora",
                    "finetune.lora_r=2",
                ]
            )
            == 0
        )
    finally:
        os.umask(old)
    run = tmp_path / "run"
    modes = {str(p.relative_to(run)): oct(p.stat().st_mode & 0o777) for p in [run, *run.rglob("*")]}
    assert {m for p, m in modes.items() if (run / p).is_dir() or p == "."} == {"0o755"}, modes
    assert {m for p, m in modes.items() if (run / p).is_file()} == {"0o644"}, modes
    assert not [p for p in modes if p != "." and p.split("/")[-1].startswith(".")]  # no temporary or lock file
    for path in [*run.glob("*.json"), *run.glob("checkpoints/*/*.json")]:
        strict_json(path)


def test_orphaned_temporary_saves_are_removed_at_next_start(tmp_path, reversal_dir):
    train(tiny_recipe(tmp_path, reversal_dir, *RESUMABLE), stop_after=4)
    orphans = [
        tmp_path / "checkpoints" / ".step-0000006-x1",
        tmp_path / "checkpoints" / ".tmp-step-0000006",
        tmp_path / ".model-abc",
        tmp_path / ".metrics.jsonl.abc",
        tmp_path / ".train_summary.json.q",
    ]
    for p in orphans:
        if p.name.startswith((".step", ".tmp", ".model")):
            p.mkdir()
            (p / "state.pt").write_bytes(b"")  # a save killed half-way
        else:
            p.write_text("{")
    (tmp_path / ".keep-me").write_text("not bico's")
    train(tiny_recipe(tmp_path, reversal_dir, *RESUMABLE, "train.resume=true"))
    assert not any(p.exists() for p in orphans)
    assert (tmp_path / ".keep-me").exists()


def test_second_run_on_a_locked_dir_fails_at_once(tmp_path, reversal_dir, capsys):
    from test_cli import SMALL, TINY

    tmp_path.mkdir(exist_ok=True)
    lock = RunLock(tmp_path)
    lock.acquire()
    try:
        code = main(["train", TINY, f"data.dir={reversal_dir}", f"train.output_dir={tmp_path}", *SMALL])
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert code == 2 and f"in use by another bico run (pid {os.getpid()} on " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, reversal_dir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / LOCK).write_text(json.dumps({"pid": dead.pid, "host": "here", "started": "earlier"}))
    train(tiny_recipe(tmp_path, reversal_dir, "train.max_steps=2"))
    assert (tmp_path / "train_summary.json").is_file() and not (tmp_path / LOCK).exists()


def test_nan_hint_says_what_is_already_on(tmp_path, reversal_dir, monkeypatch):
    import torch

    import bico.training.train as T

    monkeypatch.setattr(
        T, "batch_loss", lambda model, batch, device, *_: torch.tensor(float("nan"), requires_grad=True)
    )
    with pytest.raises(TrainingError) as caught:
        train(tiny_recipe(tmp_path, reversal_dir, "train.max_steps=2", "train.max_grad_norm=1.0"))
    message = str(caught.value)
    assert "already set: train.max_grad_norm=1, train.precision=fp32" in message
    assert "try: lower train.lr (now 0.001), add train.warmup_steps" in message
    assert "enable train.max_grad_norm" not in message and "use train.precision=fp32" not in message


def test_recipe_differences_ignore_keys_free_on_resume():
    from bico.config import load_recipe

    a = load_recipe(None, ["train.seed=1"]).to_dict()
    b = load_recipe(
        None,
        [
            "train.seed=1",
            "train.max_steps=9",
            "eval.limit=3",
            "train.progress=false",
            "train.output_dir=elsewhere",
            "train.save_every=5",
        ],
    ).to_dict()
    assert recipe_differences(a, b) == []
    c = load_recipe(None, ["train.seed=2", "objective.options.mask_ratio=0.3"]).to_dict()
    assert recipe_differences(a, c) == ["objective.options: {} -> {'mask_ratio': 0.3}", "train.seed: 1 -> 2"]


@pytest.mark.parametrize("resume", [False, True])
def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path, reversal_dir, capsys, resume):
    from test_cli import SMALL, TINY

    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    victim.write_text("precious")
    if resume:
        train(tiny_recipe(run, reversal_dir, *RESUMABLE))
    run.mkdir(exist_ok=True)
    (run / LOCK).symlink_to(victim)
    code = main(
        [
            "train",
            TINY,
            f"data.dir={reversal_dir}",
            f"train.output_dir={run}",
            *SMALL,
            *(RESUMABLE + ["train.resume=true", "train.max_steps=8"] if resume else []),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a symbolic link" in err[0] and LOCK in err[0], err
    assert victim.read_text() == "precious" and (run / LOCK).is_symlink()


def test_resume_never_appends_metrics_through_a_link(tmp_path, reversal_dir, capsys):
    from test_cli import SMALL, TINY

    run, outside = tmp_path / "run", tmp_path / "outside.jsonl"
    train(tiny_recipe(run, reversal_dir, *RESUMABLE))
    outside.write_bytes((run / "metrics.jsonl").read_bytes())
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(outside)
    before = outside.read_bytes()
    code = main(
        [
            "train",
            TINY,
            f"data.dir={reversal_dir}",
            f"train.output_dir={run}",
            *SMALL,
            *RESUMABLE,
            "train.resume=true",
            "train.max_steps=8",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "metrics.jsonl is a symbolic link" in err[0], err
    assert outside.read_bytes() == before
    (run / "metrics.jsonl").unlink()  # a link planted while the run runs: the append refuses it too
    (run / "metrics.jsonl").symlink_to(outside)
    from bico.training.rundir import RunDir

    with pytest.raises(RunDirError, match="symbolic link"):
        RunDir(run, tiny_recipe(run, reversal_dir)).append_metrics({"step": 99})
    assert outside.read_bytes() == before


def test_one_vocabulary_for_number_formats():
    """model.dtype and train.precision both say fp32 | bf16 | fp16; torch's names mean the same,
    also in a run saved before (its recipe.json resumes without a difference)."""
    from bico.config import load_recipe

    long = load_recipe(None, ["model.dtype=bfloat16", "train.precision=float32"])
    short = load_recipe(None, ["model.dtype=bf16", "train.precision=fp32"])
    assert (long.model.dtype, long.train.precision) == ("bf16", "fp32") and long.to_dict() == short.to_dict()
    saved = load_recipe(None, []).to_dict()
    saved["model"]["dtype"] = "float32"
    assert recipe_differences(saved, load_recipe(None, []).to_dict()) == []
    assert recipe_differences(saved, short.to_dict()) == [
        "model.dtype: 'fp32' -> 'bf16'",
        "train.precision: 'auto' -> 'fp32'",
    ]
