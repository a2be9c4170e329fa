"""The lab fails under running cells: libvirtd restarted, virtlogd killed, the storage folder
full, the golden image removed (real VMs, slow).

Each scenario has its own private lab (tests/support/privatelab.py): a libvirtd and a virtlogd in
their own mount and network namespaces, and its own storage root, so a fault here never reaches
the system daemons or anyone else's cells, and everything left on the lab afterwards is the
run's. The fault is fired on the guest's cue (a line in its serial log), so it lands in the
phase it is meant for however slow the guests are.

The rule every scenario checks: the lab failing is never a verdict on the candidate -- the cell
is retried on a fresh VM and ends ``pass`` (the lab came back) or ``infra_error`` with the
reason; a guest that was not hurt keeps its honest verdict -- every selected cell has exactly
one result in results.json, and nothing is left: no domain, no cell folder or disk, no QEMU
process, no listening port.

Cells: tinylinux-a on bios-1cpu, the demo candidate (acme-sensor 7.11.1, harmless without
other-edr), one boot after the install, no rollback. ``boot N started`` on the serial console:
1 is provisioning, 2 the baseline, 3 the first boot after the install.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.faultrun import (
    FaultRun,
    Leftovers,
    Outcome,
    Trigger,
    fill,
    leftovers,
    mount_tmpfs,
    run_matrix,
    scenario,
    world_traversable_folder,
    write_matrix,
)
from tests.support.matrixrun import GOLDEN, ROOT, events
from tests.support.privatelab import PrivateLab

pytestmark = pytest.mark.slow

NONE_ID = "tinylinux-a/bios-1cpu/none"
AV_ID = "tinylinux-a/bios-1cpu/acme-av"
CANDIDATE = "acme-sensor-7.11.1"


def boot(n: int) -> str:
    return f"compatlab-guest: boot {n} started"


def the_only_result(run: FaultRun, matrix: str, cell_id: str) -> dict[str, Any]:
    """The cell's one result, in a run that finished and lost nothing."""
    assert run.results is not None, f"{run.name}: no results.json:\n{run.output[-3000:]}"
    assert run.results["run"]["complete"] is True, run.output[-3000:]
    return run.cell(matrix, cell_id)  # asserts exactly one


def assert_lab_failure(cell: dict[str, Any]) -> None:
    """A lab failure: retried on a fresh VM, then pass or infra_error -- never the candidate's."""
    assert cell["verdict"] in ("pass", "infra_error"), (cell["verdict"], cell["reason"])
    assert cell["attempts"] == 2, "the attempt the lab broke is retried on a fresh VM"
    if cell["verdict"] == "infra_error":
        assert (cell["attribution"], cell["bugcheck"]) == ("infra", None)
        assert cell["reason"].startswith("infra error: ")
    else:
        assert cell["attribution"] is None


def assert_nothing_left(outcome: Outcome) -> None:
    assert outcome.leftovers == Leftovers(), outcome.leftovers


# -- libvirtd restarted mid-boot -------------------------------------------------------------------


@scenario("libvirtd-restart", order=20)
def _libvirtd_restart(folder: Path) -> Outcome:
    """``systemctl restart libvirtd`` while the golden image boots: the guest keeps running, the
    runner's connection drops and comes back; the new daemon finds the guest again."""
    with world_traversable_folder("restart") as base:
        lab = PrivateLab.start(folder / "lab", base / "storage")
        try:
            matrix = write_matrix(folder / "matrices", "restart", CANDIDATE)
            run = run_matrix(
                "restart",
                folder,
                ["--matrix", str(matrix)],
                lab=lab,
                triggers=[Trigger("restart", boot(1), lambda _: lab.restart_libvirtd())],
            )
            return Outcome("libvirtd-restart", {"run": run}, leftovers(lab))
        finally:
            lab.close()


@pytest.fixture(scope="module")
def restart(campaign: Any) -> Outcome:
    return campaign.get("libvirtd-restart")  # type: ignore[no-any-return]


@pytest.mark.scenario("libvirtd-restart")
@pytest.mark.fault("libvirtd restarted mid-boot")
def test_libvirtd_restarted_mid_boot_is_retried_never_the_candidates(restart: Outcome) -> None:
    run = restart.runs["run"]
    assert run.fired["restart"] is not None, f"never restarted:\n{run.output[-3000:]}"
    cell = the_only_result(run, "restart.yaml", NONE_ID)
    assert_lab_failure(cell)
    # The first attempt saw the connection go: a lab failure, told as such.
    lost = [e for e in cell["events"] if e["kind"] == "connection_lost"]
    assert lost and all(e["source"].startswith("attempt-1/") for e in lost), cell["events"]


@pytest.mark.scenario("libvirtd-restart")
def test_libvirtd_restart_leaves_nothing(restart: Outcome) -> None:
    """The first attempt's guest lived on under the restarted daemon: it must be gone too."""
    assert_nothing_left(restart)


# -- virtlogd killed ---------------------------------------------------------------------------


