"""bico: bidirectional and blank-infilling finetuning of Llama-style causal LMs.

Importing the package registers the ``"bico"`` attention implementation with transformers.
The ``bico`` command itself (console script or ``python -m bico``) skips that: it registers the
attention when it loads a model (:mod:`bico.models`), so that ``bico --help`` starts without
importing torch and a Ctrl-C while torch loads is handled by the command like any other.
"""
import sys
from pathlib import PurePath

__version__ = "0.1.0"


def _is_bico_command() -> bool:
    argv = getattr(sys, "orig_argv", sys.argv)
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1] == "bico"
    return bool(sys.argv) and PurePath(sys.argv[0]).name == "bico"


if not _is_bico_command():
    from bico.attention import register as _register_attention

    _register_attention()
