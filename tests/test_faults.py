"""Signals and a full disk: one line, the right exit status, nothing lost that a checkpoint can keep.

SIGTERM (and Ctrl-C) during training stop at a step boundary with a checkpoint of that step, and
resuming from it gives the uninterrupted run; during start-up they leave nothing behind; the
workers of ``bico ablate --devices/--workers`` end with their parent. A full disk while
checkpointing or saving the model says so in one line (exit 2), keeps the last good checkpoint
(and, at the final save, the trained weights in one) from which the run goes on. The signals are
real, sent to a real ``bico`` process; the full disk is a fake ``os.write`` (or a failing
``save_pretrained``) in this process, and a real small tmpfs where user namespaces allow mounting one.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli import SMALL, TINY
from test_kill import _argv, _finish, _same_run, uninterrupted  # noqa: F401  (a fixture)
from test_rundir import records, summary

from bico.cli import main
from helpers import one_torch_thread

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals, /proc")

ROOT = Path(__file__).resolve().parent.parent

# A bico process that signals itself at a chosen moment: within the COUNT-th metrics append (at
# the end of step COUNT, log_every=1), before a model loads (start-up), or, once it sent the first
# signal, again while the stop checkpoint is written.
CHILD = r"""
import os, signal, sys

kind, count, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
import torch

torch.set_num_threads(1)
calls, sent = [0], []


def send(*signums):
    for signum in signums:
        os.kill(os.getpid(), signum)
        sent.append(signum)


if kind == "start-up":
    import bico.models
    real_setup = bico.models.setup_model

    def setup_model(*args, **kwargs):
        send(signal.SIGTERM)
        return real_setup(*args, **kwargs)

    bico.models.setup_model = setup_model
else:
    from bico.training.rundir import RunDir
    real_append = RunDir.append_metrics
    first = {"sigterm": [signal.SIGTERM], "sigterm-again-while-saving": [signal.SIGTERM], "sigint": [signal.SIGINT],
             "sigint-twice": [signal.SIGINT, signal.SIGINT]}.get(kind, [])

    def append(self, record):
        calls[0] += 1
        if calls[0] == count:
            send(*first)
        return real_append(self, record)

    RunDir.append_metrics = append
    if kind == "sigterm-again-while-saving":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if sent:  # the stop checkpoint: a second SIGTERM and a Ctrl-C must not break it
                send(signal.SIGTERM, signal.SIGINT)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
from bico.cli import main

