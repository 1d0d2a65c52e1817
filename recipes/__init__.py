"""bico's shipped recipes, DeepSpeed configs and launch scripts, installed as ``bico.recipes``.

Data only: find them with :mod:`bico.resources` (``importlib.resources``), which works from a
source checkout and from an installed wheel alike.
"""
