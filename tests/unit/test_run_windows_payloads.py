"""Windows cells through the real runner: packages declared by kind, installer logs kept as
evidence, Driver Verifier on and off -- on libvirt's ``test:///default`` driver with a scripted
guest (tests/support/fakeguest.py).

What is checked is what the runner sends over the channel and what it keeps: the lines are the
ones ``compatlab.guest.windows_install`` builds, byte for byte. The guest is a script that answers
in the shapes the lines expect; no Windows, msiexec, pnputil or verifier.exe runs here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compatlab.guest.channel import CommandResult
from compatlab.guest.windows_install import SETUPAPI_LOG, install_command, uninstall_command
from compatlab.lab.connection import Hypervisor
from compatlab.lab.machine import Machine
from compatlab.matrix import Cell, load_matrix
from compatlab.model import Attribution, CellResult, Verdict
from compatlab.scenario import run_cell
from tests.support.catalogs import make_project, write
from tests.support.fakeguest import ScriptedGuest, scripted_lab

ROOT = Path(__file__).resolve().parents[2]
CLEAN_BOOT = (ROOT / "tests" / "support" / "windows" / "clean_boot.json").read_text()
SCENARIO = "scenario: {boots: 1, boot_timeout: 1.5, bake: 0.1, baseline: on_failure}\n"
INSTALL = install_command("D:\\sensor.msi")
UNINSTALL = uninstall_command("D:\\sensor.msi")
# Keys of the scripted guest's commands (the first key a command contains answers it): the
# log reader holds the words of its answer, and "Get-WinEvent" too, so it comes first.
READ_LOG = "compatlab-log:"
EVENT_LOG = {"Get-WinEvent": CommandResult(0, CLEAN_BOOT, "", 0.1)}
OK = CommandResult(0, "", "", 0.1)


def log_answer(text: str) -> CommandResult:
    """What the guest prints for a whole log of ``text``."""
    data = text.encode()
    body = f"compatlab-log: size {len(data)}\r\n{base64.b64encode(data).decode()}\r\n\r\n"
    return CommandResult(0, body, "", 0.1)


@pytest.fixture(scope="module")
def hv() -> Iterator[Hypervisor]:
    with Hypervisor("test:///default") as hypervisor:
        yield hypervisor


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_PASSWORD", "not-used-by-the-scripted-guest")


def windows_cell(
    tmp_path: Path,
    install: str = "{kind: msi, file: sensor.msi}",
    *,
    uninstall: str = "",
    extra: str = "",
    products: str = "[[]]",
    files: tuple[str, ...] = ("sensor.msi",),
) -> Cell:
    root = make_project(tmp_path / "project", builds=(), hardware=("uefi-2cpu",), products=())
    payload = root / "payloads" / "candidate"
    payload.mkdir(parents=True, exist_ok=True)
    for name in files:
        (payload / name).write_bytes(b"stand-in package, never installed anywhere")
    # winav: a Windows-only product, here a driver package.
    (root / "payloads" / "winav").mkdir(parents=True, exist_ok=True)
    (root / "payloads" / "winav" / "winav.inf").write_text("[Version]\n")
    write(
        root / "configs" / "products" / "winav.yaml",
        """
        name: winav
        vendor: Test
        windows: {payload: ../../payloads/winav, install: {kind: driver, file: winav.inf}}
        """,
    )
    path = write(
        root / "matrix" / "w.yaml",
        f"""
        candidate:
          name: sensor
          version: "1.0"
          payload: ../payloads/candidate
          install: {{windows: {install}}}
          {f"uninstall: {{windows: {uninstall}}}" if uninstall else ""}
        axes: {{build: [win11], hardware: [uefi-2cpu], products: {products}}}
        """,
    )
    path.write_text(path.read_text() + SCENARIO + extra)
    return load_matrix(path, catalog_root=root).cells[0]


class Guests:
    """One scripted guest per VM, in the order the runner makes them: each gets the commands
    given (and a clean event log), and ``boots`` where a script has that key."""

    def __init__(self, *scripts: dict[str, Any]) -> None:
        self.scripts = list(scripts)
        self.made: list[ScriptedGuest] = []

    def __call__(self, cell: Cell, machine: Machine, forwards: Any = ()) -> ScriptedGuest:
        commands = dict(self.scripts.pop(0) if self.scripts else {})
        boots = commands.pop("boots", [])
        assert machine.storage_dir is not None
        guest = ScriptedGuest(
            machine,
            machine.storage_dir / "serial.log",
            boots=boots,
            commands={**commands, **EVENT_LOG},
        )
        self.made.append(guest)
        return guest


def run(hv: Hypervisor, tmp_path: Path, cell: Cell, guests: Guests) -> CellResult:
    context = scripted_lab(hv, tmp_path, guests)
    result = run_cell(cell, context)
    json.dumps(result.as_json())
    return result


def installers(guest: ScriptedGuest) -> list[str]:
    """The commands the runner sent, without its own reads (logs, event log)."""
    return [c for c in guest.ran if READ_LOG not in c and "Get-WinEvent" not in c]


# -- the lines built from the package are the lines sent ------------------------------------------


def test_the_runner_sends_exactly_the_lines_built_for_an_msi(
    hv: Hypervisor, tmp_path: Path
) -> None:
    guests = Guests({READ_LOG: log_answer("MSI (s) (A4:3C): Product: Sensor -- ok\n")})
    result = run(hv, tmp_path, windows_cell(tmp_path), guests)
    assert result.verdict is Verdict.PASS, result.reason
    assert installers(guests.made[0]) == [INSTALL.command, UNINSTALL.command]
    by_phase = [(c.phase, c.command) for c in result.commands]
    assert ("install", INSTALL.command) in by_phase and ("rollback", UNINSTALL.command) in by_phase
    assert "{payload}" not in json.dumps(result.as_json()["commands"])


def test_a_products_driver_package_is_installed_with_pnputil(
    hv: Hypervisor, tmp_path: Path
) -> None:
    guests = Guests({READ_LOG: log_answer(">>>  [Device Install (Hardware initiated)]\n")})
    result = run(hv, tmp_path, windows_cell(tmp_path, products="[[winav]]"), guests)
    assert result.verdict is Verdict.PASS, result.reason
    sent = installers(guests.made[0])
    assert sent[0] == install_command("D:\\winav.inf").command
    assert sent[0] == 'pnputil.exe /add-driver "D:\\winav.inf" /install'
    assert "products-winav-1" in " ".join(result.artifacts)
    read = [c for c in guests.made[0].ran if READ_LOG in c]
    assert any(f"$path = '{SETUPAPI_LOG}'" in c for c in read)


def test_hand_written_windows_commands_still_run_as_written(hv: Hypervisor, tmp_path: Path) -> None:
    cell = windows_cell(tmp_path, '"install.cmd {payload}"', uninstall="u.cmd", files=())
    guests = Guests({})
    result = run(hv, tmp_path, cell, guests)
    assert result.verdict is Verdict.PASS, result.reason
    assert installers(guests.made[0]) == ["install.cmd D:\\", "u.cmd"]
    assert not any(READ_LOG in c for c in guests.made[0].ran)  # no log named: none read


def test_a_package_file_missing_from_the_payload_is_the_labs_failure(
    hv: Hypervisor, tmp_path: Path
) -> None:
    result = run(hv, tmp_path, windows_cell(tmp_path, files=()), Guests({}, {}))
    assert (result.verdict, result.attribution) == (Verdict.INFRA_ERROR, Attribution.INFRA)
    assert "has no sensor.msi" in result.reason


# -- the installer's log, kept per phase and run ----------------------------------------------


def test_every_run_of_an_installer_keeps_its_log_apart(
    hv: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compatlab.guest.windows_install import RetryPolicy
    from compatlab.scenario import steps

    monkeypatch.setattr(steps, "RETRY_1618", RetryPolicy(attempts=3, waits=(0.1, 0.1)))
    busy = CommandResult(1618, "", "another installation is in progress", 0.1)
    logs = [
        log_answer("run 1: Another installation is in progress.\n"),
        log_answer("run 2: Installation completed successfully.\n"),
        log_answer("rollback: Removal completed successfully.\n"),
    ]
    guests = Guests({READ_LOG: logs, "msiexec.exe /i": [busy, OK]})
    result = run(hv, tmp_path, windows_cell(tmp_path), guests)
    assert result.verdict is Verdict.PASS, result.reason
    kept = {k: v for k, v in result.artifacts.items() if k.startswith("installer-log-")}
    assert sorted(kept) == [
        "installer-log-install-sensor-1",
        "installer-log-install-sensor-2",
        "installer-log-rollback-sensor-1",
    ]
    report = tmp_path / "report"
    texts = {k: (report / v).read_text() for k, v in kept.items()}
    assert texts["installer-log-install-sensor-1"].startswith("run 1:")
    assert texts["installer-log-install-sensor-2"].startswith("run 2:")
    assert texts["installer-log-rollback-sensor-1"].startswith("rollback:")
    assert all(v.startswith("cells/") and "/attempt-1/" in v for v in kept.values())


def test_a_failed_install_keeps_its_log_too(hv: Hypervisor, tmp_path: Path) -> None:
    failed = CommandResult(1603, "", "", 0.1)
    guests = Guests(
        {READ_LOG: log_answer("Return value 3.\n"), "msiexec.exe /i": failed}, {READ_LOG: "x"}
    )
    result = run(hv, tmp_path, windows_cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (
        Verdict.INSTALL_FAILED,
        Attribution.CANDIDATE,
    )
    path = tmp_path / "report" / result.artifacts["installer-log-install-sensor-1"]
    assert path.read_text() == "Return value 3.\n"


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (CommandResult(0, "compatlab-log: missing\r\n", "", 0.1), "is not there"),
        (CommandResult(1, "", "Access to the path is denied.", 0.1), "not read: exit 1"),
        (CommandResult(0, "garbage", "", 0.1), "not read: not an installer log answer"),
    ],
)
def test_a_log_that_cannot_be_kept_is_noted_and_changes_no_verdict(
    hv: Hypervisor, tmp_path: Path, answer: CommandResult, said: str
) -> None:
    guests = Guests({READ_LOG: answer})
    result = run(hv, tmp_path, windows_cell(tmp_path), guests)
    assert result.verdict is Verdict.PASS, result.reason
    assert not any(k.startswith("installer-log-") for k in result.artifacts)
    notes = [e.detail for e in result.events if e.kind == "installer_log"]
    assert notes and all(said in n for n in notes), notes


# -- Driver Verifier ------------------------------------------------------------------------------

VERIFIER = "include: [{scenario: {verifier: [sensor.sys]}}]\n"
SETTINGS = """\
Special pool: Enabled
Pool tracking: Enabled
Verified drivers:

