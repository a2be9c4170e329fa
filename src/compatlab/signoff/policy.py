"""A rollout policy (``configs/rollout.yaml``): the rings an update enters, in order, and what
each needs from a run. Read through :mod:`compatlab._yaml`, so a mistake is a
:class:`~compatlab.errors.PolicyError` at its file, line and column, as in a matrix file.

::

    target: broad                  # the ring whose go the exit status reports (default: the last)
    defaults:                      # any ring key but name/description, for every ring
      block: [crash, boot_loop, hang, install_failed, rollback_failed]
    rings:
      - name: internal
        description: the company's own endpoints
        require: {fleet_share: 0.75}
      - name: broad
        require:
          cells: all               # or a list of selectors: {build, hardware, products}
          fleet_share: 0.99        # the cells that pass stand for 99% of the fleet tested
        boot_regression: 1.25      # a boot with the candidate at most 1.25x the baseline boot
        cost_regression: 0.25      # the guest's CPU, memory, disk at most 25% over the baseline
        repeats: 3                 # every cell judged on at least 3 runs (--matrix-repeat 3)

``cost_regression`` is a share -- every metric of :data:`compatlab.cost.JUDGED` (``cpu``,
``memory``, ``disk_read``, ``disk_write``) may exceed the baseline by at most that much -- or a
mapping of those metrics to their own share (``{cpu: 0.1, memory: 0.25}``: only those).
``block`` lists the verdicts that keep a ring closed; ``infra_error`` may not be listed: a cell
the lab failed is *not tested*, which no ring accepts as passed, and never a failure of the
update. What each key means for a decision is :mod:`compatlab.signoff.decide`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from compatlab import files
from compatlab._yaml import Node, did_you_mean, load
from compatlab.cost import JUDGED
from compatlab.errors import PolicyError
from compatlab.fleet import product_set_name
from compatlab.model import CellResult, Verdict

__all__ = [
    "BLOCKABLE",
    "DEFAULT_BLOCK",
    "MAX_REPEATS",
    "Place",
    "Policy",
    "Requirement",
    "Ring",
    "Selector",
    "load_policy",
]

# The verdicts a ring may block on: every failure but the lab's own.
BLOCKABLE: tuple[Verdict, ...] = tuple(
    v for v in Verdict if v not in (Verdict.PASS, Verdict.INFRA_ERROR)
)
# What breaks an endpoint or leaves it without a way back; a failed health check is the
# policy's to add.
DEFAULT_BLOCK: frozenset[Verdict] = frozenset(
    {
        Verdict.CRASH,
        Verdict.BOOT_LOOP,
        Verdict.HANG,
        Verdict.INSTALL_FAILED,
        Verdict.ROLLBACK_FAILED,
    }
)
MAX_REPEATS = 100  # the most runs of one cell a ring may ask for
MAX_BOOT_REGRESSION = 100.0
MAX_COST_REGRESSION = 100.0  # a share: 100 is "101 times the baseline"
_NAME_LENGTH = 64
_RING_KEYS = ("require", "block", "boot_regression", "repeats", "cost_regression")


class Place(NamedTuple):
    """Where a policy value was written: errors found only against a run point here."""

    file: Path
    line: int
    column: int

    @classmethod
    def of(cls, node: Node) -> Place:
        return cls(node.file, node.line, node.column)

    def error(self, message: str, hint: str | None = None) -> PolicyError:
        return PolicyError(message, file=self.file, line=self.line, column=self.column, hint=hint)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Selector:
    """Cells by value: every key given must match (``None``: any). ``products`` is a whole
    product set, compared as a set; the empty set is "no products"."""

    build: frozenset[str] | None
    hardware: frozenset[str] | None
    products: frozenset[str] | None
    place: Place

    def matches(self, cell: CellResult) -> bool:
        return (
            (self.build is None or cell.build in self.build)
            and (self.hardware is None or cell.hardware in self.hardware)
            and (self.products is None or frozenset(cell.products) == self.products)
        )

    def describe(self) -> str:
        """``build win11-23h2, products none``: as a reader of the sign-off says it."""
        parts = []
        for key, values in (("build", self.build), ("hardware", self.hardware)):
            if values is not None:
                parts.append(f"{key} {' or '.join(sorted(values))}")
        if self.products is not None:
            parts.append(f"products {product_set_name(sorted(self.products))}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Requirement:
    """What must pass: ``cells`` (None: every cell of the run; empty: no cell in particular)
    and, if set, the share of the tested fleet that the passing cells must stand for."""

    cells: tuple[Selector, ...] | None
    fleet_share: float | None
    place: Place

    def describe(self) -> str:
        parts = []
        if self.cells is None:
            parts.append("every cell passes")
        elif self.cells:
            picked = "; ".join(s.describe() for s in self.cells)
            parts.append(f"every cell of {picked} passes")
        if self.fleet_share is not None:
            parts.append(f"passing cells stand for {self.fleet_share:.0%} of the fleet tested")
        return " and ".join(parts)


@dataclass(frozen=True)
class Ring:
    """One rollout ring. A ring passes only if the rings before it pass."""

    name: str
    description: str
    require: Requirement
    block: frozenset[Verdict]
    boot_regression: float | None  # largest ratio of a boot with the candidate to baseline
    repeats: int  # runs with a verdict each cell needs
    place: Place
    # Largest share by which a cost metric (compatlab.cost) may exceed the baseline, per metric;
    # None = no limit.
    cost_regression: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Policy:
    """A validated rollout policy: rings in order, and the one whose go the exit status is."""

    path: Path
    sha256: str  # of the file as read, recorded in the sign-off
    rings: tuple[Ring, ...]
    target: str

    def ring(self, name: str) -> Ring:
        for ring in self.rings:
            if ring.name == name:
                return ring
        raise KeyError(name)


def load_policy(path: Path) -> Policy:
    """Read and validate a rollout policy; a mistake is a :class:`PolicyError` at its place."""
    root = load(path, PolicyError)
    top = root.mapping("policy", required=("rings",), optional=("target", "defaults"))
    defaults: dict[str, Node] = (
        top["defaults"].mapping("defaults", optional=_RING_KEYS) if "defaults" in top else {}
    )
    rings: list[Ring] = []
    first_at: dict[str, Node] = {}
    items = top["rings"].items("rings")
    if not items:
        raise top["rings"].error("a policy needs at least one ring")
    for item in items:
        ring = _ring(item, defaults)
        if ring.name in first_at:
            raise item.error(
                f"ring '{ring.name}' is named twice (first at line {first_at[ring.name].line})"
            )
        first_at[ring.name] = item
        rings.append(ring)
    target = rings[-1].name
    if "target" in top:
        target = top["target"].text("target")
        if target not in first_at:
            raise top["target"].error(
                f"target '{target}' is not a ring of this policy",
                did_you_mean(target, first_at) or f"rings: {', '.join(first_at)}",
            )
    text = files.read_text(path, limit=files.MAX_YAML_BYTES, what="policy", error_type=PolicyError)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Policy(path, digest, tuple(rings), target)


def _ring(node: Node, defaults: dict[str, Node]) -> Ring:
    entry = node.mapping("ring", required=("name",), optional=("description", *_RING_KEYS))
    values = {**defaults, **{k: v for k, v in entry.items() if k in _RING_KEYS}}
    name = entry["name"].text("ring name", max_length=_NAME_LENGTH)
    return Ring(
        name=name,
        description=entry["description"].text("description") if "description" in entry else "",
        require=_require(values["require"]) if "require" in values else _every_cell(node),
        block=_block(values["block"]) if "block" in values else DEFAULT_BLOCK,
        boot_regression=_boot_regression(values["boot_regression"])
        if "boot_regression" in values
        else None,
        repeats=values["repeats"].integer("repeats", minimum=1, maximum=MAX_REPEATS)
        if "repeats" in values
        else 1,
        place=Place.of(node),
        cost_regression=_cost_regression(values["cost_regression"])
        if "cost_regression" in values
        else None,
    )


def _every_cell(node: Node) -> Requirement:
    return Requirement(None, None, Place.of(node))


def _require(node: Node) -> Requirement:
    entry = node.mapping("require", optional=("cells", "fleet_share"))
    if not entry:
        raise node.error("require needs cells, fleet_share or both", "e.g. {cells: all}")
    cells: tuple[Selector, ...] | None = None
    if "cells" in entry:
        value = entry["cells"]
        if value.is_list():
            cells = tuple(_selector(item) for item in value.items("cells"))
            if not cells:
                raise value.error("cells lists no selector", "write cells: all for every cell")
        elif value.value != "all":
            raise value.error(
                "cells must be all or a list of selectors",
                "e.g. cells: [{build: win11-23h2}, {products: none}]",
            )
    share = None
    if "fleet_share" in entry:
        share = entry["fleet_share"].number("fleet_share", positive=True, maximum=1)
    if "cells" not in entry and share is not None:
        # Only a share: which cells pass does not matter, as long as enough of the fleet does.
        return Requirement((), share, Place.of(entry["fleet_share"]))
    return Requirement(cells, share, Place.of(entry.get("fleet_share", node)))


def _selector(node: Node) -> Selector:
    entry = node.mapping("cell selector", optional=("build", "hardware", "products"))
    if not entry:
        raise node.error("an empty selector matches every cell", "write cells: all")
    return Selector(
        build=_names(entry["build"], "build") if "build" in entry else None,
        hardware=_names(entry["hardware"], "hardware") if "hardware" in entry else None,
        products=_product_set(entry["products"]) if "products" in entry else None,
        place=Place.of(node),
    )


def _names(node: Node, what: str) -> frozenset[str]:
    items = node.items(what) if node.is_list() else [node]
    if not items:
        raise node.error(f"{what} lists no name")
    return frozenset(item.text(what) for item in items)


def _product_set(node: Node) -> frozenset[str]:
    """A list of product names, ``[]``, ``none`` or ``a+b``, as a set."""
    if node.is_list():
        names = [item.text("product") for item in node.items("products")]
    else:
        text = node.text("products")
        names = [] if text == "none" else [part.strip() for part in text.split("+")]
    if any(not name for name in names):
        raise node.error("products has an empty name", "a list of names, a+b, or none")
    if len(set(names)) != len(names):
        raise node.error("products names a product twice")
    return frozenset(names)


def _block(node: Node) -> frozenset[Verdict]:
    out: set[Verdict] = set()
    for item in node.items("block"):
        text = item.text("verdict")
        if text == Verdict.INFRA_ERROR.value:
            raise item.error(
                "infra_error cannot block: the lab failed, not the update",
                "a cell the lab failed counts as not tested, which no ring accepts as passed",
            )
        verdict = Verdict(item.choice(_names_of(BLOCKABLE), "verdict"))
        if verdict in out:
            raise item.error(f"'{text}' is listed twice in block")
        out.add(verdict)
    return frozenset(out)


def _names_of(verdicts: Iterable[Verdict]) -> list[str]:
    return [v.value for v in verdicts]


def _boot_regression(node: Node) -> float | None:
    if node.is_null():
        return None
    return node.number(
        "boot_regression (the ratio of a boot with the candidate to the baseline boot)",
        minimum=1,
        maximum=MAX_BOOT_REGRESSION,
    )


def _cost_regression(node: Node) -> Mapping[str, float] | None:
    """A share for every judged metric, or a mapping of some of them to their own."""
    if node.is_null():
        return None
    what = "cost_regression (the share by which the candidate may exceed the baseline)"
    if not node.is_mapping():
        share = node.number(what, positive=True, maximum=MAX_COST_REGRESSION)
        return dict.fromkeys(JUDGED, share)
    entries = node.mapping("cost_regression", optional=JUDGED)
    if not entries:
        raise node.error(
            "cost_regression names no metric", f"e.g. {{cpu: 0.25}}; metrics: {', '.join(JUDGED)}"
        )
    return {
        key: value.number(f"cost_regression.{key}", positive=True, maximum=MAX_COST_REGRESSION)
        for key, value in entries.items()
    }
