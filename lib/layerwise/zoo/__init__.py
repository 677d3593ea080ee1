"""Model zoo: checkpoint-or-train small models the diffusion chapters start from.

Each model is a registered :class:`Recipe` (how to build it, how to train it, how to check
it still does its job). ``load(name)`` returns the committed weights
(``zoo/weights/<name>.safetensors``) when present and intact, else trains the model with its
recipe. ``make zoo`` (``python -m layerwise.zoo train --all``) retrains every model from
scratch, seeded, and rewrites ``zoo/manifest.json``: config, seed, steps, final metric,
wall time, sha256 and the command that made each file.
"""

from layerwise.zoo.registry import (MANIFEST, REGISTRY, WEIGHTS, Recipe, build, check, load, manifest,
                                    register, sha256, train, verify)
from layerwise.zoo import recipes as _recipes  # noqa: F401  (registers the shared models)

__all__ = ["Recipe", "REGISTRY", "register", "build", "load", "train", "check", "verify", "manifest",
           "sha256", "MANIFEST", "WEIGHTS"]
from layerwise.zoo import layer_diffusion_recipes as _ld  # noqa: E402,F401  (chapter 11's models)
from layerwise.zoo import devil_recipes as _devil  # noqa: E402,F401  (chapter 10's models)
