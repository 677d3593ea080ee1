"""Data sets, offline by design.

- :func:`digits`: scikit-learn's bundled 8×8 handwritten digits (no download).
- :func:`cifar10`: CIFAR-10 read from its standard python-pickle files; fetched through
  torchvision when it is installed and ``download=True`` (on Colab), never in tests.
"""

from layerwise.data.datasets import Split, digits, cifar10, cifar10_available

__all__ = ["Split", "digits", "cifar10", "cifar10_available"]
