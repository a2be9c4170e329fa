"""A matrix's ``fleet:`` block: the share of the fleet each build, hardware profile and product
set has, read with positions, and each cell's share (:class:`compatlab.fleet.Fleet`).

Two forms::

    fleet:
      build: {win11-23h2: 60, win10-22h2: 40}
      hardware: {uefi-sb-tpm-4cpu: 70, bios-2cpu: 30}
      products: {defender: 50, "defender+sentinel-edr": 20, sentinel-edr: 10, none: 20}

    fleet: ../configs/fleet.yaml        # the same mapping in a file, relative to the matrix

Weights are numbers >= 0 (counts of endpoints, percentages: only ratios matter), normalised per
axis. A product set is written as a cell id writes it (``a+b``, in any order; ``none`` for no
products), whether the matrix's products are sets or slots: a cell's share is its whole set's.

Every value a cell of the matrix has must be weighed: a value left out is an error at its axis
in the block, not a share of 0, because a failing cell that silently weighs nothing would read as
harmless. Write ``0`` for a configuration no endpoint runs. Values the matrix does not test may be
weighed, and should: they count in the axis's sum, so shares are shares of the whole fleet.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from compatlab import files
from compatlab._yaml import Node, load
from compatlab.errors import InputError, MatrixError
from compatlab.fleet import Fleet, product_set_name
from compatlab.matrix.model import Cell

__all__ = ["FleetBlock", "read_fleet"]

_AXES = ("build", "hardware", "products")


@dataclass(frozen=True)
class FleetBlock:
    """A validated ``fleet:`` block: the fleet, and where each axis was written."""

    fleet: Fleet
    nodes: dict[str, Node]  # each axis's mapping, for errors about values it lacks

    def apply(self, cells: Sequence[Cell]) -> tuple[Cell, ...]:
        """``cells`` with their ``fleet_share`` set; an unweighed value is an error."""
        out = []
        for cell in cells:
            names = cell.product_names
            missing = self.fleet.missing(cell.build, cell.hardware.name, names)
            if missing:
                axis, value = missing[0]
                raise self.nodes[axis].error(
                    f"fleet {axis} has no weight for '{value}' (cell {cell.id})",
                    _hint(axis, value, self.fleet, cells),
                )
            share = self.fleet.share(cell.build, cell.hardware.name, names)
            out.append(replace(cell, fleet_share=share))
        return tuple(out)


def _hint(axis: str, value: str, fleet: Fleet, cells: Sequence[Cell]) -> str:
    """What to do about an unweighed value; names a weighed value no cell has, if it is close
    (``lin-bb: 50`` beside a matrix that tests ``lin-b`` is a typo, ``lin-a`` is not)."""
    if axis == "build":
        weighed, tested = set(fleet.build), {c.build for c in cells}
    elif axis == "hardware":
        weighed, tested = set(fleet.hardware), {c.hardware.name for c in cells}
    else:
        weighed = {product_set_name(sorted(k)) for k in fleet.products}
        tested = {product_set_name(sorted(c.product_names)) for c in cells}
    hint = "weigh every value the matrix tests; 0 if no endpoint runs it"
    # Closer than did_you_mean's: weighed values the matrix does not test are normal here.
    close = difflib.get_close_matches(value, sorted(weighed - tested), n=1, cutoff=0.8)
    return f"{hint}; did you mean '{close[0]}'?" if close else hint


def read_fleet(node: Node, base: Path) -> FleetBlock:
    """The ``fleet`` value: a mapping of axes, or the path of a file holding one."""
    if not node.is_mapping():
        node = _file(node, base)
    axes = node.mapping("fleet", required=_AXES)
    build = _weights(axes["build"], "build")
    hardware = _weights(axes["hardware"], "hardware")
    products: dict[frozenset[str], float] = {}
    written: dict[frozenset[str], str] = {}
    for name, (weight, where) in _entries(axes["products"], "products").items():
        product_set = _product_set(name, where)
        if product_set in products:
            raise where.error(
                f"product set '{name}' is weighed twice (also as '{written[product_set]}')",
                "a product set is the same in any order",
            )
        products[product_set] = weight
        written[product_set] = name
    for axis, values in (("build", build), ("hardware", hardware), ("products", products)):
        if not any(values.values()):
            raise axes[axis].error(
                f"fleet {axis} weights add up to 0", "give at least one value a weight above 0"
            )
    return FleetBlock(Fleet.from_weights(build, hardware, products), axes)


def _file(node: Node, base: Path) -> Node:
    """The root of the fleet file ``node`` names (relative to the matrix's folder)."""
    try:
        path = files.resolve(base / node.text("fleet"), MatrixError)
        files.check_kind(path, ("file",), "fleet file", MatrixError)
    except InputError as exc:
        raise node.error(
            exc.message, "fleet is a mapping of build, hardware and products, or a file of one"
        ) from exc
    root = load(path, MatrixError)
    if not root.is_mapping():
        raise root.error("a fleet file must be a mapping of build, hardware and products")
    return root


def _entries(node: Node, axis: str) -> dict[str, tuple[float, Node]]:
    """Each ``name: weight`` of an axis, with the weight's node (errors point at its line)."""
    entries = node.mapping(f"fleet {axis}", optional=None)
    if not entries:
        raise node.error(f"fleet {axis} must weigh at least one value")
    return {
        name: (value.number(f"weight of '{name}'", minimum=0), value)
        for name, value in entries.items()
    }


def _weights(node: Node, axis: str) -> dict[str, float]:
    return {name: weight for name, (weight, _where) in _entries(node, axis).items()}


def _product_set(name: str, where: Node) -> frozenset[str]:
    """``a+b`` (or ``none``) as a set; an empty name or a product twice is an error."""
    if name.strip() == "none":
        return frozenset()
    names = [part.strip() for part in name.split("+")]
    if any(not part for part in names):
        raise where.error(f"product set '{name}' has an empty name", "write a+b, or none")
    if len(set(names)) != len(names):
        raise where.error(f"product set '{name}' names a product twice")
    return frozenset(names)
