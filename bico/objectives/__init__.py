"""Training objectives, one file each, registered by name (see :mod:`.registry`)."""
from bico.objectives.base import IGNORE, Example, Objective, Sample
from bico.objectives.registry import REGISTRY, build_objective, objective_options, register

# Importing the modules registers them.
from bico.objectives import ntp as _ntp  # noqa: E402,F401
from bico.objectives import bico as _bico  # noqa: E402,F401

__all__ = ["IGNORE", "Example", "Objective", "Sample", "REGISTRY", "build_objective", "objective_options", "register"]
