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

# The public API, loaded on first use (importing torch/transformers is slow, and `bico --help`
# must not pay for it): bico.IntervalMask, bico.apply, bico.revert.
_LAZY = {"IntervalMask": "bico.masks", "apply": "bico.attention", "revert": "bico.attention"}
__all__ = ["IntervalMask", "apply", "revert", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bico' has no attribute {name!r}")
