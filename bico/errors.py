"""The family of errors a user can fix: every one is a :class:`BicoError`.

``bico``'s command line prints a ``BicoError`` as one line ``bico: error: <message>`` and exits
with status 2 (:mod:`bico.cli`); any other exception is a bug and keeps its traceback. So the
message of a ``BicoError`` says what is wrong and how to fix it, on one line. Each module defines
the errors it raises (``RecipeError`` in :mod:`bico.config`, ``DataError`` in :mod:`bico.data`,
...); the ones raised by several modules live here. Imports nothing (no torch): the CLI needs it
before anything heavy loads.
"""

from __future__ import annotations


class BicoError(Exception):
    """An error the user can fix; its message says what is wrong and what to do."""


class UsageError(BicoError, ValueError):
    """Bad command-line arguments (argparse's own checks, and the commands' own)."""


class TrainingError(BicoError, RuntimeError):
    """Training cannot go on; the message says why and what to change."""


def one_line(err: BaseException | str) -> str:
    """An error's message on one line, whole: a message spread over lines is joined, not cut."""
    return " ".join(str(err).split()) or type(err).__name__
