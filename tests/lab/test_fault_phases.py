"""Faults outside the boots after an install, on real VMs: the verdicts issue 7 asks for (slow).

Four fault demos, each a real fault of a tiny-linux guest (payloads/README.md):

* ``matrix/demo-install-crash.yaml`` -- Acme Sensor 7.11.2 "live" applies its content while its
  installer runs; next to other-edr the kernel panics during the install command, then at every
  boot. The candidate's: ``boot_loop`` or ``crash``, never retried as the lab's failure;
* ``matrix/demo-baseline-crash.yaml`` -- flaky-edr's driver panics the baseline boot, before
  the (innocent) candidate is installed: ``crash`` attributed to ``baseline``;
* ``matrix/demo-rollback-crash.yaml`` -- the candidate's uninstaller panics the kernel:
  ``rollback_failed`` attributed to the candidate, with the crash's evidence;
* ``matrix/demo-agent-dead.yaml`` -- a hardening update kills the guest agent: the guest boots
  fully, its channel is dead. A failure that says so, not ``hang``.

These assert the *correct* verdicts, and were written to fail on the code before issue 7's fix.
Each demo run alone on that code (commit e8b257b, 2 cores, TCG): install-crash and rollback-crash
ended ``infra_error [infra]`` after two attempts (the panic was in the event timeline, unread);
agent-dead ended ``hang [candidate]``. baseline-crash ended ``crash [baseline]``, right by
accident: the baseline crash was counted against the candidate, and only the rerun's own
baseline crash turned the attribution round. So its test passes on that code too; the wrong
path itself needs a recorded timeline (a unit test), not a real guest.

Two of the faults then run from cached pre-candidate layers (issue 12), built from an empty
cache of their own: verdicts, attributions and crash signatures must equal the fresh run's.

Like ``test_scenario.py``: one ``pytest --matrix`` subprocess, whose ``results.json`` the tests
read. The four cells run two at a time (``-n 2``): 7.2 min here (2 cores, TCG, another run's
guests on the same cores), on the code before the fix, which retries two of them.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.matrixrun import (
    STORAGE_ROOT,
    SYSTEM_URI,
    Run,
    events,
    is_png,
    leftover_domains,
    require_demo_lab,
    run_matrices,
)

pytestmark = pytest.mark.slow


INSTALL_CRASH = "matrix/demo-install-crash.yaml"
BASELINE_CRASH = "matrix/demo-baseline-crash.yaml"
ROLLBACK_CRASH = "matrix/demo-rollback-crash.yaml"
AGENT_DEAD = "matrix/demo-agent-dead.yaml"
OTHER_EDR_ID = "tinylinux-a/bios-1cpu/other-edr"
FLAKY_EDR_ID = "tinylinux-a/bios-1cpu/flaky-edr"
NONE_ID = "tinylinux-a/bios-1cpu/none"

# -- reading a cell's timeline ---------------------------------------------------------------------


def never_retried_after_a_crash(cell: dict[str, Any]) -> bool:
    """The deciding attempt is the one that crashed; no earlier (retried) attempt saw a crash."""
    earlier = [e for e in cell["events"] if e["source"].startswith("attempt-")]
    return bool(events(cell, "crashed")) and not any(e["kind"] == "crashed" for e in earlier)


def phase_at(cell: dict[str, Any], event: dict[str, Any]) -> str:
    """The runner's phase (its last ``phase`` event, same VM) when ``event`` happened."""
    rerun = event["source"].startswith("rerun-")
    before = [e for e in events(cell, "phase", rerun=rerun) if e["t"] <= event["t"]]
    assert before, f"no phase before {event}"
    return str(max(before, key=lambda e: e["t"])["detail"])


def phase_started(cell: dict[str, Any], prefix: str) -> float:
    """When the candidate VM's first phase whose text starts with ``prefix`` began."""
    starts = [e["t"] for e in events(cell, "phase") if str(e["detail"]).startswith(prefix)]
    assert starts, f"no {prefix!r} phase among {[e['detail'] for e in events(cell, 'phase')]}"
    return float(min(starts))


def screenshots(run: Run, cell: dict[str, Any]) -> list[Path]:
    """The cell's console screenshots (PNG files), whatever each is named after."""
    shots = [run.report / str(path) for key, path in cell["artifacts"].items() if "screen" in key]
    return [p for p in shots if p.is_file() and is_png(p)]