sys.exit(main(["train", *argv]))
"""


def _child(kind, count, argv, **kwargs):
    return subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(count), *argv],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=terminal_sigint,
        **kwargs,
    )


def terminal_sigint():
    """Ctrl-C as at a terminal: a shell starts a background job (``cmd &``, a CI runner's) with
    SIGINT ignored, which its children inherit and Python then leaves alone (no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bico: "), stderr[-3000:]
    return lines[0]


# (kind, step at whose end the signal comes, exit status, the signal's name); test_kill's runs checkpoint
# every 2 steps, so each stop writes a checkpoint of its own
STOPS = [
    ("sigterm", 3, 143, "SIGTERM"),
    ("sigterm-again-while-saving", 5, 143, "SIGTERM"),
    ("sigint", 1, 130, "SIGINT"),
]


@pytest.mark.parametrize("kind,step,status,name", STOPS, ids=[s[0] for s in STOPS])
def test_a_signal_during_training_checkpoints_that_step_and_resume_is_exact(
    kind, step, status, name, tmp_path, reversal_dir, uninterrupted, capsys
):
    out = tmp_path / "run"
    done = _child(kind, step, _argv(reversal_dir, out))
    line = _one_line(done.stderr)
    assert done.returncode == status, done.stderr[-3000:]
    checkpoint = out / "checkpoints" / f"step-{step:07d}"
    assert line == (
        f"bico: stopped by {name} after step {step} of 8; checkpoint {checkpoint}; "
        "resume with the same command and train.resume=true"
    )
    assert (checkpoint / "checksums.json").is_file() and not (out / "train_summary.json").exists()
    assert [r["step"] for r in records(out)] == list(range(1, step + 1))  # nothing half-made, nothing beyond
    _finish(out, reversal_dir, capsys)
    _same_run(out, uninterrupted)


def test_a_stop_checkpoint_is_written_without_save_every(tmp_path, reversal_dir):
    out = tmp_path / "run"
    done = _child("sigterm", 2, _argv(reversal_dir, out) + ["train.save_every=null"])
    assert done.returncode == 143 and "after step 2 of 8" in _one_line(done.stderr)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]


def test_ctrl_c_twice_stops_at_once_and_the_last_checkpoint_resumes(tmp_path, reversal_dir, uninterrupted, capsys):
    out = tmp_path / "run"
    done = _child("sigint-twice", 3, _argv(reversal_dir, out))
    assert (done.returncode, _one_line(done.stderr)) == (130, "bico: interrupted")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"]  # step 3 was not saved
    _finish(out, reversal_dir, capsys)
    _same_run(out, uninterrupted)


def test_sigterm_at_a_random_moment_of_training(tmp_path, reversal_dir, uninterrupted, capsys):
    """From outside, as a scheduler sends it: stopped in training (or, late, while evaluating)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "none", "0", *_argv(reversal_dir, out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:  # 0: it had finished
        line = _one_line(err)
        assert proc.returncode == 143 and (
            line == "bico: terminated"
            or re.fullmatch(
                r"bico: stopped by SIGTERM after step \d of 8; checkpoint .*; resume with the same command and "
                r"train.resume=true",
                line,
            )
        ), err
    _finish(out, reversal_dir, capsys)
    _same_run(out, uninterrupted)


def test_sigterm_during_start_up_leaves_no_run_folder(tmp_path, reversal_dir):
    out = tmp_path / "new" / "run"
    done = _child("start-up", 0, _argv(reversal_dir, out))
    assert (done.returncode, _one_line(done.stderr)) == (143, "bico: terminated")
    assert not (tmp_path / "new").exists()
    out.mkdir(parents=True)  # a folder that was there before stays, as it was
    done = _child("start-up", 0, _argv(reversal_dir, out))
    assert (done.returncode, _one_line(done.stderr)) == (143, "bico: terminated")
    assert out.is_dir() and not list(out.iterdir())


def test_sigterm_while_torch_imports_is_one_line_exit_143(tmp_path, reversal_dir):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bico", "train", TINY, f"data.dir={reversal_dir}", f"train.output_dir={out}", *SMALL],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # torch takes about 3 s to import on the 2-core CI machine
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    if proc.returncode == 0:  # a very fast machine finished first: nothing to check
        return
    assert proc.returncode == 143 and _one_line(err).startswith(("bico: terminated", "bico: stopped by SIGTERM")), err
    assert not out.exists() or (out / "recipe.json").is_file()


# --- bico ablate: workers end with their parent -------------------------------------------------

ABLATE = [
    str(ROOT / "recipes" / "ablations" / "reversal_objectives_tiny.yaml"),
    *SMALL[:5],
    "eval.max_new_tokens=4",
    "generate_data={facts_per_subset: 2, train_paraphrases: 4, test_paraphrases: 2, seed: 0}",
    "objectives=[ntp]",
    "seeds=[0]",
    "train.max_steps=400",
    "--devices",
    "cpu",
]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_ablation(out: Path):
    parent = subprocess.Popen(
        [sys.executable, "-m", "bico", "ablate", *ABLATE, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = out / "cells" / "ntp-seed0" / "train" / "metrics.jsonl"
    deadline = time.time() + 300
    while not metrics.exists() and parent.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert metrics.exists(), parent.communicate(timeout=60)[1][-3000:]
    workers = [pid for pid in _children(parent.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(workers) == 1
    return parent, workers[0]


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_ablate_worker_ends_when_its_parent_is_killed(tmp_path):
    out = tmp_path / "ablate"
    parent, worker = _start_ablation(out)
    parent.kill()  # SIGKILL: the parent can do nothing; the kernel tells the worker (PR_SET_PDEATHSIG)
    parent.communicate(timeout=60)
    assert _gone_within(worker, 20)
    # it stopped as `bico train` does: a checkpoint of its last step
    assert list((out / "cells" / "ntp-seed0" / "train" / "checkpoints").glob("step-*"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_ablate_forwards_sigterm_to_its_workers_and_a_rerun_goes_on(tmp_path):
    out = tmp_path / "ablate"
    parent, worker = _start_ablation(out)
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=120)
    assert parent.returncode == 143 and not _alive(worker), err
    lines = re.findall(r"bico: .*", err)  # (the worker's line may follow the parent's progress bar)
    assert lines[-1] == "bico: terminated" and len(lines) == 2, err
    assert re.fullmatch(
        r"bico: cell ntp-seed0: stopped by SIGTERM after step (\d+) of 400; checkpoint .*; "
        r"run the same bico ablate command again to go on from it",
        lines[0],
    ), lines[0]
    assert "Traceback" not in err
    step = int(re.search(r"after step (\d+)", lines[0]).group(1))
    kept = out / "cells" / "ntp-seed0" / "train" / "checkpoints" / f"step-{step:07d}"
    assert kept.is_dir()
    # a rerun (in this process, two steps more) goes on from that checkpoint: a fresh start would delete it
    assert main(["ablate", *ABLATE[:-3], f"train.max_steps={step + 2}", "--out", str(out)]) == 0
    assert json.loads((out / "cells" / "ntp-seed0" / "result.json").read_text())["steps"] == step + 2
    assert kept.is_dir()


# --- a full disk ----------------------------------------------------------------------------------

SAVES = ["train.max_steps=6", "train.save_every=2", "train.log_every=1", "eval.enabled=false"]


def _train_args(reversal_dir, out, *extra):
    return ["train", TINY, f"data.dir={reversal_dir}", f"train.output_dir={out}", *SMALL[:6], *SAVES, *extra]


def _full_below(monkeypatch, marker: str):
    """``os.write`` fails with ENOSPC for files whose path contains ``marker`` (a fake full disk)."""
    real_write = os.write

    def write(fd, data):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if marker in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bico: error: no space left on device "), lines
    return lines[0]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Every run in this module is compared bit for bit with another, some in a child process."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory, reversal_dir):
    out = tmp_path_factory.mktemp("six")
    assert main(_train_args(reversal_dir, out)) == 0
    return out


def test_full_disk_at_a_checkpoint_keeps_the_last_good_one(tmp_path, reversal_dir, monkeypatch, capsys, six_steps):
    out = tmp_path / "run"
    _full_below(monkeypatch, f"{os.sep}.step-0000004-")
    assert main(_train_args(reversal_dir, out)) == 2
    line = _error_line(capsys)
    assert f"while writing the checkpoint {out / 'checkpoints' / 'step-0000004'};" in line, line
    assert f"the last good checkpoint, {out / 'checkpoints' / 'step-0000002'}, is kept" in line
    assert "train.resume=true" in line and "unexpected pos" not in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"]  # no half-made one
    monkeypatch.undo()  # space freed: the run goes on from step 2 as if nothing happened
    assert main(_train_args(reversal_dir, out, "train.resume=true")) == 0, capsys.readouterr().err
    assert records(out) == records(six_steps) and summary(out) == summary(six_steps)


def _failing_save_pretrained(monkeypatch):
    """The model's weights half-written, then ENOSPC (as safetensors reports it, wrapped or not)."""
    from transformers import PreTrainedModel

    def save_pretrained(self, folder, *args, **kwargs):
        Path(folder, "model.safetensors").write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model" / "model.safetensors")


@pytest.mark.parametrize("save_every", [2, None])
def test_full_disk_at_the_final_save_keeps_the_weights_in_a_checkpoint(
    save_every, tmp_path, reversal_dir, monkeypatch, capsys, six_steps
):
    out = tmp_path / "run"
    args = _train_args(reversal_dir, out, f"train.save_every={save_every or 'null'}")
    _failing_save_pretrained(monkeypatch)
    assert main(args) == 2
    line = _error_line(capsys)
    kept = out / "checkpoints" / "step-0000006"
    assert f"while writing the model {out / 'model'};" in line
    assert f"the trained weights are kept in the checkpoint {kept}" in line and "train.resume=true" in line, line
    assert kept.is_dir() and not (out / "model").exists() and not list(out.glob(".model-*"))
    assert not (out / "train_summary.json").exists()
    monkeypatch.undo()
    # elsewhere: the run copied to a disk with room, the model written there from the checkpoint
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out, elsewhere)
    args = [a.replace(str(out), str(elsewhere)) for a in args]
    assert main(args + ["train.resume=true"]) == 0, capsys.readouterr().err
    mine, theirs = _weights(elsewhere), _weights(six_steps)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert records(elsewhere) == records(six_steps) and summary(elsewhere) == summary(six_steps)


