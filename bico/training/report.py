"""Seeing a run: TensorBoard and W&B scalars (``train.report_to``) and ``loss.png``.

Only the main process reports: the trainer gives the other ranks a reporter with no backends.
Scalars of each logged step (one ``metrics.jsonl`` record): ``loss``, ``loss/MODE`` (the step's
objective mode, e.g. ``ntp`` and ``denoise`` for BICO's two kinds of step), ``lr``,
``grad_norm`` and ``tokens_per_s`` (since the previous logged step); after the evaluation,
``eval/SPLIT/METRIC`` at the last step (:func:`report_eval`).

TensorBoard (``OUTPUT_DIR/tensorboard/``): a writer cannot append to an event file, so a resumed
run writes a new file beside the old ones, and TensorBoard would show both copies of every step
that the killed process logged after its checkpoint. So on resume the old files are cut back to
the checkpoint's step (as ``metrics.jsonl`` is; the stale ``eval/`` scalars go too; each file is
rewritten atomically), and the new writer begins with TensorBoard's restart marker (``purge_step``)
so that a TensorBoard which had already read the dropped steps forgets them as well.

W&B runs offline unless ``WANDB_MODE`` says otherwise, with its files in ``OUTPUT_DIR/wandb/``;
a resumed run (and the evaluation after training) continues the same W&B run id, kept in
``wandb/bico-run-id``; the eval metrics go to the run's summary.
"""

from __future__ import annotations

import io
import json
import math
import os
import uuid
from pathlib import Path

from bico.io_utils import atomic_write, pyplot, save_figure
from bico.training.rundir import LOSS_PNG, METRICS_LOG, TENSORBOARD, WANDB

EVENT_FILES = "events.out.tfevents.*"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def step_scalars(record: dict, previous: dict) -> dict[str, float]:
    """The scalars of one metrics record; ``previous``: ``tokens`` and ``elapsed_s`` at the record before."""
    values = {
        "loss": record["loss"],
        f"loss/{record['mode']}": record["loss"],
        "lr": record["lr"],
        "grad_norm": record.get("grad_norm"),
    }
    seconds = record["elapsed_s"] - previous["elapsed_s"]
    if seconds > 0:
        values["tokens_per_s"] = (record["tokens"] - previous["tokens"]) / seconds
    return {tag: float(v) for tag, v in values.items() if _number(v)}


def eval_scalars(scores: dict, prefix: str = "eval") -> dict[str, float]:
    """Every number in :func:`bico.evaluation.reversal.evaluate`'s output, as ``eval/SPLIT/METRIC``."""
    out = {}
    for key, value in scores.items():
        name = prefix if (prefix, key) == ("eval", "splits") else f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(eval_scalars(value, name))
        elif _number(value):
            out[name] = float(value)
    return out


# --- backends ------------------------------------------------------------------------------


def _kept(event, step: int) -> bool:
    if event.HasField("file_version"):
        return True
    if event.step > step:
        return False
    return not any(v.tag.startswith("eval/") for v in event.summary.value)


def cut_events(log_dir: Path, step: int) -> None:
    """Drop the events after ``step`` and the ``eval/`` scalars from every event file in ``log_dir``;
    a torn last record (the run was killed while writing it) goes too."""
    # The raw loader: EventFileLoader would hand back the scalars migrated to another form.
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    for path in sorted(log_dir.glob(EVENT_FILES)):
        events = (Event.FromString(raw) for raw in RawEventFileLoader(str(path)).Load())  # stops at a torn record
        kept = [e for e in events if _kept(e, step)]
        if not any(e.HasField("summary") for e in kept):
            path.unlink()
            continue
        buffer = io.BytesIO()
        writer = RecordWriter(buffer)
        for event in kept:
            writer.write(event.SerializeToString())
        if buffer.getvalue() != path.read_bytes():
            atomic_write(path, buffer.getvalue())


