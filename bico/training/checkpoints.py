"""A run's checkpoints on disk: their names, their checksums, publishing one, finding the intact one.

Torch-free (the engines write the files inside a checkpoint; this module names, seals and
rotates them), so that :mod:`bico.training.rundir` can check a run dir without loading torch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bico.io_utils import atomic_write_json, file_digest, replace_dir

CHECKPOINTS = "checkpoints"
# The training loop's own state in every checkpoint (counters and the recipe), written by the
# engine into the checkpoint folder before it is renamed into place.
TRAINER_STATE = "trainer_state.json"
# sha256 of every other file of a checkpoint, written last: resume checks the bytes are those written.
CHECKSUMS = "checksums.json"


def all_checkpoints(output_dir: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first."""
    folder = Path(output_dir) / CHECKPOINTS
    return sorted(folder.glob("step-*")) if folder.is_dir() else []


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = all_checkpoints(output_dir)
    return found[-1] if found else None


def write_checksums(folder: Path) -> None:
    """:data:`CHECKSUMS` for every file in ``folder`` (the checkpoint before it is renamed into place)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != CHECKSUMS)
    atomic_write_json(Path(folder) / CHECKSUMS, {"sha256": {str(p.relative_to(folder)): file_digest(p) for p in files}})


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What makes ``checkpoint`` unfit to resume from (a file missing, or its bytes not those
    bico wrote: damaged, truncated or replaced), naming the file; None if it is intact. A
    checkpoint of a bico before checksums is checked for its trainer state only."""
    checkpoint = Path(checkpoint)
    sums = checkpoint / CHECKSUMS
    if sums.is_file():
        try:
            expected = json.loads(sums.read_text())["sha256"]
            expected = {str(name): str(digest) for name, digest in expected.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{sums} cannot be read"
        for name, digest in expected.items():
            path = checkpoint / name
            if not path.is_file():
                return f"{path} is missing"
            if file_digest(path) != digest:
                return f"{path} is not the file bico wrote (its sha256 differs: damaged, truncated or replaced)"
    try:
        if read_trainer_state(checkpoint) is None:
            return f"{checkpoint / TRAINER_STATE} is missing"
    except (OSError, ValueError):
        return f"{checkpoint / TRAINER_STATE} cannot be read"
    return None


def read_trainer_state(checkpoint: Path) -> dict | None:
    path = Path(checkpoint) / TRAINER_STATE
    return json.loads(path.read_text()) if path.is_file() else None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (0: all)."""
    for old in sorted(Path(folder).glob("step-*"))[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_path(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:07d}"  # zero-padded: names sort by step


def publish_checkpoint(tmp: Path, target: Path, keep: int, trainer_state: dict | None) -> Path:
    """Finish a checkpoint written into the folder ``tmp``: add the loop's state and the files'
    checksums (:func:`checkpoint_problem` checks them on resume), rename it to
    ``target`` (a kill leaves the old checkpoint or the new one, never half of one), then drop
    all but the newest ``keep``."""
    if trainer_state is not None:
        atomic_write_json(Path(tmp) / TRAINER_STATE, trainer_state)
    write_checksums(Path(tmp))
    replace_dir(tmp, target)
    prune_checkpoints(Path(target).parent, keep)
    return Path(target)