sensor.sys
"""


def test_driver_verifier_is_on_before_the_first_boot_and_reset_at_rollback(
    hv: Hypervisor, tmp_path: Path
) -> None:
    query = CommandResult(0, SETTINGS, "", 0.1)
    guests = Guests({READ_LOG: log_answer("ok\n"), "/querysettings": query})
    result = run(hv, tmp_path, windows_cell(tmp_path, extra=VERIFIER), guests)
    assert result.verdict is Verdict.PASS, result.reason
    assert installers(guests.made[0]) == [
        INSTALL.command,
        "verifier.exe /standard /driver sensor.sys",
        "verifier.exe /querysettings",
        UNINSTALL.command,
        "verifier.exe /reset",
    ]
    phases = {c.command: c.phase for c in result.commands}
    assert phases["verifier.exe /standard /driver sensor.sys"] == "install"
    assert phases["verifier.exe /reset"] == "rollback"
    # Enabled after the install command, before the first boot of the candidate.
    enabled = next(e for e in result.events if e.kind == "verifier")
    boots = next(e for e in result.events if e.kind == "phase" and e.detail == "boots")
    assert "sensor.sys" in enabled.detail and enabled.t < boots.t


def test_a_driver_verifier_did_not_take_is_the_labs_failure(hv: Hypervisor, tmp_path: Path) -> None:
    nothing = CommandResult(0, "No drivers are currently verified.\n", "", 0.1)
    scripts = {READ_LOG: log_answer("ok\n"), "/querysettings": nothing}
    result = run(hv, tmp_path, windows_cell(tmp_path, extra=VERIFIER), Guests(scripts, scripts))
    assert (result.verdict, result.attribution) == (Verdict.INFRA_ERROR, Attribution.INFRA)
    assert "Driver Verifier is not set up for sensor.sys" in result.reason
    assert result.attempts == 2


def test_a_rerun_without_the_candidate_verifies_nothing(hv: Hypervisor, tmp_path: Path) -> None:
    query = CommandResult(0, SETTINGS, "", 0.1)
    guests = Guests(
        {READ_LOG: log_answer("ok\n"), "/querysettings": query, "boots": ["ok", "ok", "crash"]},
        {},
    )
    result = run(hv, tmp_path, windows_cell(tmp_path, extra=VERIFIER), guests)
    assert (result.verdict, result.attribution) == (Verdict.CRASH, Attribution.CANDIDATE)
    assert any("verifier" in c for c in guests.made[0].ran)
    assert len(guests.made) == 2 and not any("verifier" in c for c in guests.made[1].ran)