class _TensorBoard:
    def __init__(self, folder: Path, recipe, start_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        log_dir = folder / TENSORBOARD
        if start_step is not None and log_dir.is_dir():
            cut_events(log_dir, start_step)
        # The restart marker: TensorBoard drops what it read of steps >= start_step + 1.
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)

    def log(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a watching TensorBoard sees each step at once; a crash loses none

    summary = log

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, folder: Path, recipe, start_step: int | None):
        import wandb

        id_file = folder / WANDB / "bico-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        # Offline unless the user chose otherwise: a run never sends anything by surprise.
        self.run = wandb.init(
            dir=str(folder),
            id=run_id,
            resume="allow",
            mode=os.environ.get("WANDB_MODE", "offline"),
            project=os.environ.get("WANDB_PROJECT", "bico"),
            name=folder.name,
            config=recipe.to_dict(),
        )
        if not id_file.is_file():
            atomic_write(id_file, run_id + "\n")

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict, step: int) -> None:
        self.run.summary.update(values)

    def close(self) -> None:
        self.run.finish()


TRACKERS = {TENSORBOARD: _TensorBoard, WANDB: _Wandb}


def _open(recipe, folder: Path, start_step: int | None) -> list:
    return [TRACKERS[name](folder, recipe, start_step) for name in recipe.train.report_to]


class Reporter:
    """The trainer's: :meth:`log` each metrics record, :meth:`close` when training stops (this
    also writes ``loss.png``). ``start_step``/``counters``: where a resumed run goes on from.
    ``enabled=False`` (ranks other than 0) does nothing."""

    def __init__(
        self, recipe, folder: str | Path, *, start_step: int = 0, counters: dict | None = None, enabled: bool = True
    ):
        self.folder, self.enabled = Path(folder), enabled
        self.previous = dict(counters or {"tokens": 0, "elapsed_s": 0.0})
        self.backends = _open(recipe, self.folder, start_step) if enabled else []

    def log(self, record: dict) -> None:
        values = step_scalars(record, self.previous)
        self.previous = {"tokens": record["tokens"], "elapsed_s": record["elapsed_s"]}
        for backend in self.backends:
            backend.log(values, record["step"])

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []
        if self.enabled:
            plot_loss(self.folder)


def report_eval(recipe, folder: str | Path, scores: dict, step: int) -> None:
    """The evaluation's numbers, at the run's last ``step``, to the backends of ``train.report_to``."""
    values = eval_scalars(scores)
    for backend in _open(recipe, Path(folder), None):
        backend.summary(values, step)
        backend.close()


# --- loss curves -----------------------------------------------------------------------------


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (none if it is missing; a torn line is skipped)."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def loss_series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """``{mode: (steps, losses)}``: one series per objective mode, so that a mixed objective's
    NTP and denoising losses (of different sizes) are not drawn as one zig-zag."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        if _number(r.get("loss")):
            steps, losses = series.setdefault(str(r.get("mode", "loss")), ([], []))
            steps.append(r["step"])
            losses.append(r["loss"])
    return series


def draw_loss(ax, records: list[dict], colors: dict, **style) -> None:
    """One line per mode on ``ax``, coloured by mode (``colors`` grows as modes appear)."""
    for mode, (steps, losses) in loss_series(records).items():
        color = colors.setdefault(mode, f"C{len(colors)}")
        # dots where the points are few: a series of one point (a run logged twice) shows no line
        ax.plot(steps, losses, color=color, **{"marker": "." if len(steps) < 50 else None, **style})


def mode_legend(ax, colors: dict) -> None:
    from matplotlib.lines import Line2D

    ax.legend([Line2D([], [], color=c) for c in colors.values()], list(colors), fontsize=8, title="mode")


def plot_loss(folder: str | Path) -> Path | None:
    """``loss.png`` in ``folder``: training loss per logged step, one series per mode."""
    plt = pyplot()
    folder = Path(folder)
    records = read_metrics(folder / METRICS_LOG)
    if not records:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    colors: dict = {}
    draw_loss(ax, records, colors)
    mode_legend(ax, colors)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (per target token)")
    ax.set_title(f"Training loss: {folder.name}")
    ax.grid(alpha=0.3)
    out = save_figure(fig, folder / LOSS_PNG, dpi=120)
    return out
