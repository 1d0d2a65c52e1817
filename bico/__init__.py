"""bico: bidirectional and blank-infilling finetuning of Llama-style causal LMs.

Importing the package imports no torch and registers nothing, however the process was started
(a script, ``python -m bico``, the ``bico`` command, a test). :func:`register` adds the ``"bico"``
attention to transformers, once however often it is called; :func:`apply` and model loading
(:func:`bico.models.load_model`, through which every ``bico`` command that builds a model goes) call
it, so a user calls it only before ``from_pretrained(..., attn_implementation="bico")``.
"""

__version__ = "0.1.0"

# The public API, loaded on first use (importing torch/transformers is slow, and `bico --help`
# must not pay for it): bico.IntervalMask, bico.apply, bico.revert, bico.register.
_LAZY = {
    "IntervalMask": "bico.masks",
    "apply": "bico.attention",
    "revert": "bico.attention",
    "register": "bico.attention",
}
__all__ = ["IntervalMask", "apply", "revert", "register", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bico' has no attribute {name!r}")
