"""Signals that end a run: SIGTERM (what SLURM, Kubernetes, ``docker stop`` and ``timeout`` send)
and SIGINT (Ctrl-C).

* Outside the training loop SIGTERM raises :class:`Terminated`, as Ctrl-C raises
  ``KeyboardInterrupt``: a start-up is undone (no new run folder is left behind), a save in
  progress is dropped (saves are renamed into place), and ``bico`` says ``bico: terminated``,
  exit 143 (128 + 15). A SIGTERM that comes while that clean-up runs is ignored; one (or a
  Ctrl-C) that comes while a module is being imported waits until the import is done.
* In the training loop (:class:`StopRequest`, armed from the first step on) either signal only
  asks the loop to stop: it finishes the optimizer step, writes a checkpoint of it and raises
  :class:`Stopped` (exit 128 + the signal: 143, or 130 for Ctrl-C). A second Ctrl-C stops at
  once (``KeyboardInterrupt``: the steps since the last checkpoint are lost); a second SIGTERM is
  ignored, since schedulers send it more than once and follow with SIGKILL when they lose
  patience. No signal interrupts a checkpoint being written. A signal that comes after the
  last step waits until the model and the summary are written, then acts as outside the loop.
* A signal a parent set to be ignored (``nohup``, a background job's SIGINT) stays ignored.
* Worker processes (``bico ablate --workers/--devices``) :func:`end_with_parent`: they get a
  SIGTERM when their parent dies, even by SIGKILL, and stop as above.

Only the main thread can handle signals; elsewhere nothing here changes what they do.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM outside the training loop. Like ``KeyboardInterrupt`` a ``BaseException``:
    ``except Exception`` (a failed ablation cell, a fallback) does not swallow it."""

    signum = signal.SIGTERM
    exit_status = 128 + signal.SIGTERM


class Stopped(BaseException):
    """Training stopped on a signal at a step boundary, after writing a checkpoint of that step."""

    def __init__(self, signum: int, step: int, total: int, checkpoint: Path):
        super().__init__(signum, step, total, checkpoint)
        self.signum, self.step, self.total, self.checkpoint = signum, step, total, Path(checkpoint)
        self.exit_status = 128 + signum
        self.hint = "resume with the same command and train.resume=true"  # how to go on (bico ablate: its own)

    def __str__(self) -> str:
        return (
            f"stopped by {signal.Signals(self.signum).name} after step {self.step} of {self.total}; "
            f"checkpoint {self.checkpoint}; {self.hint}"
        )


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


IMPORT_WAIT_S = 0.05


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _later(signum: int) -> None:
    """Deliver ``signum`` again shortly: an exception in the middle of an import leaves modules
    half-made, and libraries that import them again fail strangely (numpy: "cannot load module
    more than once per process", transformers: "Could not import module ...")."""
    timer = threading.Timer(IMPORT_WAIT_S, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


def _raise_terminated(signum, frame):
    if _importing(frame):
        return _later(signum)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: a second must not break the clean-up
    raise Terminated()


def _raise_interrupt(signum, frame):
    if _importing(frame):
        return _later(signum)
    raise KeyboardInterrupt


def raise_on_signals() -> None:
    """From now on SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt`` (unless
    ignored), both once no import is under way; ``bico`` calls it first."""
    if not _main_thread():
        return
    for signum, handler in ((signal.SIGTERM, _raise_terminated), (signal.SIGINT, _raise_interrupt)):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)


class StopRequest:
    """``with StopRequest() as stop:`` around a training run; :meth:`arm` when its first step
    begins. From then on SIGINT and SIGTERM set :attr:`signum` (see the module doc); the loop
    asks :meth:`requested` at each step boundary and raises :meth:`stopped`. On exit the
    previous handlers return, and a signal the loop did not act on is raised again under them."""

    def __init__(self):
        self.signum: int | None = None
        self.consumed = False
        self._saving = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        return self

    def arm(self) -> None:
        if not _main_thread():
            return
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            if previous is not signal.SIG_IGN:
                self._previous[signum] = signal.SIG_DFL if previous is None else previous
                signal.signal(signum, self._handle)

    def __exit__(self, kind, error, trace) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self.signum is not None and not self.consumed and kind is None:
            signal.raise_signal(self.signum)  # came after the last step: act on it now

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            logger.info("%s: stopping after this step", signal.Signals(signum).name)
        elif signum == signal.SIGINT and not self._saving:
            raise KeyboardInterrupt

    def requested(self, any_rank=None) -> bool:
        """Whether to stop at this step boundary. ``any_rank(flag)``: with several ranks, whether
        any rank's flag is set (every rank must stop at the same step: checkpoints are collective);
        the training layer passes it, this module knows nothing of ranks."""
        flag = self.signum is not None
        return any_rank(flag) if any_rank is not None else flag

    @contextmanager
    def saving(self):
        """While a checkpoint is written, a second Ctrl-C waits (the stop in progress is kept)."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def stopped(self, step: int, total: int, checkpoint: Path) -> Stopped:
        self.consumed = True
        return Stopped(self.signum or signal.SIGTERM, step, total, checkpoint)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 1.0


def end_with_parent(parent_pid: int) -> None:
    """In a worker process started by ``parent_pid``: SIGTERM to this process when the parent dies
    (a killed parent would leave it training on, its results unread). Linux: the kernel sends it
    (``PR_SET_PDEATHSIG``); elsewhere a thread watches ``os.getppid()`` every second."""
    if sys.platform.startswith("linux"):
        try:
            if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # it died before prctl took effect
                    os.kill(os.getpid(), signal.SIGTERM)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="bico-parent-watch").start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
