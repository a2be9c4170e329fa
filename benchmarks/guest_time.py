"""Where a cell's seconds go, from its own results.json timeline (issue 12: "every guest second
is attributed"). Pure: a cell's JSON in, seconds per activity out.

A cell may have several VMs -- the builder of its cached layer (``attempt-1-layer/`` events), its
attempt (unprefixed), baseline reruns (``rerun-1/``) -- each with a timeline of its own clock.
Each VM's timeline is cut at its events, and each slice goes to the activity in progress when it
began:

- ``provision``: from the VM's ``provision`` phase to its ``started`` event: compatlab making the
  overlay (on the golden image or a cached layer), copying firmware and TPM state, defining and
  starting the domain;
- ``restore``: a start from a memory layer: copying and renaming its save image and libvirt's
  restore (the seconds the ``memory_restored`` note gives, taken out of ``provision``), then
  from ``started``/``restored`` to the channel's ``agent_ready``;
- ``save``: a memory layer's builder saving the running guest (up to libvirt's
  ``stopped``/``saved``, or the ``memory_saved`` note, whichever comes first);
- ``boot``: from ``started`` or a ``reboot`` to the channel's ``agent_ready``;
- ``shutdown``: from a ``reboot_requested``/``shutdown_requested`` to the ``reboot``/``stopped``
  that follows: the guest's own shutdown;
- ``bake``: the scenario's deliberate wait with the guest up, ``bake`` seconds after each
  completed boot of the baseline and boots phases;
- ``install``: the products', the candidate's and the uninstaller's runs (their phases, minus
  boots and shutdowns);
- ``checks``: health checks and the user's checks (the rest of baseline, boots and checks);
- ``overhead``: what no guest activity explains: the cell's seconds minus all of the above
  (evidence, removing VMs, the runner's bookkeeping, power cycles of crashed guests).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ACTIVITIES", "attribute", "before_install", "vm_timelines"]

ACTIVITIES = (
    "provision",
    "restore",
    "boot",
    "shutdown",
    "save",
    "bake",
    "install",
    "checks",
    "overhead",
)
_INSTALLING = {"products", "install", "rollback"}
_BAKING = {"baseline", "boots"}
_ECHO = 0.5  # libvirt reports one warm reset as two REBOOT events this close together


def vm_timelines(events: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The cell's events per VM (its label; "" for the deciding VM), in time order."""
    out: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for event in events:
        source = str(event["source"])
        label = source.rsplit("/", 1)[0] if "/" in source else ""
        out[label].append(event)
    for timeline in out.values():
        timeline.sort(key=lambda e: float(e["t"]))
    return dict(out)


def _vm(events: list[Mapping[str, Any]], bake: float) -> dict[str, float]:
    spent: dict[str, float] = defaultdict(float)
    phase, doing, since, baked = "", "overhead", 0.0, 0.0
    last_reboot, up = -1.0, False
    cached = any(e["kind"] == "cached_layer" for e in events)
    for event in events:
        t, kind = float(event["t"]), str(event["kind"])
        if kind == "reboot" and t - last_reboot < _ECHO:
            continue
        # Close the slice in progress, splitting a bake off the front of an up guest's wait.
        span = max(t - since, 0.0)
        saved = kind == "memory_saved" or (kind == "stopped" and event.get("detail") == "saved")
        if saved and doing == "up":
            doing = "save"  # the builder's last act: saving the guest it had up
        if doing == "up":
            take = min(span, max(bake - baked, 0.0))
            spent["bake"] += take
            baked += take
            spent["checks"] += span - take
        else:
            spent[doing] += span
        since = t
        if kind == "phase":
            phase = str(event["detail"])
            if phase == "provision":
                doing = "provision"
            elif phase == "baseline" and up and cached:  # its first boot was the baseline's
                doing, baked = "up", 0.0
            else:
                doing = _doing(phase)
        elif kind == "started" and event.get("detail") == "restored":
            doing, up = "restore", False
        elif kind == "memory_restored":
            data = event.get("data") or {}
            moved = float(data.get("copy_seconds", 0)) + float(data.get("restore_seconds", 0))
            moved = min(moved, spent["provision"])
            spent["provision"] -= moved
            spent["restore"] += moved
        elif kind in ("started", "reboot"):
            last_reboot = t if kind == "reboot" else last_reboot
            doing, up = "boot", False
        elif kind == "agent_ready" and doing in ("boot", "restore"):
            baked, up = 0.0, True
            doing = "up" if phase in _BAKING else _doing(phase)
        elif kind in ("reboot_requested", "shutdown_requested"):
            doing, up = "shutdown", False
        elif kind == "stopped" or saved:
            doing, up = "overhead", False
    return dict(spent)


def _doing(phase: str) -> str:
    if phase in _INSTALLING:
        return "install"
    if phase in _BAKING or phase == "checks":
        return "checks"
    return "overhead"


def attribute(cell: Mapping[str, Any], bake: float) -> dict[str, float]:
    """Seconds per activity over all of the cell's VMs; they add up to the cell's seconds."""
    total: dict[str, float] = dict.fromkeys(ACTIVITIES, 0.0)
    for timeline in vm_timelines(cell["events"]).values():
        for activity, seconds in _vm(timeline, bake).items():
            total[activity] += seconds
    explained = sum(v for k, v in total.items() if k != "overhead")
    total["overhead"] = max(float(cell["seconds"]) - explained, 0.0)
    return {k: round(v, 2) for k, v in total.items()}


def before_install(cell: Mapping[str, Any]) -> float | None:
    """Seconds of the cell before its candidate's install began: its layer's builder (when it
    built one) plus its own VM up to the ``install`` phase; None when it never got there."""
    timelines = vm_timelines(cell["events"])
    own = timelines.get("", [])
    start = next(
        (float(e["t"]) for e in own if e["kind"] == "phase" and e["detail"] == "install"), None
    )
    if start is None:
        return None
    builders = [label for label in timelines if label.endswith("-layer")]
    built = sum(max(float(e["t"]) for e in timelines[label]) for label in builders)
    return round(start + built, 2)
