"""Read a matrix file, validate it against the catalog, and expand it into cells.

Everything wrong with the input is found here, before any VM is touched, and reported with the
file, line and column of the offending value. Expansion is deterministic: the same files give the
same cells in the same order on every machine and every xdist worker.

Semantics, by key:

- ``axes``: ``build`` and ``hardware`` are lists of catalog names; ``products`` is a list of
  product sets (``[]`` = none) or a map of slots (``av: [defender, none]``) whose choices are
  unioned into the cell's product set.
- ``exclude`` / ``include``: GitHub Actions semantics. An exclude entry removes every
  combination matching all its keys. An include entry adds its extra keys (``scenario``) to every
  combination matching all its axis keys; if it matches none, it adds a new cell. Includes may
  bring back excluded combinations, as in GitHub Actions.
- ``constraints``: PICT-style ``if`` / ``then`` / ``then_not``; ``products`` in a rule means
  membership (the cell's set holds those products). Constraints are absolute: an include that
  breaks one is an error.
- ``strategy``: ``full`` (cartesian product) or ``pairwise`` with ``strength`` 2 or 3, a ``seed``,
  ``must_include`` rows and ``previous`` (a results.json whose cells seed the array, so growing an
  axis changes few existing cells).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

from compatlab._yaml import Node, did_you_mean, load
from compatlab.catalog import (
    OS_FAMILIES,
    Catalog,
    Commands,
    OsFamily,
    Product,
    load_catalog,
    parse_exit_codes,
)
from compatlab.errors import MatrixError
from compatlab.matrix.model import Candidate, Cell, Matrix, ScenarioSettings, Strategy, cell_id
from compatlab.matrix.rules import (
    Axis,
    AxisIn,
    Clause,
    Condition,
    Constraint,
    ProductsContain,
    Space,
)

__all__ = ["CatalogCache", "load_matrix"]

CatalogCache = dict[tuple[Path, Path, Path], Catalog]


@dataclass(slots=True)
class _Row:
    """A cell while includes are applied: its combination (if generated) and its settings."""

    build: str
    hardware: str
    products: tuple[str, ...]
    slots: dict[str, str | None] | None
    overrides: dict[str, Node] = field(default_factory=dict)
    origin: Node | None = None  # the include entry that created it, for error positions


def load_matrix(path: Path, *, catalog_root: Path, catalogs: CatalogCache | None = None) -> Matrix:
    """Load, validate and expand one matrix file.

    ``catalog_root`` holds the ``images/`` and ``configs/`` used when the file has no ``catalog``
    key (see :func:`compatlab.matrix.find_project_root`). ``catalogs`` caches catalogs shared by
    several matrix files.
    """
    root = load(path, MatrixError)
    top = root.mapping(
        "matrix",
        required=("candidate", "axes"),
        optional=("exclude", "include", "constraints", "strategy", "scenario", "catalog"),
    )
    catalog = _catalog(top.get("catalog"), path, catalog_root, catalogs)
    candidate, command_nodes = _candidate(top["candidate"], path.parent)
    scenario = ScenarioSettings()
    if "scenario" in top:
        scenario = _scenario(_scenario_nodes(top["scenario"]), scenario)
    space, value_nodes = _axes(top["axes"], catalog)
    excludes = (
        [
            _clause(e, space, catalog, membership=False, what="exclude entry")
            for e in top["exclude"].items("exclude")
        ]
        if "exclude" in top
        else []
    )
    constraints = (
        [_constraint(c, space, catalog) for c in top["constraints"].items("constraints")]
        if "constraints" in top
        else []
    )
    rules = [*constraints, *(Constraint(Clause(()), None, ex, ex.line) for ex in excludes)]

    def allowed(assignment: Mapping[int, int]) -> bool:
        return not any(rule.violated(assignment) is True for rule in rules)

    strategy, seeds = _strategy(top.get("strategy"), space, catalog, path.parent)
    if strategy.kind == "full":
        combos = (
            [c for c in itertools.product(*map(range, space.sizes)) if allowed(dict(enumerate(c)))]
            if rules
            else list(itertools.product(*map(range, space.sizes)))
        )
    else:
        from compatlab.matrix.pairwise import covering_array

        try:
            combos = covering_array(space.sizes, strategy.strength, strategy.seed, allowed, seeds)
        except ValueError as exc:
            raise top["strategy"].error(f"cannot seed the pairwise array: {exc}") from exc

    rows = _rows(space, combos)
    if "include" in top:
        for entry in top["include"].items("include"):
            _apply_include(entry, rows, space, catalog, constraints, allowed)
    if not rows:
        where = top.get("constraints") or top.get("exclude") or top["axes"]
        raise where.error("the axes, excludes and constraints leave no cell to run")

    make = _CellMaker(path, catalog, candidate, scenario, value_nodes, command_nodes)
    cells = tuple(make(row) for row in rows)
    return Matrix(path, candidate, strategy, scenario, catalog, cells)


# -- sections -----------------------------------------------------------------------------------


def _catalog(node: Node | None, path: Path, root: Path, cache: CatalogCache | None) -> Catalog:
    folders = {
        "images": root / "images",
        "hardware": root / "configs" / "hardware",
        "products": root / "configs" / "products",
    }
    if node is not None:
        for key, value in node.mapping("catalog", optional=tuple(folders)).items():
            folder = (path.parent / value.text(f"catalog {key}")).resolve()
            if not folder.is_dir():
                raise value.error(f"catalog folder {folder} does not exist")
            folders[key] = folder
    key3 = (folders["images"], folders["hardware"], folders["products"])
    if cache is not None and key3 in cache:
        return cache[key3]
    catalog = load_catalog(*key3)
    if cache is not None:
        cache[key3] = catalog
    return catalog


def _per_os(node: Node, what: str) -> dict[OsFamily, Node]:
    entries = node.mapping(what, optional=OS_FAMILIES)
    if not entries:
        raise node.error(f"{what} needs a command for at least one OS family (windows, linux)")
    return {cast(OsFamily, k): v for k, v in entries.items()}


def _candidate(node: Node, base: Path) -> tuple[Candidate, dict[str, Node]]:
    c = node.mapping(
        "candidate",
        required=("name", "version", "payload", "install", "uninstall"),
        optional=("exit_codes",),
    )
    payload = (base / c["payload"].text("payload")).resolve()
    if not payload.is_dir():
        raise c["payload"].error(f"candidate payload folder {payload} does not exist")
    install = _per_os(c["install"], "candidate install")
    uninstall = _per_os(c["uninstall"], "candidate uninstall")
    exit_codes = parse_exit_codes(c["exit_codes"]) if "exit_codes" in c else None
    commands: dict[OsFamily, Commands] = {}
    for family, command in install.items():
        if family not in uninstall:
            raise c["uninstall"].error(f"candidate uninstall has no {family} command")
        commands[family] = Commands(
            install=command.text("install command"),
            uninstall=uninstall[family].text("uninstall command"),
            **({"exit_codes": exit_codes} if exit_codes else {}),
        )
    candidate = Candidate(
        name=c["name"].text("candidate name"),
        version=c["version"].text("candidate version"),
        payload=payload,
        commands=commands,
    )
    return candidate, {"install": c["install"]}


_SCENARIO_KEYS = {f.name for f in fields(ScenarioSettings)}


def _scenario_nodes(node: Node) -> dict[str, Node]:
    """The entries of a ``scenario`` mapping, each value checked for its type."""
    entries = node.mapping("scenario", optional=sorted(_SCENARIO_KEYS))
    for key, value in entries.items():
        _scenario_value(key, value)
    return entries


def _scenario(overrides: Mapping[str, Node], base: ScenarioSettings) -> ScenarioSettings:
    return replace(base, **{k: _scenario_value(k, v) for k, v in overrides.items()})


def _names(node: Node, known: Mapping[str, object], what: str) -> list[tuple[str, Node]]:
    items = node.items(what)
    if not items:
        raise node.error(f"{what} must list at least one name")
    seen: set[str] = set()
    out = []
    for item in items:
        name = _known(item, known, what.rstrip("s"))
        if name in seen:
            raise item.error(f"'{name}' is listed twice in {what}")
        seen.add(name)
        out.append((name, item))
    return out


def _known(node: Node, known: Mapping[str, object], what: str) -> str:
    name = node.text(what)
    if name not in known:
        hint = did_you_mean(name, known) or (
            f"known: {', '.join(sorted(known)[:8])}" if known else "the catalog has none"
        )
        raise node.error(f"unknown {what} '{name}'", hint)
    return name


def _product_set(node: Node, catalog: Catalog) -> tuple[str, ...]:
    names = [_known(item, catalog.products, "product") for item in node.items("product set")]
    if len(set(names)) != len(names):
        raise node.error("a product set lists the same product twice")
    return tuple(names)


def _axes(node: Node, catalog: Catalog) -> tuple[Space, list[list[Node]]]:
    a = node.mapping("axes", required=("build", "hardware", "products"))
    builds = _names(a["build"], catalog.images, "builds")
    hardware = _names(a["hardware"], catalog.hardware, "hardware profiles")
    axes = [
        Axis("build", tuple(n for n, _ in builds)),
        Axis("hardware", tuple(n for n, _ in hardware)),
    ]
    nodes = [[n for _, n in builds], [n for _, n in hardware]]
    products = a["products"]
    if products.is_mapping():
        for slot, choices in products.mapping("products slots", optional=None).items():
            values: list[str | None] = []
            slot_nodes = []
            for item in choices.items(f"products slot '{slot}'"):
                value = (
                    None
                    if item.value in ("none", None)
                    else _known(item, catalog.products, "product")
                )
                if value in values:
                    raise item.error(f"slot '{slot}' lists '{value or 'none'}' twice")
                values.append(value)
                slot_nodes.append(item)
            if not values:
                raise choices.error(f"products slot '{slot}' needs at least one choice")
            axes.append(Axis(f"products.{slot}", tuple(values)))
            nodes.append(slot_nodes)
        if len(axes) == 2:
            raise products.error("products needs at least one slot")
        return Space(tuple(axes), "slots"), nodes
    sets: list[tuple[str, ...]] = []
    set_nodes = []
    for item in products.items("products"):
        product_set = _product_set(item, catalog)
        if product_set in sets:
            raise item.error(f"product set {list(product_set)} is listed twice")
        sets.append(product_set)
        set_nodes.append(item)
    if not sets:
        raise products.error("products must list at least one product set ([] means none)")
    axes.append(Axis("products", tuple(sets)))
    nodes.append(set_nodes)
    return Space(tuple(axes), "sets"), nodes


def _axis_values(node: Node, space: Space, key: str, catalog: Catalog) -> frozenset[int]:
    """Indices on axis ``key`` that a rule's value names (one name or a list of names)."""
    axis = space.axes[space.index(key)]
    known = catalog.images if key == "build" else catalog.hardware
    items = node.items(key) if node.is_list() else [node]
    indices = set()
    for item in items:
        name = _known(item, known, key)
        if name not in axis.values:
            raise item.error(f"{key} '{name}' is not on the matrix's {key} axis")
        indices.add(axis.values.index(name))
    return frozenset(indices)


