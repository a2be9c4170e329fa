"""From a validated matrix's axes to its cells, in the order the loader calls these.

:mod:`compatlab.matrix.load` reads and checks every section of the file, then drives this module:
:func:`combinations` picks the value indices the strategy asks for (:func:`combination_of` maps a
cell named by value back to them, to seed a pairwise array), :func:`rows_of` names their values,
:func:`apply_include` adds ``include`` entries (GitHub Actions semantics: settings on every
matching row, else a new row, which must keep the constraints), :func:`check_unique` refuses two
rows that are one cell (two slots naming one product), and :class:`CellMaker` turns each
row into a :class:`~compatlab.matrix.model.Cell`, checking what only a whole cell can break:
firmware, what this lab can run (:func:`compatlab.catalog.check_supported`), the candidate's OS
families, product payloads. Errors blame the axis value or include entry. This runs once per
cell: lookups are precomputed, and each check runs once per pair.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from compatlab._yaml import Node
from compatlab.catalog import Catalog, OsFamily, Product, ProfileNotSupported, check_supported
from compatlab.errors import InputError
from compatlab.matrix.model import Candidate, Cell, ScenarioSettings, Strategy, cell_id
from compatlab.matrix.rules import Constraint, Space

__all__ = [
    "CellMaker",
    "Include",
    "Row",
    "apply_include",
    "check_unique",
    "combination_of",
    "combinations",
    "rows_of",
]


@dataclass(slots=True)
class Row:
    """A cell while includes are applied: its combination (if generated) and its settings."""

    build: str
    hardware: str
    products: tuple[str, ...]
    slots: dict[str, str | None] | None
    overrides: dict[str, Any] = field(default_factory=dict)  # scenario settings, validated
    origin: Node | None = None  # the include entry that created it, for error positions
    override_nodes: dict[str, Node] = field(default_factory=dict)  # where each override is


@dataclass(frozen=True, slots=True)
class Include:
    """A validated ``include`` entry: the values it matches and the scenario settings it adds.

    ``products`` is set on a matrix of product sets, ``slots`` on a matrix of slots; both are
    ``None`` when the entry names no products.
    """

    node: Node
    entry: dict[str, Node]  # the entry's keys, for error positions
    build: str | None
    hardware: str | None
    products: tuple[str, ...] | None
    slots: dict[str, str | None] | None
    overrides: dict[str, Any]
    override_nodes: dict[str, Node] = field(default_factory=dict)


def combinations(
    space: Space,
    strategy: Strategy,
    rules: Sequence[Constraint],
    seeds: Sequence[Sequence[int | None]],
) -> list[tuple[int, ...]]:
    """The strategy's combinations of value indices, one per axis, that break no rule.

    ``full`` is the cartesian product; ``pairwise`` is a covering array that starts with
    ``seeds`` (ValueError if they cannot start it).
    """

    def allowed(assignment: Mapping[int, int]) -> bool:
        return not any(rule.violated(assignment) is True for rule in rules)

    if strategy.kind == "full":
        return (
            [c for c in itertools.product(*map(range, space.sizes)) if allowed(dict(enumerate(c)))]
            if rules
            else list(itertools.product(*map(range, space.sizes)))
        )
    from compatlab.matrix.pairwise import covering_array

    return covering_array(space.sizes, strategy.strength, strategy.seed, allowed, seeds)


def rows_of(space: Space, combos: Sequence[Sequence[int]]) -> list[Row]:
    """Combinations -> rows, by value. Lookups are precomputed: this runs once per cell."""
    builds = space.axes[space.index("build")].values
    hardware = space.axes[space.index("hardware")].values
    b, h = space.index("build"), space.index("hardware")
    product_axes = space.product_axes
    slot_names = [space.axes[i].key.partition(".")[2] for i in product_axes]
    products_cache: dict[tuple[int, ...], tuple[str, ...]] = {}
    rows = []
    for combo in combos:
        key = tuple(combo[i] for i in product_axes)
        products = products_cache.get(key)
        if products is None:
            products = products_cache[key] = space.products_of(combo)
        slots = None
        if space.product_mode == "slots":
            slots = {
                name: cast(str | None, space.axes[i].values[combo[i]])
                for name, i in zip(slot_names, product_axes, strict=True)
            }
        rows.append(
            Row(cast(str, builds[combo[b]]), cast(str, hardware[combo[h]]), products, slots)
        )
    return rows


def combination_of(
    space: Space, build: str, hardware: str, products: tuple[str, ...]
) -> list[int | None] | None:
    """The value indices of a cell named by value, or None if a value is no longer on the axes."""
    row: list[int | None] = []
    for axis in space.axes:
        if axis.key == "build":
            value: object = build
        elif axis.key == "hardware":
            value = hardware
        elif axis.key == "products":
            value = next(
                (v for v in axis.values if set(cast(tuple[str, ...], v)) == set(products)), "\0"
            )
        else:
            present = [v for v in axis.values if v in products]
            value = present[0] if len(present) == 1 else (None if not present else "\0")
        if value not in axis.values:
            return None
        row.append(axis.values.index(value))
    if space.product_mode == "slots" and set(space.products_of(cast(list[int], row))) != set(
        products
    ):
        return None
    return row


def apply_include(
    include: Include, rows: list[Row], space: Space, constraints: Sequence[Constraint]
) -> None:
    """Add the include's settings to every row it matches, or append the row it names."""
    want_set = frozenset(include.products) if include.products is not None else None
    want_slots = include.slots
    matched = False
    for row in rows:
        if include.build is not None and row.build != include.build:
            continue
        if include.hardware is not None and row.hardware != include.hardware:
            continue
        if want_set is not None and frozenset(row.products) != want_set:
            continue
        if want_slots is not None and any(
            (row.slots or {}).get(k) != v for k, v in want_slots.items()
        ):
            continue
        row.overrides.update(include.overrides)
        row.override_nodes.update(include.override_nodes)
        matched = True
    if matched:
        return
    node, entry = include.node, include.entry
    missing = [k for k in ("build", "hardware", "products") if k not in entry]
    if missing:
        raise node.error(
            f"include entry matches no cell, so it adds one, but it does not name "
            f"{' and '.join(missing)}"
        )
    assert include.build is not None and include.hardware is not None
    if want_slots is not None:
        slot_names = [a.key.split(".", 1)[1] for a in space.axes if "." in a.key]
        absent = [s for s in slot_names if s not in want_slots]
        if absent:
            raise entry["products"].error(f"a new cell needs every slot; missing: {absent}")
        products = tuple(dict.fromkeys(v for s in slot_names if (v := want_slots[s])))
    else:
        assert include.products is not None
        products = include.products
    new = Row(
        include.build,
        include.hardware,
        products,
        want_slots,
        dict(include.overrides),
        node,
        dict(include.override_nodes),
    )
    # Constraints are absolute, excludes are not (an include may bring an excluded cell back).
    broken = next((c for c in constraints if c.broken_by(_decoded(new))), None)
    if broken is not None:
        raise node.error(
            f"include entry adds a cell that breaks the constraint at line {broken.line}"
        )
    rows.append(new)


