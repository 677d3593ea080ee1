"""The zoo's recipes, one module per chapter that needs trained models.

Every module in this package is imported by :mod:`layerwise.zoo` when it loads (discovered, not
listed), and registers its models with :func:`layerwise.zoo.registry.register`. A new paper
adds one file here; nothing else needs wiring. Recipe modules hold recipes only: configs,
``build``/``fit``/``evaluate`` functions and their registration. The method lives in the paper's
module and the data in :mod:`layerwise.data`; recipes import both, never the other way round.
"""