def _axis_in(space: Space, key: str, indices: frozenset[int]) -> AxisIn:
    """A condition on axis ``key``, by index (for the generator) and by value (for includes)."""
    axis = space.index(key)
    values = space.axes[axis].values
    by_value = frozenset(
        frozenset(cast(tuple[str, ...], values[i])) if key == "products" else values[i]
        for i in indices
    )
    return AxisIn(axis, indices, key, by_value)


def _decoded(row: _Row) -> dict[str, object]:
    cell: dict[str, object] = {
        "build": row.build,
        "hardware": row.hardware,
        "products": frozenset(row.products),
    }
    for slot, value in (row.slots or {}).items():
        cell[f"products.{slot}"] = value
    return cell


def _clause(node: Node, space: Space, catalog: Catalog, *, membership: bool, what: str) -> Clause:
    entry = node.mapping(what, optional=("build", "hardware", "products"))
    if not entry:
        raise node.error(f"an empty {what} matches every cell")
    conditions: list[Condition] = []
    for key in ("build", "hardware"):
        if key in entry:
            conditions.append(_axis_in(space, key, _axis_values(entry[key], space, key, catalog)))
    if "products" in entry:
        conditions.extend(_products_conditions(entry["products"], space, catalog, membership))
    return Clause(tuple(conditions), node.line)