def check_unique(rows: Sequence[Row], space: Space, value_nodes: list[list[Node]]) -> None:
    """Refuse two rows that are the same cell, naming where each came from.

    Slots that both offer a product make the same product set twice (``av: [x, none]``,
    ``edr: [x, none]``: x from either slot); the report keys cells by id, so one of them would
    silently disappear. One dict lookup per row; product sets are hashed once per distinct set.
    """
    seen: dict[tuple[str, str, frozenset[str]], int] = {}
    as_set: dict[tuple[str, ...], frozenset[str]] = {}
    for index, row in enumerate(rows):
        products = as_set.get(row.products)
        if products is None:
            products = as_set[row.products] = frozenset(row.products)
        first = seen.setdefault((row.build, row.hardware, products), index)
        if first != index:
            raise _duplicate(rows[first], row, space, value_nodes)


def _duplicate(first: Row, again: Row, space: Space, value_nodes: list[list[Node]]) -> InputError:
    where, this = _origin(again, first, space, value_nodes)
    _, that = _origin(first, again, space, value_nodes)
    return where.error(
        f"cell {cell_id(again.build, again.hardware, again.products)} comes twice: "
        f"from {this}, and from {that}",
        "a product offered by two slots, or a set listed twice: keep one",
    )


def _origin(row: Row, other: Row, space: Space, value_nodes: list[list[Node]]) -> tuple[Node, str]:
    """The node to blame for ``row`` (where it differs from ``other``) and a description."""
    if row.origin is not None:
        return row.origin, f"the include entry at {_at(row.origin)}"
    if row.slots is None:
        axis = space.index("products")
        node = value_nodes[axis][space.axes[axis].values.index(row.products)]
        return node, f"product set {list(row.products)} at {_at(node)}"
    parts = []
    blame: Node | None = None
    for axis in space.product_axes:
        slot = space.axes[axis].key.partition(".")[2]
        value = row.slots.get(slot)
        node = value_nodes[axis][space.axes[axis].values.index(value)]
        parts.append(f"{slot}: {value or 'none'} ({_at(node)})")
        if blame is None and (other.slots or {}).get(slot) != value:
            blame = node
    return blame or value_nodes[space.product_axes[0]][0], "slots " + ", ".join(parts)


