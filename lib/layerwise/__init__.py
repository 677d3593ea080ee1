"""Layerwise: recent deep-learning papers, reimplemented in small PyTorch modules.

One module per paper (``layerwise.msd``, ...) plus shared pieces:
``layerwise.core`` (device, seeding, profiles, training loop, plots, result tables, timing),
``layerwise.data`` (bundled and synthetic data sets) and ``layerwise.grading`` (helpers for the
nbgrader exercises).
"""

__version__ = "0.1.0"