def _products_conditions(
    node: Node, space: Space, catalog: Catalog, membership: bool
) -> list[Condition]:
    if node.is_mapping():
        if space.product_mode != "slots":
            raise node.error("products is a list of sets on this matrix's axes, not slots")
        out: list[Condition] = []
        for slot, value in node.mapping("products", optional=None).items():
            try:
                axis = space.index(f"products.{slot}")
            except KeyError:
                slots = [a.key.split(".", 1)[1] for a in space.axes if "." in a.key]
                raise value.error(
                    f"unknown products slot '{slot}'", did_you_mean(slot, slots)
                ) from None
            choice = (
                None
                if value.value in ("none", None)
                else _known(value, catalog.products, "product")
            )
            values = space.axes[axis].values
            if choice not in values:
                raise value.error(f"'{choice or 'none'}' is not a choice of slot '{slot}'")
            out.append(_axis_in(space, f"products.{slot}", frozenset({values.index(choice)})))
        return out
    names = _product_set(node, catalog)
    if membership:
        return [ProductsContain(space, frozenset(names))]
    if space.product_mode == "slots":
        raise node.error("this matrix's products are slots: write products: {slot: name}")
    axis = space.index("products")
    matching = {
        i
        for i, v in enumerate(space.axes[axis].values)
        if set(cast(tuple[str, ...], v)) == set(names)
    }
    return [_axis_in(space, "products", frozenset(matching))]