# -- the run ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_ready() -> None:
    """The fault demos' prerequisites (``make test`` builds them): without them, require_lab."""
    require_demo_lab(
        (
            "other-edr",
            "flaky-edr",
            "acme-sensor-7.11.1",
            "acme-sensor-7.11.2-live",
            "uninstall-crash-1.0",
            "agent-blocker-1.0",
        )
    )


@pytest.fixture(scope="module")
def faults(lab_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The four fault demos in one run, two cells at a time."""
    report = tmp_path_factory.mktemp("faults") / "report"
    return run_matrices(
        report,
        "-n",
        "2",
        "--matrix",
        INSTALL_CRASH,
        "--matrix",
        BASELINE_CRASH,
        "--matrix",
        ROLLBACK_CRASH,
        "--matrix",
        AGENT_DEAD,
    )


def test_fault_run_has_one_result_per_cell_and_leaves_nothing(faults: Run) -> None:
    ran = sorted((Path(c["matrix"]).name, c["id"]) for c in faults.results["cells"])
    assert ran == sorted(
        [
            ("demo-install-crash.yaml", OTHER_EDR_ID),
            ("demo-baseline-crash.yaml", FLAKY_EDR_ID),
            ("demo-rollback-crash.yaml", NONE_ID),
            ("demo-agent-dead.yaml", NONE_ID),
        ]
    ), faults.output[-3000:]
    assert faults.returncode == 1  # failing cells are failed tests, nothing else went wrong
    run_id = faults.results["run"]["id"]
    assert sorted((STORAGE_ROOT / "cells").glob(f"{run_id}*")) == []


# -- a crash while the candidate's installer runs --------------------------------------------------


def test_crash_during_the_candidates_install_is_the_candidates_never_retried(faults: Run) -> None:
    cell = faults.cell(INSTALL_CRASH, OTHER_EDR_ID)
    assert cell["verdict"] in ("boot_loop", "crash"), cell["reason"]
    assert cell["attribution"] == "candidate", cell["reason"]
    # A crash after the candidate is the update's: the attempt that saw it is never retried
    # (an earlier attempt may have been the lab's -- a host too busy to let the guest boot).
    assert never_retried_after_a_crash(cell)
    crashed = events(cell, "crashed")
    assert crashed, "the panic during the install was not recorded"
    during = phase_at(cell, crashed[0])
    assert during == "install", f"first crash during {during!r}"
    install = [p for p in cell["phases"] if p["phase"] == "install"]
    assert install and install[0]["outcome"] in ("boot_loop", "crash"), cell["phases"]
    assert cell["bugcheck"] is not None and cell["bugcheck"]["code"] == "panic"
    # The rerun without the candidate (other-edr alone) booted clean.
    assert not events(cell, "crashed", rerun=True)
    serial = faults.serial(cell)
    assert "acme_sensor: 7.11.1 channel 291" in serial  # the content applied live
    assert "Kernel panic - not syncing" in serial


# -- a crash before the candidate: the configuration's ---------------------------------------------


def test_crash_at_the_baseline_boot_is_the_baselines_not_the_candidates(faults: Run) -> None:
    cell = faults.cell(BASELINE_CRASH, FLAKY_EDR_ID)
    assert (cell["verdict"], cell["attribution"]) == ("crash", "baseline"), cell["reason"]
    crashed = events(cell, "crashed")
    assert crashed, "flaky-edr's panic was not recorded"
    assert phase_at(cell, crashed[0]) == "baseline", phase_at(cell, crashed[0])
    assert [p["phase"] for p in cell["phases"]] == ["provision", "products", "baseline"]
    assert cell["reruns"] == []  # the candidate was never installed: nothing to compare
    assert "flaky_migrate_db" in faults.serial(cell)


# -- a crash while the candidate's uninstaller runs ------------------------------------------------


def test_crash_during_rollback_is_rollback_failed_with_its_evidence(faults: Run) -> None:
    cell = faults.cell(ROLLBACK_CRASH, NONE_ID)
    assert (cell["verdict"], cell["attribution"]) == ("rollback_failed", "candidate"), cell[
        "reason"
    ]
    assert never_retried_after_a_crash(cell)
    rollback = phase_started(cell, "rollback")
    assert [e for e in events(cell, "crashed") if e["t"] >= rollback], (
        "no crash recorded after the rollback started"
    )
    assert screenshots(faults, cell), f"no screenshot among {sorted(cell['artifacts'])}"
    assert cell["bugcheck"] is not None and cell["bugcheck"]["code"] == "panic"
    rollback_phase = [p for p in cell["phases"] if p["phase"] == "rollback"]
    assert rollback_phase and rollback_phase[0]["outcome"] == "crash", cell["phases"]
    assert "fence_flush_cache" in faults.serial(cell)


# -- the guest is up, its agent is dead ------------------------------------------------------------


def test_dead_agent_on_a_booted_guest_is_not_a_hang(faults: Run) -> None:
    cell = faults.cell(AGENT_DEAD, NONE_ID)
    assert cell["verdict"] == "check_failed", cell["reason"]
    assert cell["reason"].startswith("unreachable: "), cell["reason"]
    assert cell["attribution"] == "candidate", cell["reason"]
    assert re.search(r"agent|channel", cell["reason"], re.IGNORECASE), cell["reason"]
    serial = faults.serial(cell)
    assert "appguard: blocked qemu-ga" in serial
    # The boot after the install got through its services: the machine is up.
    after_install = serial[serial.index("appguard: 1.0 enforcing") :]
    assert "compatlab-guest: services started" in after_install


# -- the same faults from cached pre-candidate layers (issue 12) -----------------------------------


def outcome(cell: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """What a cached start must not change: verdict, attribution, crash signature."""
    signature = (cell.get("bugcheck") or {}).get("signature")
    return cell["verdict"], cell.get("attribution"), signature


@pytest.fixture(scope="module")
def cached(lab_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The July 2024 shape and the crashing uninstaller from an empty cache of their own: each
    configuration's layer is built by a builder VM, then the cell starts from it (restored
    from the layer's memory state: these guests are reached through their agent). (Reusing a
    layer in a later run is the store's: tests/unit/test_cache_store.py and
    test_layer_cells.py; a builder whose baseline crashes: test_layer_cells.py.) The folder
    goes at the end."""
    storage = Path(tempfile.mkdtemp(prefix="cache-test-", dir=STORAGE_ROOT))
    storage.chmod(0o755)  # the qemu user opens the layers by path
    lab = tmp_path_factory.mktemp("cached") / "lab.yaml"
    lab.write_text(f"storage: {storage}\n")
    try:
        yield run_matrices(
            tmp_path_factory.mktemp("cold") / "report",
            *("-n", "2", "--matrix-cache", "on", "--matrix-hosts", str(lab)),
            *("--matrix", INSTALL_CRASH, "--matrix", ROLLBACK_CRASH),
        )
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def test_a_cached_start_gives_the_verdicts_a_fresh_one_gives(faults: Run, cached: Run) -> None:
    ran = sorted((Path(c["matrix"]).name, c["id"]) for c in cached.results["cells"])
    assert ran == [("demo-install-crash.yaml", OTHER_EDR_ID), ("demo-rollback-crash.yaml", NONE_ID)]
    for cell in cached.results["cells"]:
        fresh = faults.cell(cell["matrix"], cell["id"])
        assert outcome(cell) == outcome(fresh), (cell["matrix"], cell["reason"], fresh["reason"])
        # The candidate's VM started from the layer a builder made, not from the golden image.
        started = [e["detail"] for e in events(cell, "cached_layer")]
        assert any(s.startswith("from cached layer ") for s in started), cell["events"][:5]
        built = [e for e in cell["events"] if e["source"].startswith("attempt-1-layer/")]
        assert built, "no builder VM ran for an empty cache"
        # Agent guests: the builder saved its running guest and the cell restored it -- no boot
        # before the candidate's, the clock set from the host's.
        assert [e for e in built if e["kind"] == "memory_saved"], "the builder saved no memory"
        assert events(cell, "memory_restored"), cell["events"][:8]
        assert events(cell, "clock_set")
        # Boot 0 is the layer's baseline boot (its builder's), the reference for the sign-off;
        # the restore is the provision's, never taken for a baseline boot.
        kinds = [(b.get("kind", "boot"), b.get("phase")) for b in cell["boots"]]
        assert kinds[:2] == [("layer", "baseline"), ("restore", "provision")], cell["boots"][:3]
    assert leftover_domains(SYSTEM_URI, cached.run_id) == []