def test_full_disk_at_the_final_save_and_for_the_checkpoint_says_the_weights_are_lost(
    tmp_path, reversal_dir, monkeypatch, capsys
):
    out = tmp_path / "run"
    _failing_save_pretrained(monkeypatch)
    _full_below(monkeypatch, f"{os.sep}.step-")
    assert main(_train_args(reversal_dir, out, "train.save_every=null")) == 2
    line = _error_line(capsys)
    assert "while writing the model" in line and "the trained weights are lost" in line, line
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())


def _tmpfs_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=1M none /mnt"], capture_output=True, timeout=60
    )
    return probe.returncode == 0


TMPFS_CHILD = r"""
import os, sys
from pathlib import Path

when, argv = sys.argv[1], sys.argv[2:]
import torch

torch.set_num_threads(1)  # as the runs it is compared with (one_torch_thread)
import bico.training.engine
from transformers import PreTrainedModel

real_publish, real_save_pretrained = bico.training.engine.publish_checkpoint, PreTrainedModel.save_pretrained
published = [0]
out = Path(next(a for a in argv if a.startswith("train.output_dir=")).split("=", 1)[1])


def fill():
    with open(out.parent / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def publish(*args, **kwargs):
    done = real_publish(*args, **kwargs)
    published[0] += 1
    if when == f"after checkpoint {published[0]}":
        fill()
    return done


def save_pretrained(*args, **kwargs):
    if when == "at the model":
        fill()
    return real_save_pretrained(*args, **kwargs)


bico.training.engine.publish_checkpoint, PreTrainedModel.save_pretrained = publish, save_pretrained
from bico.cli import main

sys.exit(main(["train", *argv]))
"""