@scenario("virtlogd-killed", order=24)
def _virtlogd_killed(folder: Path) -> Outcome:
    """virtlogd SIGKILLed while the first of two cells boots (the second runs after it)."""
    with world_traversable_folder("virtlogd") as base:
        lab = PrivateLab.start(folder / "lab", base / "storage")
        try:
            matrix = write_matrix(
                folder / "matrices", "virtlogd", CANDIDATE, products=((), ("acme-av",))
            )
            run = run_matrix(
                "virtlogd",
                folder,
                ["--matrix", str(matrix)],
                lab=lab,
                triggers=[Trigger("kill", boot(1), lambda _: lab.kill_virtlogd(), cell=NONE_ID)],
            )
            return Outcome("virtlogd-killed", {"run": run}, leftovers(lab))
        finally:
            lab.close()


@pytest.fixture(scope="module")
def virtlogd(campaign: Any) -> Outcome:
    return campaign.get("virtlogd-killed")  # type: ignore[no-any-return]


@pytest.mark.scenario("virtlogd-killed")
@pytest.mark.fault("virtlogd killed")
def test_virtlogd_killed_under_a_running_guest_then_no_guest_can_start(virtlogd: Outcome) -> None:
    """What happens: the running guest does not need virtlogd to run, and passes (its boots
    complete through the agent); every domain start after the kill fails in libvirt ("Failed
    to connect socket to '/run/libvirt/virtlogd-sock'"), so the next cell is the lab's
    failure: retried, then infra_error with that reason. No init system restarts virtlogd
    here. (What the running guest's console loses: the next test.)"""
    run = virtlogd.runs["run"]
    assert run.fired["kill"] is not None, f"never killed:\n{run.output[-3000:]}"
    first = the_only_result(run, "virtlogd.yaml", NONE_ID)
    assert (first["verdict"], first["attempts"]) == ("pass", 1), first["reason"]
    second = the_only_result(run, "virtlogd.yaml", AV_ID)
    assert_lab_failure(second)
    assert second["verdict"] == "infra_error"
    assert "virtlogd" in second["reason"], second["reason"]


@pytest.mark.scenario("virtlogd-killed")
def test_virtlogd_killed_the_running_guests_console_is_still_kept(virtlogd: Outcome) -> None:
    run = virtlogd.runs["run"]
    first = the_only_result(run, "virtlogd.yaml", NONE_ID)
    serial = run.run.serial(first)
    assert "compatlab-guest: boot 3 started" in serial, serial[-1500:]


@pytest.mark.scenario("virtlogd-killed")
def test_virtlogd_killed_leaves_nothing(virtlogd: Outcome) -> None:
    assert_nothing_left(virtlogd)


# -- the storage folder full -------------------------------------------------------------------


@scenario("storage-full-at-start", guests=0, order=0)
def _storage_full_at_start(folder: Path) -> Outcome:
    """A tmpfs storage root with no room at all, then with room for a small file but not for
    an overlay: no guest ever starts."""
    with world_traversable_folder("full") as base:
        storage = base / "storage"
        mount_tmpfs(storage, "8m")
        lab = PrivateLab.start(folder / "lab", storage)
        try:
            matrix = write_matrix(folder / "matrices", "full", CANDIDATE)
            runs, new = {}, {}
            before = leftovers(lab).as_json()
            for name, leave in (("no-room", 0), ("little-room", 64 * 1024)):
                (storage / "filler").unlink(missing_ok=True)
                fill(storage, leave=leave)
                runs[name] = run_matrix(name, folder, ["--matrix", str(matrix)], lab=lab)
                after = leftovers(lab).as_json()
                new[name] = {k: [x for x in v if x not in before[k]] for k, v in after.items()}
                before = after
            (storage / "filler").unlink(missing_ok=True)
            return Outcome("storage-full-at-start", runs, leftovers(lab), {"left_by": new})
        finally:
            lab.close()


@scenario("storage-full-mid-run", order=14)
def _storage_full_mid_run(folder: Path) -> Outcome:
    """A tmpfs storage root filled up while the first boot after the install runs: the next
    write of the guest's disk (its overlay) finds no room."""
    with world_traversable_folder("fullmid") as base:
        storage = base / "storage"
        mount_tmpfs(storage, "128m")
        lab = PrivateLab.start(folder / "lab", storage)
        try:
            matrix = write_matrix(
                folder / "matrices",
                "fullmid",
                CANDIDATE,
                # No rerun without the candidate: what is judged is that the lab's failure is
                # told as such; a rerun would run on the space the failed VM freed.
                scenario={"boots": 2, "boot_timeout": 90, "baseline": "never"},
            )
            run = run_matrix(
                "fullmid",
                folder,
                ["--matrix", str(matrix)],
                lab=lab,
                triggers=[Trigger("fill", boot(3), lambda _: fill(storage))],
            )
            left = leftovers(lab)
            (storage / "filler").unlink(missing_ok=True)
            return Outcome("storage-full-mid-run", {"run": run}, left)
        finally:
            lab.close()