def _constraint(node: Node, space: Space, catalog: Catalog) -> Constraint:
    c = node.mapping("constraint", optional=("if", "then", "then_not"))
    if "then" not in c and "then_not" not in c:
        raise node.error("a constraint needs 'then' or 'then_not'")

    def part(key: str) -> Clause | None:
        return (
            _clause(c[key], space, catalog, membership=True, what=f"constraint '{key}'")
            if (key in c)
            else None
        )

    return Constraint(part("if") or Clause(()), part("then"), part("then_not"), node.line)


def _strategy(
    node: Node | None, space: Space, catalog: Catalog, base: Path
) -> tuple[Strategy, list[list[int | None]]]:
    if node is None:
        return Strategy(), []
    s = node.mapping(
        "strategy", required=("kind",), optional=("strength", "seed", "must_include", "previous")
    )
    kind = s["kind"].choice(("full", "pairwise"), "strategy kind")
    if kind == "full":
        for key in ("strength", "seed", "must_include", "previous"):
            if key in s:
                raise s[key].error(f"'{key}' only applies to strategy kind pairwise")
        return Strategy(), []
    strength = s["strength"].integer("strength") if "strength" in s else 2
    if strength not in (2, 3):
        raise s["strength"].error(f"strength must be 2 or 3, not {strength}")
    seeds: list[list[int | None]] = []
    if "must_include" in s:
        for entry in s["must_include"].items("must_include"):
            seeds.append(_seed_row(entry, space, catalog))
    if "previous" in s:
        seeds.extend(_previous_rows(s["previous"], base, space))
    seed = s["seed"].integer("seed", minimum=0) if "seed" in s else 0
    return Strategy("pairwise", strength, seed), seeds


def _seed_row(node: Node, space: Space, catalog: Catalog) -> list[int | None]:
    row: list[int | None] = [None] * len(space.axes)
    clause = _clause(node, space, catalog, membership=False, what="must_include entry")
    for condition in clause.conditions:
        assert isinstance(condition, AxisIn)
        if len(condition.allowed) != 1:
            raise node.error("a must_include entry names one value per axis")
        row[condition.axis] = next(iter(condition.allowed))
    return row


def _previous_rows(node: Node, base: Path, space: Space) -> list[list[int | None]]:
    """Rows of a previous run's results.json whose values are all still on the axes."""
    path = (base / node.text("previous")).resolve()
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise node.error(f"cannot read previous results {path}: {exc}") from exc
    rows: list[list[int | None]] = []
    for cell in cells:
        row = _row_for(
            space,
            str(cell.get("build")),
            str(cell.get("hardware")),
            tuple(cell.get("products") or ()),
        )
        if row is not None and row not in rows:
            rows.append(row)
    return rows


def _row_for(
    space: Space, build: str, hardware: str, products: tuple[str, ...]
) -> list[int | None] | None:
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


# -- includes and cells --------------------------------------------------------------------------


def _rows(space: Space, combos: Sequence[Sequence[int]]) -> list[_Row]:
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
            _Row(cast(str, builds[combo[b]]), cast(str, hardware[combo[h]]), products, slots)
        )
    return rows