# when the tmpfs fills up, what the message names, the checkpoints left
REAL_FULL = [
    ("after checkpoint 1", "the checkpoint {out}/checkpoints/step-0000004;", ["step-0000002"]),
    ("after checkpoint 3", "the loss plot {out}/loss.png;", ["step-0000004", "step-0000006"]),
    ("at the model", "the model {out}/model;", ["step-0000004", "step-0000006"]),
]


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _tmpfs_works(),
    reason="needs a tmpfs mounted in a user namespace (unshare -Urm)",
)
@pytest.mark.parametrize("when,writing,kept", REAL_FULL, ids=[r[0] for r in REAL_FULL])
def test_a_real_full_disk(when, writing, kept, tmp_path, reversal_dir, capsys, six_steps):
    """A real tmpfs filling up during training, or after its last step: its loss plot, its model."""
    mount, copy = tmp_path / "small", tmp_path / "copy"
    mount.mkdir()
    out = mount / "run"
    args = _train_args(reversal_dir, out, "train.log_every=100")  # metrics at steps 1 and 6 only
    # the tmpfs lives as long as its namespace: the run is copied out of it for the checks below
    script = f'mount -t tmpfs -o size=256M none "{mount}" && "$@"; code=$?; cp -a "{out}" "{copy}"; exit $code'
    done = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script, "sh", sys.executable, "-c", TMPFS_CHILD, when, *args[1:]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = _one_line(done.stderr)
    assert done.returncode == 2 and line.startswith(f"bico: error: no space left on device {mount} ("), done.stderr
    assert f"while writing {writing.format(out=out)}" in line, line
    if when == "after checkpoint 1":
        assert f"the last good checkpoint, {out / 'checkpoints' / 'step-0000002'}, is kept" in line, line
    else:
        assert f"the trained weights are kept in the checkpoint {out / 'checkpoints' / 'step-0000006'}" in line, line
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == kept and not (copy / "model").exists()
    assert not [p for p in copy.rglob(".*") if p.name != ".bico.lock"]  # no half-made file or folder
    # "copy it to a disk with room": the run goes on there as if nothing had happened
    assert main([a.replace(str(out), str(copy)) for a in args] + ["train.resume=true"]) == 0, capsys.readouterr().err
    assert summary(copy) == summary(six_steps)
    mine, theirs = _weights(copy), _weights(six_steps)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
