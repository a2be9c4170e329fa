"""Read a matrix file and validate it against the catalog; ``load_matrix`` expands it into cells.

Everything wrong with the input is found here, before any VM is touched (what only a whole cell
can break, in :mod:`compatlab.matrix.expand`), and reported with the file, line and column of the
offending value. Expansion is deterministic: the same files give the same cells in the same order
on every machine and every xdist worker.

Semantics, by key:

- ``candidate``: ``install`` and ``uninstall`` per OS family, each a command line; on Windows
  ``install`` may be a package (``{kind: msi, file: sensor.msi}``, :mod:`compatlab.installs`),
  whose uninstall line the lab builds for msi, msu and driver.
- ``scenario`` (and ``scenario`` in an include entry): :mod:`compatlab.matrix.settings`;
  ``verifier`` may only reach cells of Windows images.
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
- ``fleet``: each build's, hardware profile's and product set's share of the fleet, or a file of
  them (:mod:`compatlab.matrix.fleet`); every cell gets its configuration's ``fleet_share``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import cast

from compatlab import files
from compatlab._yaml import Node, did_you_mean, load
from compatlab.catalog import MAX_NAME_LENGTH, OS_FAMILIES, Catalog, OsFamily, load_catalog
from compatlab.errors import InputError, MatrixError
from compatlab.installs import Commands, parse_commands, parse_exit_codes
from compatlab.matrix.expand import (
    CellMaker,
    Include,
    apply_include,
    check_unique,
    combination_of,
    combinations,
    rows_of,
)
from compatlab.matrix.fleet import read_fleet
from compatlab.matrix.model import Candidate, Matrix, ScenarioSettings, Strategy
from compatlab.matrix.rules import (
    Axis,
    AxisIn,
    Clause,
    Condition,
    Constraint,
    ProductsContain,
    Space,
)
from compatlab.matrix.settings import scenario_overrides

__all__ = ["CatalogCache", "load_matrix"]

CatalogCache = dict[tuple[Path, Path, Path], Catalog]

MAX_INSTALLER_REBOOTS = 10
# A full matrix is expanded in memory before constraints filter it; 2 million combinations take
# seconds and a gigabyte. A bigger one is a pairwise matrix, or several files.
MAX_COMBINATIONS = 2_000_000
_OPTIONAL_KEYS = ("exclude", "include", "constraints", "strategy", "scenario", "catalog", "fleet")


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
        optional=_OPTIONAL_KEYS,
    )
    catalog = _catalog(top.get("catalog"), path, catalog_root, catalogs)
    candidate, command_nodes = _candidate(top["candidate"], path.parent)
    scenario = ScenarioSettings()
    scenario_nodes: dict[str, Node] = {}
    if "scenario" in top:
        overrides, scenario_nodes = scenario_overrides(top["scenario"])
        scenario = replace(scenario, **overrides)
    space, value_nodes = _axes(top["axes"], catalog)
    fleet = read_fleet(top["fleet"], path.parent) if "fleet" in top else None
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
    strategy, seeds = _strategy(top.get("strategy"), space, catalog, path.parent)
    if strategy.kind == "full" and math.prod(space.sizes) > MAX_COMBINATIONS:
        raise top["axes"].error(
            f"the full matrix has {math.prod(space.sizes):,} combinations, more than "
            f"{MAX_COMBINATIONS:,}",
            "use strategy: {kind: pairwise}, or split the matrix into several files",
        )
    try:
        combos = combinations(space, strategy, rules, seeds)
    except ValueError as exc:  # only a pairwise array raises it, when its seeds cannot be used
        raise top["strategy"].error(f"cannot seed the pairwise array: {exc}") from exc
    rows = rows_of(space, combos)
    if "include" in top:
        for entry in top["include"].items("include"):
            apply_include(_include(entry, space, catalog), rows, space, constraints)
    if not rows:
        where = top.get("constraints") or top.get("exclude") or top["axes"]
        raise where.error("the axes, excludes and constraints leave no cell to run")
    if strategy.kind == "pairwise" or space.product_mode == "slots":
        # A full product of distinct values (product sets compared as sets) is unique by
        # construction, and an include only adds a cell no row matches: only slots (two may
        # offer one product) and seeded pairwise arrays can repeat a cell.
        check_unique(rows, space, value_nodes)

    make = CellMaker(path, catalog, candidate, scenario, value_nodes, command_nodes, scenario_nodes)
    cells = tuple(make(row) for row in rows)
    if fleet is not None:
        cells = fleet.apply(cells)
    return Matrix(
        path, candidate, strategy, scenario, catalog, cells, fleet.fleet if fleet else None
    )


# -- sections -----------------------------------------------------------------------------------


def _catalog(node: Node | None, path: Path, root: Path, cache: CatalogCache | None) -> Catalog:
    folders = {
        "images": root / "images",
        "hardware": root / "configs" / "hardware",
        "products": root / "configs" / "products",
    }
    if node is not None:
        for key, value in node.mapping("catalog", optional=tuple(folders)).items():
            folders[key] = _folder(value, path.parent, f"catalog {key}", "catalog folder")
    key3 = (folders["images"], folders["hardware"], folders["products"])
    if cache is not None and key3 in cache:
        return cache[key3]
    catalog = load_catalog(*key3)
    if cache is not None:
        cache[key3] = catalog
    return catalog


def _folder(node: Node, base: Path, what: str, kind: str) -> Path:
    """A folder named by ``node``, relative to ``base``: it must exist and be a folder."""
    try:
        folder = files.resolve(base / node.text(what))
        files.check_kind(folder, ("folder",), kind)
    except InputError as exc:
        raise node.error(exc.message) from exc
    return folder


def _per_os(node: Node, what: str) -> dict[OsFamily, Node]:
    entries = node.mapping(what, optional=OS_FAMILIES)
    if not entries:
        raise node.error(f"{what} needs a command for at least one OS family (windows, linux)")
    return {cast(OsFamily, k): v for k, v in entries.items()}


def _candidate(node: Node, base: Path) -> tuple[Candidate, dict[str, Node]]:
    c = node.mapping(
        "candidate",
        required=("name", "version", "payload", "install"),
        optional=("uninstall", "exit_codes", "reboots"),
    )
    payload = _folder(c["payload"], base, "payload", "candidate payload folder")
    install = _per_os(c["install"], "candidate install")
    # Absent only where every install is a Windows package that knows its uninstall line.
    uninstall = _per_os(c["uninstall"], "candidate uninstall") if "uninstall" in c else {}
    exit_codes = parse_exit_codes(c["exit_codes"]) if "exit_codes" in c else None
    commands: dict[OsFamily, Commands] = {}
    for family, command in install.items():
        if family not in uninstall and not command.is_mapping():
            raise c.get("uninstall", command).error(f"candidate uninstall has no {family} command")
        commands[family] = parse_commands(
            command, uninstall.get(family), exit_codes, family=family, what="candidate"
        )
    candidate = Candidate(
        name=c["name"].text("candidate name", max_length=MAX_NAME_LENGTH),
        version=c["version"].text("candidate version", max_length=MAX_NAME_LENGTH),
        payload=payload,
        commands=commands,
        reboots=c["reboots"].integer("reboots", minimum=0, maximum=MAX_INSTALLER_REBOOTS)
        if "reboots" in c
        else 0,
    )
    return candidate, {"install": c["install"]}


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
    seen: set[frozenset[str]] = set()
    for item in products.items("products"):
        product_set = _product_set(item, catalog)
        # [av, edr] and [edr, av] are one configuration, and would be two cells.
        if frozenset(product_set) in seen:
            raise item.error(f"product set {list(product_set)} is listed twice")
        seen.add(frozenset(product_set))
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


def _include(node: Node, space: Space, catalog: Catalog) -> Include:
    entry = node.mapping("include entry", optional=("build", "hardware", "products", "scenario"))
    overrides, nodes = scenario_overrides(entry["scenario"]) if "scenario" in entry else ({}, {})
    build = _known(entry["build"], catalog.images, "build") if "build" in entry else None
    hardware = (
        _known(entry["hardware"], catalog.hardware, "hardware") if "hardware" in entry else None
    )
    products: tuple[str, ...] | None = None
    slots: dict[str, str | None] | None = None
    if "products" in entry:
        p = entry["products"]
        if space.product_mode == "slots":
            slots = {}
            for slot, value in p.mapping("products", optional=None).items():
                if f"products.{slot}" not in (a.key for a in space.axes):
                    raise value.error(f"unknown products slot '{slot}'")
                slots[slot] = (
                    None
                    if value.value in ("none", None)
                    else _known(value, catalog.products, "product")
                )
        else:
            products = _product_set(p, catalog)
    return Include(node, entry, build, hardware, products, slots, overrides, nodes)


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
    """Rows of a previous run's results.json whose values are all still on the axes.

    Only each cell's ``build``, ``hardware`` and ``products`` are read, so results of other
    compatlab versions serve; anything else about the file that is wrong is an error here.
    """
    try:
        path = files.resolve(base / node.text("previous"))
        text = files.read_text(path, limit=files.MAX_RESULTS_BYTES, what="previous results")
    except InputError as exc:
        raise node.error(f"cannot read previous results: {exc}") from exc

    def wrong(message: str) -> InputError:
        return node.error(f"previous results {path}: {message}", "a results.json compatlab wrote")

    try:
        doc = json.loads(text)
    except RecursionError:
        raise wrong("nested too deeply to be a results.json") from None
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's digit limit
        raise wrong(f"not JSON: {exc}") from exc
    cells = doc.get("cells") if isinstance(doc, dict) else None
    if not isinstance(cells, list):
        raise wrong("$.cells must be a list of cells")
    rows: list[list[int | None]] = []
    seen: set[tuple[int | None, ...]] = set()
    for i, cell in enumerate(cells):
        where = f"$.cells[{i}]"
        if not isinstance(cell, dict):
            raise wrong(f"{where} must be an object, not {type(cell).__name__}")
        build, hardware = cell.get("build"), cell.get("hardware")
        products = cell.get("products")
        products = [] if products is None else products
        if not isinstance(build, str) or not isinstance(hardware, str):
            raise wrong(f"{where}: build and hardware must be strings")
        if not isinstance(products, list) or not all(isinstance(p, str) for p in products):
            raise wrong(f"{where}.products must be a list of product names")
        row = combination_of(space, build, hardware, tuple(products))
        if row is not None and tuple(row) not in seen:
            seen.add(tuple(row))
            rows.append(row)
    return rows
