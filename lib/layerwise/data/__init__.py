"""Data sets, offline by design: the ground floor of the library (it imports nothing else of it).

- :mod:`~layerwise.data.datasets`: :func:`digits` (scikit-learn's bundled 8×8 digits, no
  download) and :func:`cifar10` (the standard pickle files; fetched through torchvision when it
  is installed and ``download=True``, on Colab; never in tests).
- :mod:`~layerwise.data.shapes`: seeded anti-aliased shapes (:func:`shape_alpha`,
  :func:`sprite`, :func:`glass`, :func:`sprites`), textured :func:`background` s and effects
  (:func:`drop_shadow`, :func:`reflection`).
- :mod:`~layerwise.data.rgba`: compositing, one home for each operation (:func:`premultiply`,
  :func:`unpremultiply`, :func:`premultiplied_rgb`, :func:`blend`, :func:`alpha_over`,
  :func:`compose`, :func:`checkerboard`).
- :mod:`~layerwise.data.scene`: whole scenes with per-layer kinds, owners, boxes and masks
  (:class:`Scene`, :func:`make_scene`, :func:`scenes`, :func:`stack_scenes`).
- :mod:`~layerwise.data.sprite_sets`: the ready-made sprite sets the zoo models learn
  (:func:`rgba_sprites`, :func:`labelled_sprites`, :func:`primer_sprites`, :func:`sprite_layers`).
- :mod:`~layerwise.data.captions`: captioned scenes for DeViL.
- :mod:`~layerwise.data.degrade`: seeded image degradations (blur, down/up-sampling, noise, salt and
  pepper, colour cast) and DifFace's mild / severe / unseen presets.

Conventions of the synthetic data, everywhere:

- tensors are float32 (pure functions keep their input's floating dtype), channels first,
  values in [0, 1];
- RGBA layers use **straight** (non-premultiplied) alpha: ``rgba[..., :3, :, :]`` is the colour
  and ``rgba[..., 3, :, :]`` the coverage; :func:`premultiply` converts;
- pixel ``(i, j)`` has its centre at ``(y, x) = (i + 0.5, j + 0.5)``, so an ``(H, W)`` canvas
  spans ``[0, H] x [0, W]`` and its centre is ``(H / 2, W / 2)``; centres are given as
  ``(cy, cx)``, angles in radians (counter-clockwise as displayed);
- a shape of radius ``r`` fits inside the disc of radius ``r`` around its centre (the radius
  is the circumradius), whatever its angle;
- randomness comes only from a ``torch.Generator`` argument (or an int ``seed`` that makes
  one), so the same seed gives bit-identical tensors; the work is vectorised with torch over
  the batch, never a Python loop over pixels.
"""

from layerwise.data.datasets import Split, digits, cifar10, cifar10_available
from layerwise.data.shapes import (SHAPES, BACKGROUNDS, shape_alpha, sprite, glass, sprites, background, drop_shadow,
                                    reflection)
from layerwise.data.rgba import (BLEND_MODES, blend, alpha_over, premultiply, unpremultiply, premultiplied_rgb,
                                 compose, checkerboard)
from layerwise.data.scene import Scene, make_scene, scenes, stack_scenes

__all__ = [
    "Split", "digits", "cifar10", "cifar10_available",
    "SHAPES", "BACKGROUNDS", "shape_alpha", "sprite", "glass", "sprites", "background", "drop_shadow", "reflection",
    "BLEND_MODES", "blend", "alpha_over", "premultiply", "unpremultiply", "premultiplied_rgb", "compose",
    "checkerboard",
    "Scene", "make_scene", "scenes", "stack_scenes",
]
