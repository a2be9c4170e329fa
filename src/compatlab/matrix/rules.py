"""Axes and the rules over them: exclude / include matching and PICT-style constraints.

A combination is a tuple of value indices, one per axis. The axes are ``build``, ``hardware``
and either one ``products`` axis (whose values are product sets) or one axis per product slot
(``products.av``, ``products.edr``: each value one product or none).

Rules are evaluated with three-valued logic over *partial* assignments (``{axis: index}``) so the
pairwise generator can reject a partial row as soon as it breaks a constraint: True and False
are certain, None means "depends on axes not yet assigned".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Axis",
    "AxisIn",
    "Clause",
    "Condition",
    "Constraint",
    "ProductsContain",
    "Space",
]

Assignment = Mapping[int, int]
Tri = bool | None
# A whole cell by value: "build", "hardware", "products" (a frozenset) and, with slots,
# "products.<slot>" (a name or None). Used for cells that lie off the axes (includes).
Decoded = Mapping[str, object]


@dataclass(frozen=True)
class Axis:
    """One axis. ``values`` are names (build/hardware), product sets, or slot choices."""

    key: str  # "build", "hardware", "products" or "products.<slot>"
    values: tuple[object, ...]


@dataclass(frozen=True)
class Space:
    """All axes of a matrix, and how to read a combination's product set."""

    axes: tuple[Axis, ...]
    product_mode: Literal["sets", "slots"]

    @property
    def sizes(self) -> list[int]:
        return [len(axis.values) for axis in self.axes]

    def index(self, key: str) -> int:
        for i, axis in enumerate(self.axes):
            if axis.key == key:
                return i
        raise KeyError(key)

    @property
    def product_axes(self) -> list[int]:
        return [i for i, a in enumerate(self.axes) if a.key.startswith("products")]

    def products_of(self, combo: Sequence[int]) -> tuple[str, ...]:
        """The cell's product set, in declared order, without duplicates."""
        out: list[str] = []
        for i in self.product_axes:
            value = self.axes[i].values[combo[i]]
            names = value if isinstance(value, tuple) else (() if value is None else (value,))
            out.extend(n for n in names if isinstance(n, str) and n not in out)
        return tuple(out)

    def decode(self, combo: Sequence[int]) -> tuple[str, str, tuple[str, ...]]:
        build = self.axes[self.index("build")].values[combo[self.index("build")]]
        hardware = self.axes[self.index("hardware")].values[combo[self.index("hardware")]]
        assert isinstance(build, str) and isinstance(hardware, str)
        return build, hardware, self.products_of(combo)


class Condition:
    """A test over some axes; ``evaluate`` is three-valued over partial assignments."""

    def evaluate(self, assignment: Assignment) -> Tri:
        raise NotImplementedError

    def holds(self, cell: Decoded) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class AxisIn(Condition):
    """The value on one axis is one of ``allowed`` (indices) / ``values`` (the same, by value)."""

    axis: int
    allowed: frozenset[int]
    key: str = ""
    values: frozenset[object] = frozenset()

    def evaluate(self, assignment: Assignment) -> Tri:
        value = assignment.get(self.axis)
        return None if value is None else value in self.allowed

    def holds(self, cell: Decoded) -> bool:
        return cell.get(self.key) in self.values


@dataclass(frozen=True)
class ProductsContain(Condition):
    """The cell's product set holds every one of ``names`` (constraints: membership)."""

    space: Space
    names: frozenset[str]

    def evaluate(self, assignment: Assignment) -> Tri:
        result: Tri = True
        for name in self.names:
            present = self._present(name, assignment)
            if present is False:
                return False
            if present is None:
                result = None
        return result

    def holds(self, cell: Decoded) -> bool:
        products = cell.get("products")
        return isinstance(products, frozenset) and self.names <= products

    def _present(self, name: str, assignment: Assignment) -> Tri:
        unknown = False
        for i in self.space.product_axes:
            values = self.space.axes[i].values
            if i not in assignment:
                if any(_holds(v, name) for v in values):
                    unknown = True
                continue
            if _holds(values[assignment[i]], name):
                return True
        return None if unknown else False


def _holds(value: object, name: str) -> bool:
    return name in value if isinstance(value, tuple) else value == name


@dataclass(frozen=True)
class Clause:
    """All conditions hold (three-valued AND). An empty clause always holds."""

    conditions: tuple[Condition, ...]
    line: int = 0

    def holds(self, cell: Decoded) -> bool:
        return all(condition.holds(cell) for condition in self.conditions)

    def evaluate(self, assignment: Assignment) -> Tri:
        result: Tri = True
        for condition in self.conditions:
            value = condition.evaluate(assignment)
            if value is False:
                return False
            if value is None:
                result = None
        return result


@dataclass(frozen=True)
class Constraint:
    """``if`` -> ``then`` holds and ``then_not`` does not; or, for an exclude, ``then_not`` only.

    ``violated`` is True only when certain: the pairwise generator prunes on it.
    """

    when: Clause
    then: Clause | None
    then_not: Clause | None
    line: int = 0

    def broken_by(self, cell: Decoded) -> bool:
        """Whether a whole cell, given by value, breaks this rule."""
        if not self.when.holds(cell):
            return False
        return (self.then is not None and not self.then.holds(cell)) or (
            self.then_not is not None and self.then_not.holds(cell)
        )

    def violated(self, assignment: Assignment) -> Tri:
        cond = self.when.evaluate(assignment)
        if cond is False:
            return False
        broken: Tri = False
        if self.then is not None:
            ok = self.then.evaluate(assignment)
            broken = None if ok is None else not ok
        if self.then_not is not None and broken is not True:
            bad = self.then_not.evaluate(assignment)
            broken = True if bad is True else (None if bad is None or broken is None else False)
        if broken is False:
            return False
        if cond is True and broken is True:
            return True
        return None
