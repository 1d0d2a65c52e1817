"""Objectives by name. ``build_objective("bico", tokenizer, {"mask_ratio": 0.2})``."""

from __future__ import annotations

import inspect

from bico.errors import BicoError

REGISTRY: dict[str, type] = {}


class ObjectiveError(BicoError, ValueError):
    """An objective or one of its options cannot be used as given; the message names it."""


def register(name: str):
    def wrap(cls):
        if name in REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def objective_options(name: str) -> list[str]:
    params = inspect.signature(REGISTRY[name].__init__).parameters
    return [p for p in params if p not in ("self", "tokenizer")]


def build_objective(name: str, tokenizer, options: dict | None = None):
    """Instantiate an objective; unknown names or options are one-line errors."""
    if name not in REGISTRY:
        raise ObjectiveError(f"unknown objective {name!r}; available: {', '.join(sorted(REGISTRY))}")
    options = dict(options or {})
    allowed = objective_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ObjectiveError(
            f"objective {name!r} has no option(s) {', '.join(unknown)}; its options: {', '.join(allowed) or 'none'}"
        )
    return REGISTRY[name](tokenizer, **options)
