"""Every second of a cell attributed to what the guest or compatlab was doing (issue 12), on a
timeline shaped like a real cached cell's (benchmarks/guest_time.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.guest_time import attribute, before_install, vm_timelines


def ev(t: float, source: str, kind: str, detail: str = "") -> dict[str, Any]:
    return {"t": t, "source": source, "kind": kind, "detail": detail}


BUILDER = [
    ev(0.0, "attempt-1-layer/scenario", "phase", "provision"),
    ev(1.0, "attempt-1-layer/libvirt", "started", "booted"),
    ev(11.0, "attempt-1-layer/channel", "agent_ready"),
    ev(11.0, "attempt-1-layer/scenario", "phase", "products"),
    ev(14.0, "attempt-1-layer/scenario", "phase", "baseline"),
    ev(14.0, "attempt-1-layer/scenario", "reboot_requested"),
    ev(16.0, "attempt-1-layer/libvirt", "reboot"),
    ev(16.1, "attempt-1-layer/libvirt", "reboot"),  # the warm reset's echo
    ev(26.0, "attempt-1-layer/channel", "agent_ready"),
    ev(26.0, "attempt-1-layer/scenario", "shutdown_requested"),
    ev(29.0, "attempt-1-layer/libvirt", "stopped", "shutdown"),
]
CELL = [
    ev(0.0, "engine", "placed"),
    ev(0.0, "scenario", "phase", "provision"),
    ev(0.0, "scenario", "cached_layer", "from cached layer 0123"),
    ev(0.5, "libvirt", "started", "booted"),
    ev(10.5, "channel", "agent_ready"),
    ev(10.5, "scenario", "phase", "products"),
    ev(10.5, "scenario", "phase", "baseline"),
    ev(17.5, "scenario", "phase", "install"),  # 5 s bake, then 2 s of health checks
    ev(20.5, "scenario", "phase", "boots"),
    ev(20.5, "scenario", "reboot_requested"),
    ev(22.5, "libvirt", "reboot"),
    ev(32.5, "channel", "agent_ready"),
    ev(38.5, "scenario", "phase", "checks"),  # 5 s bake, then 1 s before the checks phase
    ev(40.5, "scenario", "phase", "rollback"),
]


def test_each_vm_keeps_its_own_timeline() -> None:
    timelines = vm_timelines(BUILDER + CELL)
    assert sorted(timelines) == ["", "attempt-1-layer"]
    assert len(timelines["attempt-1-layer"]) == len(BUILDER)


def test_every_second_is_attributed_and_they_add_up_to_the_cells() -> None:
    spent = attribute({"events": BUILDER + CELL, "seconds": 75.0}, bake=5.0)
    assert spent == {
        "provision": 1.5,  # 1.0 builder + 0.5 cell: overlay, seeding, define, start
        "restore": 0.0,
        "boot": 40.0,  # builder 10 + 10; cell 10 from the layer + 10
        "shutdown": 7.0,  # builder: its reboot 2 s, its clean power-off 3 s; cell: 2 s
        "save": 0.0,
        "bake": 10.0,  # the cell's baseline bake right after its first boot, and boot 1's
        "install": 6.0,  # products 3 s (builder), candidate 3 s
        "checks": 5.0,  # baseline health 2 s, 1 s after boot 1's bake, the checks phase 2 s
        "overhead": 5.5,  # the rest of the cell's 75 s: rollback, evidence, teardown
    }
    assert round(sum(spent.values()), 2) == 75.0


def test_time_before_the_install_counts_the_builder() -> None:
    assert before_install({"events": BUILDER + CELL}) == 29.0 + 17.5
    assert before_install({"events": CELL}) == 17.5
    assert before_install({"events": BUILDER}) is None


# A memory layer: the builder saves its running guest; the cell restores it and never boots
# before the candidate.
MEMORY_BUILDER = [*BUILDER[:9], ev(28.0, "attempt-1-layer/libvirt", "stopped", "saved")]
MEMORY_BUILDER.append(
    {**ev(28.1, "attempt-1-layer/scenario", "memory_saved", "memory state saved in 2.0 s")}
)
MEMORY_CELL = [
    ev(0.0, "scenario", "phase", "provision"),
    ev(0.0, "scenario", "cached_layer", "from cached layer 0123"),
    ev(0.8, "libvirt", "started", "restored"),
    {
        **ev(0.85, "scenario", "memory_restored", "restored"),
        "data": {"copy_seconds": "0.050", "restore_seconds": "0.600"},
    },
    ev(1.0, "channel", "agent_ready"),
    ev(1.0, "scenario", "phase", "products"),
    ev(1.0, "scenario", "phase", "baseline"),
    ev(8.0, "scenario", "phase", "install"),  # 5 s bake, then 2 s of health checks
    ev(10.0, "scenario", "phase", "rollback"),
]


def test_a_memory_layers_save_and_restore_are_their_own_activities() -> None:
    spent = attribute({"events": MEMORY_BUILDER + MEMORY_CELL, "seconds": 40.0}, bake=5.0)
    assert spent["save"] == 2.0  # from the builder's completed baseline boot to stopped/saved
    assert spent["restore"] == 0.85  # copy and restore 0.65, then 0.2 resumed to the agent
    assert spent["provision"] == 1.15  # the builder 1.0; the cell 0.15: overlay, define
    assert spent["boot"] == 20.0  # the builder's two boots; the cell booted none
    assert spent["bake"] == 5.0 and spent["checks"] == 2.0
    assert round(sum(spent.values()), 2) == 40.0
