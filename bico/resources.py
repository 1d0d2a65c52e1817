"""Files shipped with bico (recipes, DeepSpeed configs, launch scripts): the package ``bico.recipes``.

In a source checkout it is the ``recipes/`` folder; in an installed wheel, ``bico/recipes/``.
Paths such as ``recipes/demo/tiny.yaml`` that users type (and the docs show) are tried as given
first, then inside the package, so they work from any directory once bico is installed.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PREFIX = "recipes"  # how the docs and users name the shipped folder


def recipes_dir() -> Path:
    """The shipped recipes folder (a real folder: bico is installed unzipped)."""
    return Path(str(files("bico.recipes")))


def shipped(*parts: str) -> Path:
    """A shipped file, e.g. ``shipped("deepspeed", "zero2.json")``."""
    return recipes_dir().joinpath(*parts)


def find(path: str | Path) -> Path:
    """``path`` if it exists; else, for a relative ``recipes/...`` path, the shipped file of that
    name if there is one; else ``path`` unchanged (the caller reports it as missing)."""
    path = Path(path)
    if path.exists() or path.is_absolute() or path.parts[:1] != (PREFIX,):
        return path
    candidate = recipes_dir().joinpath(*path.parts[1:])
    return candidate if candidate.exists() else path
