"""Guests that misbehave in ways the lab must survive: the guest agent killed inside the guest,
a guest that floods its serial console (real VMs, slow).

Both are candidates built for it (payloads/agent-killer-1.0, payloads/console-flood-1.0), each
on its own private lab (tests/support/privatelab.py), tinylinux-a on bios-1cpu:

* agent-killer kills qemu-ga once, a few seconds into the first boot after the install, after
  that boot completed. Nothing in the guest restarts it. Compare
  ``matrix/demo-agent-dead.yaml`` (agent-blocker: the agent is killed at every boot, so it never
  answers; ``check_failed``, "unreachable", tests/lab/test_fault_phases.py): here the agent
  answered, then died while the guest baked, and the next thing the lab asks of it -- the
  reboot that starts the second boot -- cannot reach the guest.
* console-flood writes to /dev/console as fast as the serial port takes it. The guest is
  otherwise fine: ``pass``. Two things are at stake:

  - the runner's memory. Its resident memory (``VmHWM`` of the pytest process, reset when the
    flood starts) must not grow with the serial log: the log is tailed, copied and shown in
    bounded pieces, never read whole. An emulated 16550 UART under TCG is slow -- 60-80 kB/s
    here, at 100% of the guest's vCPU -- far from the hundreds of MiB a guest crash-looping for
    hours leaves (issue 8 measured 736 MiB of RSS for a 300 MiB log). So when the guest starts
    flooding (256 KiB, after its agent started), the test appends :data:`BULK` of console text
    to the cell's serial log on the host, the file the console goes to, as if the guest had
    flooded for hours; the runner reads that file exactly as it reads the guest's output.
  - the evidence. libvirt (9.0, ``stdio_handler = "logd"``, the default) hands a
    ``<serial type='file'>`` to virtlogd, which rotates it at 2 MiB of the guest's output
    (``serial.log.0``, ``.1``, ``.2``, then the oldest is deleted). A candidate whose
    installer writes 2.5 MiB to the console must still leave the whole console in the report --
    the first boot's lines included -- not only what came after the last rotation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.faultrun import (
    Leftovers,
    Outcome,
    Trigger,
    leftovers,
    run_matrix,
    scenario,
    world_traversable_folder,
    write_matrix,
)
from tests.support.privatelab import PrivateLab

pytestmark = pytest.mark.slow

NONE_ID = "tinylinux-a/bios-1cpu/none"
MiB = 1024 * 1024

# -- the guest agent killed inside the guest -----------------------------------------------------


@scenario("agent-killed", order=10)
def _agent_killed(folder: Path) -> Outcome:
    with world_traversable_folder("agent") as base:
        lab = PrivateLab.start(folder / "lab", base / "storage")
        try:
            matrix = write_matrix(
                folder / "matrices",
                "agent",
                "agent-killer-1.0",
                # Two boots after the install: the agent dies in the first one's bake, the
                # second needs the agent to be asked for. The boot timeout is also how long
                # the lab waits for a reset it asked for. No rerun without the candidate: four
                # boots more, and the verdict and its reason are what is judged here.
                scenario={"boots": 2, "bake": 12, "boot_timeout": 90, "baseline": "never"},
            )
            run = run_matrix(
                "agent",
                folder,
                ["--matrix", str(matrix)],
                lab=lab,
                triggers=[Trigger("killed", "agent-killer: killed qemu-ga", cell=NONE_ID)],
            )
            return Outcome("agent-killed", {"run": run}, leftovers(lab))
        finally:
            lab.close()


@pytest.fixture(scope="module")
def agent(campaign: Any) -> Outcome:
    return campaign.get("agent-killed")  # type: ignore[no-any-return]


@pytest.mark.scenario("agent-killed")
@pytest.mark.fault("guest agent killed inside the guest")
def test_agent_killed_once_is_the_candidates_and_says_the_agent_died(agent: Outcome) -> None:
    """The candidate killed the lab's channel into a guest that is up. The right verdict says
    so: ``check_failed`` with a reason that says the guest is unreachable (as for the
    permanent kill of demo-agent-dead) -- not a ``hang`` (the guest never hung; the lab's
    reboot request never reached it), not ``infra_error`` (the lab did not fail), not
    ``pass``. Attributed ``unconfirmed``: no rerun was asked (``baseline: never``)."""
    run = agent.runs["run"]
    assert run.fired["killed"] is not None, f"the agent was never killed:\n{run.output[-3000:]}"
    assert run.results is not None and run.results["run"]["complete"] is True
    cell = run.cell("agent.yaml", NONE_ID)
    serial = run.run.serial(cell)
    assert "agent-killer: killed qemu-ga" in serial
    assert (cell["verdict"], cell["attribution"]) == ("check_failed", "unconfirmed"), (
        cell["verdict"],
        cell["attribution"],
        cell["reason"],
    )
    assert "unreachable" in cell["reason"], cell["reason"]
    assert cell["attempts"] == 1, "a guest that failed is never retried as the lab's failure"


@pytest.mark.scenario("agent-killed")
def test_agent_killed_leaves_nothing(agent: Outcome) -> None:
    assert agent.leftovers == Leftovers(), agent.leftovers


# -- a guest that floods its serial console ---------------------------------------------------

#: The runner's resident memory may grow this much while the guest floods its console (HTML
#: rendering and results.json at the end included). Reading the serial log whole at any
#: point -- and decoding it to text -- costs more than the log's own size.
RSS_GROWTH_LIMIT = 48 * MiB
#: Console text appended on the host when the guest starts flooding: well over twice the bound.
BULK = 128 * MiB
BULK_LINE = b"console-flood (host side) 0123456789: the quick brown fox jumps over the lazy dog\n"
#: What the installer writes to the console: with the boots' own output, over virtlogd's 2 MiB.
INSTALL_FLOOD = 5 * MiB // 2
#: What the guest writes at the first boot after the install, in its bake: with what followed
#: the rotation, below 2 MiB (a second rotation would move the bulk out of the file the runner
#: reads), and a volume the UART passes within the bake even when the cores are shared.
GUEST_FLOOD = 256 * 1024


def _append_console_text(storage_root: Path, cell_id: str) -> Callable[[object], None]:
    """An action: append :data:`BULK` of console lines to the cell's serial log (O_APPEND, as
    the console's writer appends)."""

    def action(_runner: object) -> None:
        from compatlab.lab.storage import cell_slug

        [log] = (storage_root / "cells").glob(f"*/{cell_slug(cell_id)}/serial.log")
        block = BULK_LINE * (MiB // len(BULK_LINE))
        with log.open("ab") as handle:
            for _ in range(-(-BULK // len(block))):
                handle.write(block)

    return action


@scenario("serial-flood", order=13)
def _serial_flood(folder: Path) -> Outcome:
    """One cell: the installer floods 2.5 MiB (virtlogd rotates the log once), then the first
    boot after the install floods 256 KiB in its bake, and the host appends 128 MiB."""
    with world_traversable_folder("flood") as base:
        lab = PrivateLab.start(folder / "lab", base / "storage")
        rotated: list[str] = []

        def look(_runner: object) -> None:
            from compatlab.lab.storage import cell_slug

            cells = lab.storage_root / "cells"
            rotated.extend(p.name for p in cells.glob(f"*/{cell_slug(NONE_ID)}/serial.log.*"))

        try:
            matrix = write_matrix(
                folder / "matrices",
                "flood",
                "console-flood-1.0",
                install_args=f"{GUEST_FLOOD} {INSTALL_FLOOD}",
                scenario={"boots": 1, "bake": 30},
            )
            run = run_matrix(
                "flood",
                folder,
                ["--matrix", str(matrix)],
                lab=lab,
                memory=True,
                triggers=[
                    Trigger("installer-flooded", "console-flood: done", look, cell=NONE_ID),
                    Trigger(
                        "guest-flooding",
                        "console-flood: flooding",
                        _append_console_text(lab.storage_root, NONE_ID),
                        cell=NONE_ID,
                        mark_memory=True,
                    ),
                ],
            )
            return Outcome("serial-flood", {"run": run}, leftovers(lab), {"rotated": rotated})
        finally:
            lab.close()


@pytest.fixture(scope="module")
def flood(campaign: Any) -> Outcome:
    return campaign.get("serial-flood")  # type: ignore[no-any-return]


@pytest.mark.scenario("serial-flood")
@pytest.mark.fault("guest floods its serial console")
def test_serial_flood_passes_and_the_log_is_kept(flood: Outcome) -> None:
    run = flood.runs["run"]
    assert run.fired["guest-flooding"] is not None, f"no flood:\n{run.output[-3000:]}"
    assert run.results is not None and run.results["run"]["complete"] is True
    cell = run.cell("flood.yaml", NONE_ID)
    assert (cell["verdict"], cell["attempts"]) == ("pass", 1), cell["reason"]
    serial = run.run.artifact(cell, "serial_log")
    size = serial.stat().st_size
    flood.notes["serial_log_bytes"] = size
    assert size >= BULK, f"the serial log kept is {size / MiB:.1f} MiB"
    with serial.open("rb") as handle:
        handle.seek(-256 * 1024, 2)
        tail = handle.read().decode(errors="replace")
    # The guest's own flood went on after the bulk was appended, and says how long it took.
    done = re.search(r"console-flood: done \(from uptime ([\d.]+) to ([\d.]+)\)", tail)
    assert done, tail[-2000:]
    seconds = float(done[2]) - float(done[1])
    flood.notes["guest_flood_bytes_per_second"] = round(GUEST_FLOOD / max(seconds, 0.01))


@pytest.mark.scenario("serial-flood")
def test_serial_flood_leaves_the_runners_memory_bounded(flood: Outcome) -> None:
    run = flood.runs["run"]
    memory = run.memory
    assert memory is not None and memory.rss_at_mark and memory.peak_since_mark
    growth = memory.peak_since_mark - memory.rss_at_mark
    flood.notes["rss_growth_bytes"] = growth
    assert growth <= RSS_GROWTH_LIMIT, (
        f"the runner grew by {growth / MiB:.0f} MiB while the guest flooded its console "
        f"(RSS {memory.rss_at_mark / MiB:.0f} MiB at the flood's start, "
        f"peak {memory.peak_since_mark / MiB:.0f} MiB after)"
    )


@pytest.mark.scenario("serial-flood")
def test_serial_flood_report_stays_small(flood: Outcome) -> None:
    """The report shows the log's tail, not the log: pages and results.json stay small."""
    run = flood.runs["run"]
    cell = run.cell("flood.yaml", NONE_ID)
    assert (run.report / "results.json").stat().st_size < MiB
    page = run.run.page(cell)
    assert len(page.encode()) < MiB
    assert "console-flood" in page


@pytest.mark.scenario("serial-flood")
@pytest.mark.fault("installer floods the serial console past 2 MiB")
def test_a_flooding_installer_leaves_the_whole_console_in_the_report(flood: Outcome) -> None:
    run = flood.runs["run"]
    assert run.fired["installer-flooded"] is not None, f"no flood:\n{run.output[-3000:]}"
    assert run.results is not None
    cell = run.cell("flood.yaml", NONE_ID)
    kept = b"".join(
        (run.report / path).read_bytes()
        for key, path in sorted(cell["artifacts"].items())
        if key.startswith("serial_log")
    )
    for line in (
        "compatlab-guest: boot 1 started",  # before the installer's flood
        f"console-flood: flooding the console with {INSTALL_FLOOD} bytes",
        "compatlab-guest: boot 3 started",  # after it
    ):
        assert line.encode() in kept, (
            f"{line!r} is not in the report's serial log (rotated: {flood.notes['rotated']})"
        )


@pytest.mark.scenario("serial-flood")
def test_serial_flood_leaves_nothing(flood: Outcome) -> None:
    assert flood.leftovers == Leftovers(), flood.leftovers
