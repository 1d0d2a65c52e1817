"""A full disk (ENOSPC, or a quota: EDQUOT) while bico writes, told apart from other failures.

Writers report it differently: Python as ``OSError`` (errno 28 or 122); safetensors (the model's
weights) as ``SafetensorError: ... No space left on device (os error 28)``; ``torch.save`` to a path
as ``RuntimeError: [enforce fail at inline_container.cc] . unexpected pos 7616 vs 7510``, which
names no cause at all. bico writes its own checkpoints through :class:`FileWriter`, so that torch
raises the ``OSError``; for the writers it does not control (DeepSpeed's ``torch.save``) the free
space left on the file system decides.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How a full disk reads in messages of writers that do not raise OSError (Rust's io::Error included).
NO_SPACE_WORDS = (
    "no space left on device",
    "disk quota exceeded",
    "os error 28",
    "os error 122",
    "storagefull",
    "filesystemquotaexceeded",
)
TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "iostream error")
NEARLY_FULL = 64 << 20  # bytes free below which a write failure without a cause is taken for a full disk


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def out_of_space(err: BaseException, folder: str | Path | None = None) -> bool:
    """Whether ``err`` (or an error it was raised from) says the disk is full; a bare write failure
    of torch's also counts when the file system of ``folder`` has next to no space left."""
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in NO_SPACE_ERRNOS:
            return True
        text = str(link).lower()
        if any(words in text for words in NO_SPACE_WORDS):
            return True
        if folder is not None and isinstance(link, RuntimeError) and any(w in text for w in TORCH_WRITE_FAILED):
            free = free_bytes(folder)
            if free is not None and free < NEARLY_FULL:
                return True
    return False


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer can still use on the file system of ``path`` (None if unknown)."""
    existing = next((p for p in [Path(path), *Path(path).parents] if p.exists()), None)
    try:
        return shutil.disk_usage(existing).free if existing is not None else None
    except OSError:
        return None


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system holding ``path`` (what ``df`` names)."""
    here = next((p for p in [Path(path).absolute(), *Path(path).absolute().parents] if p.exists()), Path("/"))
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    return here


def where(path: str | Path) -> str:
    """``device /mnt/data (3.1 MB free)``: the file system of ``path``, for a no-space message."""
    free = free_bytes(path)
    return f"device {mount_point(path)}" + (f" ({free / 1e6:.1f} MB free)" if free is not None else "")


class FileWriter:
    """A binary file opened for writing, written with ``os.write``: ``torch.save`` into it raises
    the ``OSError`` of a full disk (into a path it raises an ``unexpected pos`` instead)."""

    def __init__(self, path: str | Path):
        self.name = str(path)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self.fd, view[done:])
        return done

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def no_space_error(path: str | Path, what: str) -> str:
    """The start of the one-line message: what could not be written, and where the disk is full."""
    return f"no space left on {where(path)} while writing {what} {path}"


@contextmanager
def full_disk_is_an_error(path: Path, what: str, output_dir: Path, error=OSError):
    """A full disk while writing ``what`` at ``path`` (in the run ``output_dir``) raises ``error``:
    one line naming the device and the run's newest checkpoint, which a failed save leaves as it was."""
    try:
        yield
    except Exception as err:
        if out_of_space(err, Path(path).parent):
            raise error(f"{no_space_error(path, what)}; {resume_advice(output_dir)}") from None
        raise


def resume_advice(output_dir: Path) -> str:
    """How to go on from where a run stopped: its newest checkpoint (a failed one left none behind)."""
    from bico.training.checkpoints import latest_checkpoint

    last = latest_checkpoint(output_dir)
    if last is None:
        return "no checkpoint was written yet: free space, then start the run again with train.overwrite=true"
    return (
        f"the last good checkpoint, {last}, is kept: free space (or copy {output_dir} to a disk with room and "
        "set train.output_dir to the copy), then resume with the same command and train.resume=true"
    )


def weights_advice(output_dir: Path, kept: Path) -> str:
    """After a full disk at the final save: where the trained weights are, and how to get the model."""
    if not kept.is_dir():
        return (
            "no checkpoint could be written either, so the trained weights are lost: free space and train "
            "again (with train.save_every set, the last step's checkpoint is written before the model)"
        )
    return (
        f"the trained weights are kept in the checkpoint {kept}: free space (or copy {output_dir} to a disk with "
        "room and set train.output_dir to the copy), then run the same command with train.resume=true to "
        "finish the run (the model, the summary, the evaluation)"
    )
