"""Data sets, offline by design.

- :func:`digits`: scikit-learn's bundled 8×8 handwritten digits (no download).
- :func:`cifar10`: CIFAR-10 read from its standard python-pickle files; fetched through
  torchvision when it is installed and ``download=True`` (on Colab), never in tests.
- :mod:`layerwise.data.layers`: seeded synthetic layered RGBA data for the diffusion chapters:
  anti-aliased shapes (:func:`shape_alpha`, :func:`sprite`, :func:`glass`), textured
  :func:`background` s, effects (:func:`drop_shadow`, :func:`reflection`), blending
  (:func:`blend`, :func:`alpha_over`, :func:`compose`, :func:`premultiply`) and whole
  scenes with per-layer boxes and masks (:class:`Scene`, :func:`make_scene`, :func:`scenes`,
  :func:`stack_scenes`, :func:`sprites`).
"""

from layerwise.data.datasets import Split, digits, cifar10, cifar10_available
from layerwise.data.layers import (
    SHAPES, BLEND_MODES, BACKGROUNDS, shape_alpha, sprite, glass, background, drop_shadow, reflection,
    blend, alpha_over, premultiply, unpremultiply, checkerboard, compose, Scene, make_scene, sprites,
    scenes, stack_scenes,
)

__all__ = [
    "Split", "digits", "cifar10", "cifar10_available",
    "SHAPES", "BLEND_MODES", "BACKGROUNDS", "shape_alpha", "sprite", "glass", "background", "drop_shadow",
    "reflection", "blend", "alpha_over", "premultiply", "unpremultiply", "checkerboard", "compose",
    "Scene", "make_scene", "sprites", "scenes", "stack_scenes",
]