def _at(node: Node) -> str:
    return f"{node.file}:{node.line}"


def _decoded(row: Row) -> dict[str, object]:
    cell: dict[str, object] = {
        "build": row.build,
        "hardware": row.hardware,
        "products": frozenset(row.products),
    }
    for slot, value in (row.slots or {}).items():
        cell[f"products.{slot}"] = value
    return cell


class CellMaker:
    """Rows -> validated cells. Each check runs once per distinct pair, not once per cell."""

    def __init__(
        self,
        path: Path,
        catalog: Catalog,
        candidate: Candidate,
        scenario: ScenarioSettings,
        value_nodes: list[list[Node]],
        command_nodes: dict[str, Node],
        scenario_nodes: Mapping[str, Node] | None = None,
    ) -> None:
        self.path = path
        self.catalog = catalog
        self.candidate = candidate
        self.scenario = scenario
        self.value_nodes = value_nodes
        self.command_nodes = command_nodes
        self.scenario_nodes = scenario_nodes or {}
        self._machines: set[tuple[str, str]] = set()
        self._products: dict[tuple[OsFamily, tuple[str, ...]], tuple[Product, ...]] = {}

    def __call__(self, row: Row) -> Cell:
        image = self.catalog.images[row.build]
        hardware = self.catalog.hardware[row.hardware]
        if (row.build, row.hardware) not in self._machines:
            if hardware.firmware not in image.firmware:
                raise self._where(row, 0, row.build).error(
                    f"cell {self._id(row)}: image '{image.name}' boots with "
                    f"{'/'.join(sorted(image.firmware))}, but hardware '{hardware.name}' has "
                    f"{hardware.firmware} firmware",
                    "exclude this combination or add a constraint",
                )
            try:
                check_supported(image, hardware)
            except ProfileNotSupported as exc:
                # The profile file is what must change; the matrix names the cell and its line.
                raise self._where(row, 1, row.hardware).error(
                    f"cell {self._id(row)} cannot run on this lab: {exc.message}; "
                    f"profile file {exc.location}",
                    exc.hint,
                ) from exc
            if image.os_family not in self.candidate.commands:
                raise self.command_nodes["install"].error(
                    f"cell {self._id(row)}: the candidate has no {image.os_family} install command"
                )
            self._machines.add((row.build, row.hardware))
        products = self._products.get((image.os_family, row.products))
        if products is None:
            products = self._product_objects(row, image.os_family, image.name)
        settings = replace(self.scenario, **row.overrides) if row.overrides else self.scenario
        if settings.verifier and image.os_family != "windows":
            where = row.override_nodes.get("verifier") or self.scenario_nodes["verifier"]
            raise where.error(
                f"cell {self._id(row)}: scenario.verifier turns on Driver Verifier, a Windows "
                f"tool, but image '{image.name}' is {image.os_family}",
                "set verifier in an include entry that names the Windows builds",
            )
        return Cell(self.path, image, hardware, products, self.candidate, settings)

    def _product_objects(self, row: Row, os_family: OsFamily, image: str) -> tuple[Product, ...]:
        products = tuple(self.catalog.products[p] for p in row.products)
        for product in products:
            if product.payload_for(os_family) is None:
                axis = next(
                    (
                        i
                        for i in range(2, len(self.value_nodes))
                        if any(_names_product(n, product.name) for n in self.value_nodes[i])
                    ),
                    2,
                )
                raise self._where(row, axis, product.name).error(
                    f"cell {self._id(row)}: product '{product.name}' has no {os_family} payload, "
                    f"but image '{image}' is {os_family}",
                    f"add a {os_family} section to {product.source}",
                )
        self._products[(os_family, row.products)] = products
        return products

    @staticmethod
    def _id(row: Row) -> str:
        return cell_id(row.build, row.hardware, row.products)

    def _where(self, row: Row, axis: int, value: str) -> Node:
        """The node to blame: the include that made the cell, else the axis value."""
        if row.origin is not None:
            return row.origin
        nodes = self.value_nodes[axis]
        return next((n for n in nodes if _names_product(n, value) or n.value == value), nodes[0])


def _names_product(node: Node, name: str) -> bool:
    return node.value == name or (node.is_list() and name in node.value)