def _apply_include(
    node: Node,
    rows: list[_Row],
    space: Space,
    catalog: Catalog,
    constraints: list[Constraint],
    allowed: Callable[[Mapping[int, int]], bool],
) -> None:
    entry = node.mapping("include entry", optional=("build", "hardware", "products", "scenario"))
    overrides = _scenario_nodes(entry["scenario"]) if "scenario" in entry else {}
    build = _known(entry["build"], catalog.images, "build") if "build" in entry else None
    hardware = (
        _known(entry["hardware"], catalog.hardware, "hardware") if "hardware" in entry else None
    )
    want_set: frozenset[str] | None = None
    want_slots: dict[str, str | None] | None = None
    if "products" in entry:
        p = entry["products"]
        if space.product_mode == "slots":
            want_slots = {}
            for slot, value in p.mapping("products", optional=None).items():
                if f"products.{slot}" not in (a.key for a in space.axes):
                    raise value.error(f"unknown products slot '{slot}'")
                want_slots[slot] = (
                    None
                    if value.value in ("none", None)
                    else _known(value, catalog.products, "product")
                )
        else:
            want_set = frozenset(_product_set(p, catalog))

    matched = False
    for row in rows:
        if build is not None and row.build != build:
            continue
        if hardware is not None and row.hardware != hardware:
            continue
        if want_set is not None and frozenset(row.products) != want_set:
            continue
        if want_slots is not None and any(
            (row.slots or {}).get(k) != v for k, v in want_slots.items()
        ):
            continue
        row.overrides.update(overrides)
        matched = True
    if matched:
        return
    missing = [k for k in ("build", "hardware", "products") if k not in entry]
    if missing:
        raise node.error(
            f"include entry matches no cell, so it adds one, but it does not name "
            f"{' and '.join(missing)}"
        )
    assert build is not None and hardware is not None
    if want_slots is not None:
        slot_names = [a.key.split(".", 1)[1] for a in space.axes if "." in a.key]
        absent = [s for s in slot_names if s not in want_slots]
        if absent:
            raise entry["products"].error(f"a new cell needs every slot; missing: {absent}")
        products = tuple(dict.fromkeys(v for s in slot_names if (v := want_slots[s])))
    else:
        products = _product_set(entry["products"], catalog)
    new = _Row(build, hardware, products, want_slots, dict(overrides), node)
    # Constraints are absolute, excludes are not (an include may bring an excluded cell back).
    broken = next((c for c in constraints if c.broken_by(_decoded(new))), None)
    if broken is not None:
        raise node.error(
            f"include entry adds a cell that breaks the constraint at line {broken.line}"
        )
    rows.append(new)


class _CellMaker:
    """Rows -> validated cells. Each check runs once per distinct pair, not once per cell."""

    def __init__(
        self,
        path: Path,
        catalog: Catalog,
        candidate: Candidate,
        scenario: ScenarioSettings,
        value_nodes: list[list[Node]],
        command_nodes: dict[str, Node],
    ) -> None:
        self.path = path
        self.catalog = catalog
        self.candidate = candidate
        self.scenario = scenario
        self.value_nodes = value_nodes
        self.command_nodes = command_nodes
        self._machines: set[tuple[str, str]] = set()
        self._products: dict[tuple[OsFamily, tuple[str, ...]], tuple[Product, ...]] = {}

    def __call__(self, row: _Row) -> Cell:
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
            if image.os_family not in self.candidate.commands:
                raise self.command_nodes["install"].error(
                    f"cell {self._id(row)}: the candidate has no {image.os_family} install command"
                )
            self._machines.add((row.build, row.hardware))
        products = self._products.get((image.os_family, row.products))
        if products is None:
            products = self._product_objects(row, image.os_family, image.name)
        settings = _scenario(row.overrides, self.scenario) if row.overrides else self.scenario
        return Cell(self.path, image, hardware, products, self.candidate, settings)

    def _product_objects(self, row: _Row, os_family: OsFamily, image: str) -> tuple[Product, ...]:
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
    def _id(row: _Row) -> str:
        return cell_id(row.build, row.hardware, row.products)

    def _where(self, row: _Row, axis: int, value: str) -> Node:
        """The node to blame: the include that made the cell, else the axis value."""
        if row.origin is not None:
            return row.origin
        nodes = self.value_nodes[axis]
        return next((n for n in nodes if _names_product(n, value) or n.value == value), nodes[0])


def _names_product(node: Node, name: str) -> bool:
    return node.value == name or (node.is_list() and name in node.value)


def _scenario_value(key: str, value: Node) -> Any:
    if key in ("boots", "boot_loop"):
        return value.integer(key, minimum=1)
    if key in ("boot_timeout", "bake"):
        return value.number(key, minimum=0)
    if key == "boot_regression":
        return None if value.is_null() else value.number(key, minimum=1)
    if key == "baseline":
        return value.choice(("always", "on_failure", "never"), "baseline")
    return value.flag(key)
