"""Training objectives, one file each, registered by name (see :mod:`.registry`)."""

from bico.objectives import anneal as _anneal  # noqa: E402,F401
from bico.objectives import bd3lm as _bd3lm  # noqa: E402,F401
from bico.objectives import bico as _bico  # noqa: E402,F401
from bico.objectives import fim as _fim  # noqa: E402,F401
from bico.objectives import glm as _glm  # noqa: E402,F401
from bico.objectives import masked_ar as _masked_ar  # noqa: E402,F401
from bico.objectives import mix as _mix  # noqa: E402,F401
from bico.objectives import mlm_u as _mlm_u  # noqa: E402,F401
from bico.objectives import mntp as _mntp  # noqa: E402,F401

# Importing the modules registers them.
from bico.objectives import ntp as _ntp  # noqa: E402,F401
from bico.objectives import permute as _permute  # noqa: E402,F401
from bico.objectives import prefix_lm as _prefix_lm  # noqa: E402,F401
from bico.objectives import reverse as _reverse  # noqa: E402,F401
from bico.objectives.base import IGNORE, Example, Objective, Sample
from bico.objectives.registry import REGISTRY, ObjectiveError, build_objective, objective_options, register

__all__ = [
    "IGNORE",
    "Example",
    "Objective",
    "ObjectiveError",
    "Sample",
    "REGISTRY",
    "build_objective",
    "objective_options",
    "register",
]
