"""Files shipped with bico (recipes, DeepSpeed configs, launch scripts): a data folder, not a package.

In a source checkout (and an editable install) it is the root's ``recipes/`` folder; in an
installed wheel, ``bico/recipes/``. Neither has an ``__init__.py``: a root folder that imports as
``recipes`` would shadow a PyPI package of that name whenever the checkout is on ``sys.path``.
Paths such as ``recipes/demo/tiny.yaml`` that users type (and the docs show) are tried as given
first, then inside the package, so they work from any directory once bico is installed.
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "recipes"  # how the docs and users name the shipped folder


_MARKER = ("deepspeed", "zero2.json")  # a file every copy of the folder has


def recipes_dir() -> Path:
    """The shipped recipes folder: the wheel's ``bico/recipes/`` first, then the checkout's."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "recipes", package.parent / "recipes"):
        if candidate.joinpath(*_MARKER).is_file():
            return candidate
    raise RuntimeError(
        f"bico's recipes folder is missing (looked in {package / 'recipes'} and "
        f"{package.parent / 'recipes'}): reinstall bico"
    )


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