@pytest.fixture(scope="module")
def full_at_start(campaign: Any) -> Outcome:
    return campaign.get("storage-full-at-start")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def full_mid_run(campaign: Any) -> Outcome:
    return campaign.get("storage-full-mid-run")  # type: ignore[no-any-return]


@pytest.mark.scenario("storage-full-at-start")
@pytest.mark.fault("storage folder full before the run")
def test_storage_full_before_the_run_is_infra_error_saying_so(full_at_start: Outcome) -> None:
    for name, run in full_at_start.runs.items():
        cell = the_only_result(run, "full.yaml", NONE_ID)
        assert (cell["verdict"], cell["attribution"]) == ("infra_error", "infra"), (
            name,
            cell["reason"],
        )
        reason = cell["reason"]
        assert "disk full" in reason or "No space left" in reason, (name, reason)
        assert not cell["boots"], "no guest started"


@pytest.mark.scenario("storage-full-at-start")
def test_storage_full_before_the_run_leaves_nothing(full_at_start: Outcome) -> None:
    """Not even the run folder: a folder without its owner.json would be kept by every reaper."""
    assert full_at_start.notes["left_by"] == {
        name: Leftovers().as_json() for name in ("no-room", "little-room")
    }


@pytest.mark.scenario("storage-full-mid-run")
@pytest.mark.fault("storage folder full mid-run")
def test_storage_full_mid_run_is_infra_error_not_a_hang(full_mid_run: Outcome) -> None:
    run = full_mid_run.runs["run"]
    assert run.fired["fill"] is not None, f"never filled:\n{run.output[-3000:]}"
    cell = the_only_result(run, "fullmid.yaml", NONE_ID)
    assert (cell["verdict"], cell["attribution"]) == ("infra_error", "infra"), (
        cell["verdict"],
        cell["attribution"],
        cell["reason"],
    )
    reason = cell["reason"]
    assert "disk full" in reason or "No space left" in reason or "I/O error" in reason, reason


@pytest.mark.scenario("storage-full-mid-run")
def test_storage_full_mid_run_leaves_nothing(full_mid_run: Outcome) -> None:
    assert_nothing_left(full_mid_run)


# -- the golden image removed mid-run --------------------------------------------------------


@scenario("golden-removed", order=22)
def _golden_removed(folder: Path) -> Outcome:
    """A catalog whose tinylinux-a disk is a copy; the copy is deleted while the first of two
    cells boots from it. The second cell starts after the first has finished."""
    with world_traversable_folder("golden") as base:
        disk = base / "tinylinux-a.qcow2"
        shutil.copyfile(GOLDEN, disk)
        disk.chmod(0o644)
        images = folder / "catalog"
        images.mkdir(parents=True)
        entry = (ROOT / "images" / "tinylinux-a.yaml").read_text()
        (images / "tinylinux-a.yaml").write_text(entry.replace(str(GOLDEN), str(disk)))
        assert str(disk) in (images / "tinylinux-a.yaml").read_text()
        lab = PrivateLab.start(folder / "lab", base / "storage")
        try:
            matrix = write_matrix(
                folder / "matrices",
                "golden",
                CANDIDATE,
                products=((), ("acme-av",)),
                images=images,
            )
            run = run_matrix(
                "golden",
                folder,
                ["--matrix", str(matrix)],
                lab=lab,
                triggers=[Trigger("remove", boot(1), lambda _: disk.unlink(), cell=NONE_ID)],
            )
            return Outcome("golden-removed", {"run": run}, leftovers(lab), {"disk": str(disk)})
        finally:
            lab.close()


@pytest.fixture(scope="module")
def golden(campaign: Any) -> Outcome:
    return campaign.get("golden-removed")  # type: ignore[no-any-return]


@pytest.mark.scenario("golden-removed")
@pytest.mark.fault("golden image removed mid-run")
def test_golden_image_removed_mid_run_is_infra_error_for_the_cells_it_stops(
    golden: Outcome,
) -> None:
    """The guest that was booting holds its backing file open and is tested to the end (its
    pass is the truth); the next cell cannot be provisioned: retried, then infra_error naming
    the missing image -- never a verdict on the candidate."""
    run = golden.runs["run"]
    assert run.fired["remove"] is not None, f"never removed:\n{run.output[-3000:]}"
    first = the_only_result(run, "golden.yaml", NONE_ID)
    assert (first["verdict"], first["attempts"]) == ("pass", 1), first["reason"]
    second = the_only_result(run, "golden.yaml", AV_ID)
    assert_lab_failure(second)
    assert second["verdict"] == "infra_error"
    assert golden.notes["disk"] in second["reason"] and "does not exist" in second["reason"]
    assert not second["boots"] and not events(second, "started")


@pytest.mark.scenario("golden-removed")
def test_golden_image_removed_leaves_nothing(golden: Outcome) -> None:
    assert_nothing_left(golden)
