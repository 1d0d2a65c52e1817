"""``kill -9`` at any point, then resume, gives the uninterrupted run; two runs on one dir never mix.

A child process runs ``bico train`` and kills itself (SIGKILL, no clean-up of any kind) at a
chosen point: before the N-th file rename (checkpoints, the model, the recipe, the summary, the
evaluation files), half-way through writing a checkpoint's state, half-way through appending a
metrics line, after the model's weights are written but before its folder is renamed, or at a
random moment of training (from the parent). Then ``train.resume=true`` (or, when the kill came
before the first checkpoint, ``train.overwrite=true``) must give exactly the uninterrupted run:
``metrics.jsonl`` without its wall-clock field, the summary, the final weights and ``eval.json``.
"""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_cli import SMALL, TINY
from test_rundir import records, summary

from bico.cli import main
from helpers import one_torch_thread

RUN = [
    *SMALL[:-2],
    "train.max_steps=8",
    "train.save_every=2",
    "train.log_every=1",
    "train.batch_size=4",
    "eval.limit=3",
    "eval.max_new_tokens=4",
]

CHILD = r"""
import os, signal, sys

kind, count, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
import torch

torch.set_num_threads(1)
calls = [0]


def due():
    calls[0] += 1
    return calls[0] == count


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if kind == "rename":
    real_replace = os.replace

    def replace(src, dst):
        if due():
            die()
        return real_replace(src, dst)

    os.replace = replace
elif kind == "checkpoint-write":
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if due():
            path = getattr(f, "name", f)  # bico saves into a file object (bico.training.diskspace.FileWriter)
            os.truncate(path, os.path.getsize(path) // 2)
            die()

    torch.save = save
elif kind == "metrics-append":
    from bico.training.rundir import METRICS_LOG, RunDir
    real_append = RunDir.append_metrics

    def append(self, record):
        if due():
            import json
            line = json.dumps(record)
            with open(self.path / METRICS_LOG, "a") as f:
                f.write(line[: len(line) // 2])
            die()
        return real_append(self, record)

    RunDir.append_metrics = append
elif kind == "model-save":
    from transformers import PreTrainedModel
    real_save_pretrained = PreTrainedModel.save_pretrained

    def save_pretrained(self, *args, **kwargs):
        real_save_pretrained(self, *args, **kwargs)
        die()

    PreTrainedModel.save_pretrained = save_pretrained
from bico.cli import main

sys.exit(main(["train", *argv]))
"""


def _argv(reversal_dir, out):
    return [TINY, f"data.dir={reversal_dir}", f"train.output_dir={out}", *RUN]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, reversal_dir, tokenizer):
    """The reference run, one torch thread like the children (the same float reductions)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    with one_torch_thread():
        assert main(["train", *_argv(reversal_dir, out)]) == 0
    return out


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model" / "model.safetensors")


def _finish(out, reversal_dir, capsys):
    """What a user does after a crash: resume; with no checkpoint yet, start over."""
    with one_torch_thread():
        code = main(["train", *_argv(reversal_dir, out), "train.resume=true"])
        err = capsys.readouterr().err
        if code == 2 and ("no checkpoint" in err or "does not exist" in err):
            code = main(["train", *_argv(reversal_dir, out), "train.overwrite=true"])
            err = capsys.readouterr().err
    assert code == 0, err


def _same_run(out, reference):
    assert records(out) == records(reference)
    assert summary(out) == summary(reference)
    assert json.loads((out / "eval.json").read_text()) == json.loads((reference / "eval.json").read_text())
    assert (out / "eval.md").read_text() == (reference / "eval.md").read_text() and (out / "eval.png").is_file()
    mine, theirs = _weights(out), _weights(reference)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not [p for p in out.rglob(".*")]  # no lock, no temporary file or folder left


# (where, which occurrence). A run renames 14 times: the recipe, 4 checkpoints (their trainer
# state, then the folder), the model, the summary, eval.json/.md/.png; the seeds draw renames 3
# (before the first checkpoint), 14, 10 and 13. Then a checkpoint torn half-way, a torn metrics
# line, and the model written but its folder not renamed.
KILLS = [("rename", random.Random(seed).randint(1, 14)) for seed in (1, 2, 5, 6)] + [
    ("checkpoint-write", 2),
    ("metrics-append", 5),
    ("model-save", 1),
]


@pytest.mark.parametrize("kind,count", KILLS, ids=[f"{k}-{c}" for k, c in KILLS])
def test_kill_9_then_resume_gives_the_uninterrupted_run(kind, count, tmp_path, reversal_dir, uninterrupted, capsys):
    out = tmp_path / "run"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(count), *_argv(reversal_dir, out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    _finish(out, reversal_dir, capsys)
    _same_run(out, uninterrupted)


@pytest.mark.parametrize("seed", [0])
def test_kill_9_at_a_random_moment_of_training(seed, tmp_path, reversal_dir, uninterrupted, capsys):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "none", "0", *_argv(reversal_dir, out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0, 0.5))
    proc.kill()
    proc.wait()
    _finish(out, reversal_dir, capsys)
    _same_run(out, uninterrupted)


def test_two_concurrent_runs_on_one_dir(tmp_path, reversal_dir, uninterrupted):
    """Started together: one trains, the other stops at once with exit 2; nothing is logged twice."""
    out = tmp_path / "run"
    command = [sys.executable, "-c", CHILD, "none", "0", *_argv(reversal_dir, out)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    lines = refused.strip().splitlines()
    assert len(lines) == 1 and ("in use by another bico run" in lines[0] or "holds another run" in lines[0]), refused
    for _, err in results:  # DeepSpeed is not imported without train.deepspeed
        assert "Setting accelerator" not in err and "Traceback" not in err
    _same_run(out, uninterrupted)
