"""A matrix's scenario settings (``scenario:``, and ``scenario:`` in ``include`` entries): each
key checked for its type and bounds, with the node it came from.

The nodes are kept because some settings can only be judged per cell, once the cell's image is
known: ``verifier`` (Driver Verifier, a Windows tool) on a Linux image is an error at the
``verifier`` line that put it there (:class:`compatlab.matrix.expand.CellMaker`).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from compatlab._yaml import Node
from compatlab.guest.verifier import UnsafeDriverName, driver_names
from compatlab.matrix.model import ScenarioSettings

__all__ = [
    "MAX_BOOT_REGRESSION",
    "MAX_COUNTS",
    "MAX_SECONDS",
    "MAX_VERIFIED_DRIVERS",
    "scenario_overrides",
]

# Bounds on what a run can use. Past them a value is a typo or an attack: boots: 10^38 never
# ends, boot_timeout: .inf never times out and 1e300 overflows a timer.
MAX_COUNTS = {"boots": 100, "boot_loop": 100, "reruns": 10}
MAX_SECONDS = 86_400.0  # a day: longer than any boot or bake a lab waits for
MAX_BOOT_REGRESSION = 100.0
# Driver Verifier slows every call into a verified driver: a handful is what a lab verifies.
MAX_VERIFIED_DRIVERS = 32

_SCENARIO_KEYS = {f.name for f in fields(ScenarioSettings)}


def scenario_overrides(node: Node) -> tuple[dict[str, Any], dict[str, Node]]:
    """The settings a ``scenario`` mapping sets, each value checked for its type, and the
    node of each (what only a cell can break is reported there)."""
    entries = node.mapping("scenario", optional=sorted(_SCENARIO_KEYS))
    return {key: _scenario_value(key, value) for key, value in entries.items()}, entries


def _verifier(node: Node) -> tuple[str, ...]:
    """Driver names for Driver Verifier: plain ``*.sys`` image names; ``[]`` turns it off (in an
    include entry, for the cells it matches)."""
    items = node.items("verifier")
    if not items:
        return ()
    if len(items) > MAX_VERIFIED_DRIVERS:
        raise node.error(f"verifier names {len(items)} drivers, more than {MAX_VERIFIED_DRIVERS}")
    names = []
    for item in items:
        name = item.text("driver name")
        try:
            driver_names([name])
        except UnsafeDriverName as exc:
            raise item.error(
                str(exc), "Driver Verifier takes image names such as sensor.sys"
            ) from exc
        names.append(name)
    return driver_names(names)


def _scenario_value(key: str, value: Node) -> Any:
    if key == "verifier":
        return _verifier(value)
    if key in MAX_COUNTS:
        return value.integer(key, minimum=1, maximum=MAX_COUNTS[key])
    if key in ("boot_timeout", "bake"):
        return value.number(key, positive=True, maximum=MAX_SECONDS)
    if key == "boot_regression":
        return (
            None if value.is_null() else value.number(key, minimum=1, maximum=MAX_BOOT_REGRESSION)
        )
    if key == "baseline":
        return value.choice(("always", "on_failure", "never"), "baseline")
    return value.flag(key)
