"""Benchmarks: ``python -m layerwise.bench [--quick] [name ...]`` (or ``make bench``).

Each module here (one per paper that makes a speed claim) defines
``run(quick: bool) -> list[Ratio]``; every ratio is measured side by side in the same run with
:func:`layerwise.core.compare_times`, so it compares like with like on whatever machine runs it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass


@dataclass
class Ratio:
    """``numerator`` seconds over ``denominator`` seconds, both medians of interleaved runs."""

    name: str
    numerator: str
    denominator: str
    seconds_num: float
    seconds_den: float

    @property
    def ratio(self) -> float:
        return self.seconds_num / self.seconds_den

    def line(self) -> str:
        return (f"{self.name}: {self.numerator} / {self.denominator} = {self.ratio:.2f}x "
                f"({self.seconds_num * 1e3:.3f} ms vs {self.seconds_den * 1e3:.3f} ms)")


def available() -> list[str]:
    """Names of the benchmark modules in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def run(names: list[str] | None = None, quick: bool = False) -> dict[str, list[Ratio]]:
    """Run the named benchmarks (default: all) and return their ratios."""
    names = names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; available: {available()}")
    return {n: importlib.import_module(f"{__name__}.{n}").run(quick=quick) for n in names}
