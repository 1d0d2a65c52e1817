"""A training run's output directory: who owns it, resuming it, and its metrics log.

A run owns its ``train.output_dir`` (as with HF Trainer's ``overwrite_output_dir`` and its
"no valid checkpoint found"):

* A new run needs an absent or empty dir. One holding another run's files is refused, naming
  the two ways out: ``train.resume=true`` (continue that run) or ``train.overwrite=true`` (delete
  it first). A dir holding anything else is never deleted.
* A lock (``.bico.lock``: an ``flock`` held while the run lives, with its PID and host written
  in the file) makes a second run on the same dir fail at once. The kernel releases an ``flock``
  when its process dies, even by ``kill -9``, so the lock file of a dead run is simply taken over.
* Resume needs a checkpoint, and the checkpoint's recipe must match this one except for the keys
  in :data:`FREE_ON_RESUME`; the keys that differ are named. A finished run is not trained again
  unless the step budget was raised.
* Resume takes the newest checkpoint whose files match their recorded sha256 (a damaged newer
  one is named in a warning), and refuses training data whose digest differs from the checkpoint's.
* Temporary files and folders of a save that was killed are deleted at the next start.
* If start-up fails (a bad model folder, over-long rows, Ctrl-C ...) before the first step,
  nothing is left behind: a dir this run created is removed again.

Checkpoints carry the loop's counters (steps, tokens, elapsed time) and the recipe in
``trainer_state.json``, so a resumed run's ``metrics.jsonl`` and summary equal an uninterrupted
run's except for wall-clock fields.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from bico.config import canonical_recipe_dict
from bico.errors import BicoError
from bico.io_utils import atomic_write, atomic_write_json, json_safe
from bico.training.checkpoints import CHECKPOINTS, all_checkpoints, checkpoint_problem, read_trainer_state

logger = logging.getLogger(__name__)

LOCK = ".bico.lock"
METRICS_LOG, RECIPE_JSON, SUMMARY_JSON = "metrics.jsonl", "recipe.json", "train_summary.json"
EVAL_FILES = ("eval.json", "eval.md", "eval.png")  # written by `bico train` after training
LOSS_PNG, TENSORBOARD, WANDB = "loss.png", "tensorboard", "wandb"  # written by bico.training.report
REPORT_FILES, REPORT_FOLDERS = (LOSS_PNG,), (TENSORBOARD, WANDB)
RUN_FILES = (RECIPE_JSON, METRICS_LOG, SUMMARY_JSON, *EVAL_FILES, *REPORT_FILES)
RUN_FOLDERS = (CHECKPOINTS, "model", *REPORT_FOLDERS)
# Recipe keys that may differ between a run and its resumption: the step budget, evaluation, and
# keys that change where or how visibly the run goes or what it keeps on disk. None of them
# changes the weights of a given step (every random choice derives from (train.seed, step)).
FREE_ON_RESUME = {
    "train.max_steps",
    "train.epochs",
    "train.progress",
    "train.device",
    "train.resume",
    "train.overwrite",
    "train.output_dir",
    "train.save_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.save_model",
    "train.report_to",
    "data.cache",
    "data.cache_dir",  # where tokenised data is kept, not what it is
}
FREE_SECTIONS_ON_RESUME = ("eval.",)


class RunDirError(BicoError, ValueError):
    """The output dir cannot be used as asked; the message says why and what to do."""


def recipe_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ, ignoring :data:`FREE_ON_RESUME`, as ``key: old -> new``."""
    old = _flatten(canonical_recipe_dict(json.loads(json.dumps(saved))))
    new = _flatten(canonical_recipe_dict(json.loads(json.dumps(current))))
    keys = sorted(
        k for k in old.keys() | new.keys() if k not in FREE_ON_RESUME and not k.startswith(FREE_SECTIONS_ON_RESUME)
    )
    # An empty mapping is the default of a section added later (data.identity_bridge): same as unset.
    return [
        f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
        for k in keys
        if old.get(k) != new.get(k) and not (old.get(k) in (None, {}) and new.get(k) in (None, {}))
    ]


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and not (prefix == "objective." and key == "options"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class RunLock:
    """An exclusive ``flock`` on ``folder/.bico.lock``; the file says who holds it."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = open_in_run_dir(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise RunDirError(f"train.output_dir {self.path.parent} is not writable ({err.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_holder(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    raise RunDirError(
                        f"train.output_dir {self.path.parent} is in use by another bico run ({holder}); "
                        "wait for it to end or choose another train.output_dir"
                    ) from None
                raise RunDirError(f"cannot lock train.output_dir {self.path.parent} ({err.strerror})") from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:  # else the holder removed the file as we opened it: lock the new one
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous:
            logger.info("took over the lock of %s, which no longer runs", previous)
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            ).encode(),
        )
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: see the inode check in acquire
            os.close(self.fd)
            self.fd = None


def open_in_run_dir(path: Path, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that never follows a symbolic link at ``path``: a link planted in a run dir
    would have bico write through it to a file outside (a link is a one-line error instead)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _link_error(path) from None
        raise


def _link_error(path: Path) -> RunDirError:
    return RunDirError(
        f"{path} is a symbolic link; bico writes nothing in a run dir through a link: remove it "
        "(or put a copy of its target there)"
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError, OSError):
        return ""


class RunDir:
    """``with RunDir(path, recipe) as run:`` owns ``path`` for the run (see the module doc).

    After ``__enter__``: :attr:`checkpoint` (to resume from, or None) and :attr:`state` (its
    counters). :meth:`begin` marks the end of start-up; from then on the dir is kept on failure.
    ``owner=False`` (DeepSpeed ranks other than 0) only finds the checkpoint; rank 0 does the rest.
    """

    def __init__(self, path: str | Path, recipe, *, owner: bool = True, data_fingerprint: str | None = None):
        self.path, self.recipe, self.owner = Path(path), recipe, owner
        self.data_fingerprint = data_fingerprint  # a digest of the training data's contents
        self.resume, self.overwrite = recipe.train.resume, recipe.train.overwrite
        self.lock = RunLock(self.path)
        self.created: list[Path] = []  # folders this run made, outermost first
        self.checkpoint: Path | None = None
        self.damaged: list[tuple[Path, str]] = []  # on resume: checkpoints newer than the intact one, and why
        self.state = {"step": 0, "tokens": 0, "elapsed_s": 0.0}
        self.to_delete: list[str] = []  # train.overwrite=true: the old run's entries
        self.started = False

    # -- start-up ------------------------------------------------------------------------
    def __enter__(self) -> RunDir:
        try:
            if self.owner:
                self._create()
                self.lock.acquire()
                self._remove_orphans()
                self._check_ownership()
            if self.resume:
                self._find_checkpoint()
        except BaseException:
            self._undo()
            raise
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is not None and not self.started:
            self._undo()
        else:
            self.lock.release()

    def _create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"train.output_dir {self.path} is a file, not a folder; choose another train.output_dir")
        if self.resume and not self.path.is_dir():
            raise RunDirError(f"train.resume=true but train.output_dir {self.path} does not exist: no run to resume")
        self.created = list(reversed([p for p in [self.path, *self.path.parents] if not p.exists()]))
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(f"cannot create train.output_dir {self.path} ({err.strerror or err})") from None

    def _undo(self) -> None:
        """Start-up failed: release the lock and remove the folders this run created (if still empty)."""
        self.lock.release()
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except FileNotFoundError:  # mkdir failed before making it
                continue
            except OSError:  # not empty (another process uses it too): leave it and its parents
                break

    def _remove_orphans(self) -> None:
        """Temporary files/folders of saves that were killed (nothing else can be writing: we hold the lock)."""
        prefixes = tuple(f".{name}." for name in RUN_FILES) + tuple(f".{name}-" for name in RUN_FOLDERS)
        leftovers = [p for p in self.path.iterdir() if p.name.startswith(prefixes)]
        checkpoints = self.path / CHECKPOINTS
        if checkpoints.is_dir():
            # .step-* (plain engine), .tmp-step-* (DeepSpeed), .trainer_state.json.* inside them
            leftovers += [p for p in checkpoints.iterdir() if p.name.startswith(".")]
        for p in leftovers:
            logger.info("removing %s, left by a save that was interrupted", p)
            _remove(p)

    def _run_entries(self) -> tuple[list[str], list[str]]:
        """(this folder's entries that a bico run writes, entries that are something else)."""
        names = sorted(p.name for p in self.path.iterdir() if p.name != LOCK)
        ours = [n for n in names if n in RUN_FILES or n in RUN_FOLDERS]
        return ours, [n for n in names if n not in ours]

    def _check_ownership(self) -> None:
        if self.resume:
            # Kept on resume and written again (metrics appended, files replaced): none may be a link.
            links = [n for n in self._run_entries()[0] if (self.path / n).is_symlink()]
            if links:
                raise _link_error(self.path / links[0])
            return
        ours, foreign = self._run_entries()
        if foreign:
            raise RunDirError(
                f"train.output_dir {self.path} is not empty and is not a bico run folder "
                f"(it holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); "
                "choose another train.output_dir"
            )
        if not ours:
            return
        if not self.overwrite:
            raise RunDirError(
                f"train.output_dir {self.path} holds another run ({', '.join(ours)}); continue it with "
                "train.resume=true or delete it with train.overwrite=true"
            )
        # Deleted in begin(): a start-up that fails (a typo in the model name) loses nothing.
        self.to_delete = ours

    def _find_checkpoint(self) -> None:
        checkpoint, damaged = self._newest_intact_checkpoint()
        self.damaged = damaged
        summary = self.finished_summary()
        if checkpoint is None and summary is None:
            if damaged:
                raise RunDirError(
                    f"train.resume=true but no checkpoint in {self.path} is intact: "
                    f"{damaged[0][1]}; start the run over with train.overwrite=true"
                )
            raise RunDirError(
                f"train.resume=true but {self.path} has no checkpoint to resume from "
                f"({CHECKPOINTS}/step-*; set train.save_every); start it over with train.overwrite=true"
            )
        if checkpoint is not None:
            if damaged:
                logger.warning("%s; resuming from %s, the newest intact checkpoint", damaged[0][1], checkpoint.name)
            state = read_trainer_state(checkpoint)
            self.checkpoint, self.state = checkpoint, state
            saved_recipe = state["recipe"]
            saved_data = state.get("data")  # absent in checkpoints of an older bico: not checked
            if saved_data and self.data_fingerprint and saved_data != self.data_fingerprint:
                raise RunDirError(
                    f"train.resume=true: the training data changed since {checkpoint} was written "
                    "(the files' contents differ); resume with the data the run was trained on, "
                    "or start over with train.overwrite=true"
                )
        else:
            saved_recipe = self._read_json(RECIPE_JSON)
        differences = recipe_differences(saved_recipe, self.recipe.to_dict())
        if differences:
            shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
            raise RunDirError(
                f"train.resume=true: the run in {self.path} was made with another recipe ({shown}); "
                "resume with the same recipe, or start over with train.overwrite=true"
            )

    def _newest_intact_checkpoint(self) -> tuple[Path | None, list[tuple[Path, str]]]:
        """The newest checkpoint whose files are those bico wrote, and the newer damaged ones with
        what is wrong with each (newest first)."""
        damaged = []
        for checkpoint in reversed(all_checkpoints(self.path)):
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                return checkpoint, damaged
            damaged.append((checkpoint, problem))
        return None, damaged

    def _read_json(self, name: str) -> dict:
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise RunDirError(
                f"{self.path / name} cannot be read ({err}); start over with train.overwrite=true"
            ) from None

    def finished_summary(self) -> dict | None:
        """The summary of a run that finished in this dir, or None."""
        return self._read_json(SUMMARY_JSON) if (self.path / SUMMARY_JSON).is_file() else None

    def already_finished(self, total_steps: int) -> dict | None:
        """On resume: the finished run's summary if it already did ``total_steps``; an error if it
        must go on but has no checkpoint to go on from."""
        summary = self.finished_summary() if self.resume else None
        if summary is None:
            return None
        if summary["steps"] >= total_steps:
            return summary
        if self.checkpoint is None:
            kept = f"no checkpoint is intact ({self.damaged[0][1]})" if self.damaged else "kept no checkpoint"
            raise RunDirError(
                f"the run in {self.path} finished after {summary['steps']} steps and {kept} "
                f"to train on to {total_steps} steps; start it over with train.overwrite=true"
            )
        return None

    def begin(self, recipe_dict: dict, start_step: int) -> None:
        """Start-up is over: write the recipe, cut the metrics log back to the checkpoint."""
        self.started = True
        if not self.owner:
            return
        if self.to_delete:
            logger.info("train.overwrite=true: deleting the run in %s", self.path)
        for name in self.to_delete:
            _remove(self.path / name)
        if self.resume:
            for name in (SUMMARY_JSON, *EVAL_FILES):  # a finished run trained further: its results are stale
                (self.path / name).unlink(missing_ok=True)
            self._cut_metrics(start_step)
        atomic_write_json(self.path / RECIPE_JSON, recipe_dict)

    # -- the metrics log -----------------------------------------------------------------
    def _cut_metrics(self, step: int) -> None:
        """Keep the log lines up to ``step`` (the checkpoint), so the resumed curve has no
        duplicates. A torn last line (the run was killed while appending it) is dropped; a bad
        line elsewhere is an error that names it."""
        path = self.path / METRICS_LOG
        if not path.exists():
            return
        text = path.read_bytes().decode("utf-8", errors="replace")
        lines = text.split("\n")
        kept = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                record_step = int(record["step"])
            except (ValueError, KeyError, TypeError):
                if number >= len(lines) - 1:  # the last line: a torn append
                    logger.warning("%s: dropping the torn last line %d", path, number)
                    continue
                raise RunDirError(f"{path}, line {number}: not a metrics record; delete or fix that line") from None
            if record_step <= step:
                kept.append(line + "\n")
        new = "".join(kept)
        if new != text:
            atomic_write(path, new)

    def append_metrics(self, record: dict) -> None:
        """One JSON line, in one write: a kill can only tear the last line, which resume drops."""
        line = json.dumps(json_safe(record), allow_nan=False) + "\n"
        with os.fdopen(
            open_in_run_dir(self.path / METRICS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "w", encoding="utf-8"
        ) as f:
            f.write(line)

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / SUMMARY_JSON, summary)
