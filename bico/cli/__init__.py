"""Command line: ``bico train|eval|demo|plan|bench|data|ablate``.

One module of this package per command (``bico.cli.train`` ...), each with ``add_parser(subparsers)``
and ``run(args)``; none imports torch when imported, so ``bico --help`` loads no torch.

Errors a user can fix (:class:`~bico.errors.BicoError`: bad arguments, bad recipe keys or values,
malformed data, over-long rows, an output dir in use or holding another run; and an OSError that
names its file) print one line ``bico: error: ...`` (:func:`print_error`, the one place that
prints them) and exit with status 2; Ctrl-C prints ``bico: interrupted`` and exits with 130,
SIGTERM ``bico: terminated`` and 143; a training run stopped by either at a step boundary says
where its checkpoint is (:mod:`bico.termination`). Every other exception is a bug and keeps its traceback. ``BICO_DEBUG=1`` shows tracebacks of all.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from bico.errors import BicoError, UsageError, one_line
from bico.termination import Stopped, Terminated, raise_on_signals

USAGE_ERROR = 2  # exit status of every error a user can fix


def print_error(err: BaseException | str) -> int:
    """The one way bico reports an error a user can fix: ``bico: error: <one line>`` on stderr.
    Returns the exit status, :data:`USAGE_ERROR`."""
    print(f"bico: error: {one_line(err)}", file=sys.stderr)
    return USAGE_ERROR


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in bico's one format: argparse would print the usage and
    ``PROG: error: ...`` on several lines; this raises, and :func:`main` prints one line."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def is_user_error(err: BaseException) -> bool:
    """A :class:`~bico.errors.BicoError`, or an OSError about a file (permissions, a missing file or
    folder: its message names the path). Anything else, a ValueError from inside torch included, is
    a bug to see with its traceback."""
    return isinstance(err, BicoError) or (isinstance(err, OSError) and err.filename is not None)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bico", description=__doc__.splitlines()[0])  # sub-parsers inherit the class
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    # The deepspeed launcher passes --local_rank=N before the command; bico reads $LOCAL_RANK instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    from bico.cli import ablate, bench, data, demo, plan, train
    from bico.cli import eval as eval_command  # `bico eval` (the name would hide the builtin)

    for command in (train, eval_command, demo, plan, bench, data, ablate):  # the order --help lists them
        command.add_parser(sub).set_defaults(handler=command.run)
    return parser


def interrupted() -> int:
    """Report Ctrl-C in one line; the exit status is 130."""
    print("bico: interrupted", file=sys.stderr)
    forget_unhandled_interrupt()
    return 130


def forget_unhandled_interrupt() -> None:
    """CPython (3.11 at least) marks the whole process as killed by Ctrl-C when the KeyboardInterrupt
    starts inside code run by ``exec``/``eval`` of a string (``dataclasses`` does that while torch or
    ``datasets`` import), even when the exception is caught later; ``python -m bico`` then dies with
    SIGINT (status -2) instead of 130. Every string ``exec`` clears that mark as it begins."""
    exec("None")


def main(argv: list[str] | None = None) -> int:
    raise_on_signals()
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        if os.environ.get("BICO_DEBUG"):
            raise
        return interrupted()
    except (Stopped, Terminated) as stop:  # SIGTERM, or Ctrl-C during training
        if os.environ.get("BICO_DEBUG"):
            raise
        print(f"bico: {stop}" if isinstance(stop, Stopped) else "bico: terminated", file=sys.stderr)
        return stop.exit_status
    except Exception as err:
        if os.environ.get("BICO_DEBUG") or not is_user_error(err):
            raise
        return print_error(err)


if __name__ == "__main__":
    sys.exit(main())
