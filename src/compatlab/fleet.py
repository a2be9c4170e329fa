"""The fleet: what share of the endpoints out there runs each configuration a matrix tests.

A matrix may weigh each build, hardware profile and product set (``fleet:`` in the matrix file,
read by :mod:`compatlab.matrix.fleet`), so that "3 red cells" reads "about 22% of the fleet".

The model is **independent axes**: the share of a configuration is the product of its build's,
its hardware profile's and its product set's share, each weight divided by the sum of its axis's
weights. It is the simplest model the inventory can feed (three lists of counts rather than a
table of every combination), and it is wrong where the axes are correlated -- if the EDR product
runs mostly on the newest build, a cell pairing the two stands for more than the product says.
Weights may name values the matrix does not test: they still count in the sum, so a cell's share
is its share of the whole fleet, not of the part the matrix covers.

A cell stands for its own configuration only. A pairwise matrix tests a sample of the
combinations, so the sum over failing cells (:func:`share_of`) is "the share of the fleet running
a configuration that failed here": a lower bound, as far as the lab can tell, on what the
failure reaches. It says nothing about combinations that were not tested: if the update crashes
wherever other-edr runs, the untested other-edr combinations fail too and are not in the sum.

Pure: no files, no YAML. Shares are floats in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "Configuration",
    "Fleet",
    "FleetTotal",
    "configuration",
    "describe_share",
    "normalise",
    "product_set_name",
    "share_of",
]

_K = TypeVar("_K", bound=Hashable)

# A configuration by value: build, hardware profile, product set (order does not matter).
Configuration = tuple[str, str, frozenset[str]]


def configuration(build: str, hardware: str, products: Iterable[str]) -> Configuration:
    """The key two cells share when they test the same configuration."""
    return (build, hardware, frozenset(products))


def product_set_name(products: Iterable[str]) -> str:
    """A product set as the fleet block and cell ids write it: ``a+b``, or ``none``."""
    names = list(products)
    return "+".join(names) if names else "none"


def normalise(weights: Mapping[_K, float]) -> dict[_K, float]:
    """Each weight divided by their sum: shares that add up to 1.

    Weights are counts of endpoints, percentages or fractions: only their ratios matter.
    ValueError if one is negative or not finite, or if they add up to nothing.
    """
    for key, weight in weights.items():
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight of {key!r} must be a finite number >= 0, not {weight}")
    total = math.fsum(weights.values())
    if total <= 0:
        raise ValueError("the weights add up to 0: no share of the fleet can be told")
    return {key: weight / total for key, weight in weights.items()}


@dataclass(frozen=True)
class Fleet:
    """Each axis value's share of the fleet (each axis adds up to 1; see the module docstring).

    Build with :meth:`from_weights`, which normalises raw weights.
    """

    build: Mapping[str, float]
    hardware: Mapping[str, float]
    products: Mapping[frozenset[str], float]

    @classmethod
    def from_weights(
        cls,
        build: Mapping[str, float],
        hardware: Mapping[str, float],
        products: Mapping[frozenset[str], float],
    ) -> Fleet:
        """A fleet from raw weights per axis; ValueError as :func:`normalise` raises it."""
        return cls(normalise(build), normalise(hardware), normalise(products))

    def missing(self, build: str, hardware: str, products: Iterable[str]) -> list[tuple[str, str]]:
        """``(axis, value)`` of each value of this configuration that has no weight."""
        out = []
        if build not in self.build:
            out.append(("build", build))
        if hardware not in self.hardware:
            out.append(("hardware", hardware))
        names = tuple(products)
        if frozenset(names) not in self.products:
            out.append(("products", product_set_name(names)))
        return out

    def share(self, build: str, hardware: str, products: Iterable[str]) -> float:
        """The configuration's share of the fleet. KeyError if a value has no weight."""
        return self.build[build] * self.hardware[hardware] * self.products[frozenset(products)]


@dataclass(frozen=True)
class FleetTotal:
    """The share of the fleet a set of cells stands for.

    ``unknown`` counts cells without a share (their matrix has no ``fleet:`` block): when it is
    not 0, ``share`` is a lower bound.
    """

    share: float
    cells: int
    unknown: int = 0

    @property
    def known(self) -> bool:
        """True when at least one cell had a share, so ``share`` means something."""
        return self.cells > self.unknown

    def describe(self) -> str:
        """``about 22% of the fleet``; says so when some or all cells have no share."""
        if not self.cells:
            return "no cell"
        if not self.known:
            return "share of the fleet not known (no fleet weights)"
        text = describe_share(self.share)
        if self.unknown:
            text += f", not counting {self.unknown} cell{'s' if self.unknown != 1 else ''} "
            text += "without fleet weights"
        return text


def share_of(cells: Iterable[tuple[Configuration, float | None]]) -> FleetTotal:
    """The share of the fleet that ``(configuration, share)`` pairs stand for.

    A configuration tested twice (two matrix files of one run) counts once, so the share never
    passes 1; its first share is the one kept.
    """
    seen: dict[Configuration, float | None] = {}
    for config, share in cells:
        seen.setdefault(config, share)
    known = [share for share in seen.values() if share is not None]
    total = min(1.0, math.fsum(known))  # rounding can overshoot 1 by an ulp
    return FleetTotal(total, len(seen), len(seen) - len(known))


def describe_share(share: float) -> str:
    """A share as a release manager reads it: ``about 22% of the fleet``.

    Rounded to whole percents from 1% up, to one significant digit below; never "0%" for a
    share that is not 0, and never "100%" for one that is not all.
    """
    if not math.isfinite(share) or share < 0:
        return "an unknown share of the fleet"
    percent = share * 100
    if percent == 0:
        return "none of the fleet"
    if share >= 1:
        return "all of the fleet"
    if percent < 0.1:
        return "less than 0.1% of the fleet"
    if percent < 1:
        return f"about {percent:.1g}% of the fleet"
    if percent > 99:
        return f"about {min(percent, 99.9):.1f}% of the fleet"
    return f"about {percent:.0f}% of the fleet"
