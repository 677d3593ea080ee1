"""Model zoo: checkpoint-or-train small models the diffusion chapters start from.

Each model is a registered :class:`Recipe` (how to build it, how to train it, how to check
it still does its job). ``load(name)`` returns the committed weights
(``zoo/weights/<name>.safetensors``) when present and intact, else trains the model with its
recipe. ``make zoo`` (``python -m layerwise.zoo train --all``) retrains every model from
scratch, seeded, and rewrites ``zoo/manifest.json``: config, seed, steps, final metric,
wall time, sha256 and the command that made each file.

The recipes live in :mod:`layerwise.zoo.recipes`, one module per chapter; every module there is
imported (and so registered) when this package loads. Chapters use this package's functions
(``load``, ``train``, ``manifest``), never a recipe module.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from layerwise.zoo.registry import (MANIFEST, REGISTRY, WEIGHTS, Recipe, build, check, load, manifest,
                                    register, sha256, train, verify)
from layerwise.zoo import recipes as _recipes

__all__ = ["Recipe", "REGISTRY", "register", "build", "load", "train", "check", "verify", "manifest",
           "sha256", "MANIFEST", "WEIGHTS", "recipe_modules"]


def recipe_modules() -> list[str]:
    """The recipe modules found in :mod:`layerwise.zoo.recipes` (each registers its models on import)."""
    return sorted(m.name for m in _pkgutil.iter_modules(_recipes.__path__) if not m.name.startswith("_"))


for _name in recipe_modules():
    _importlib.import_module(f"{_recipes.__name__}.{_name}")
