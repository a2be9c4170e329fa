"""A cell over WinRM, on a real guest reached through a port forwarded on 127.0.0.1 (slow).

The scenario runs over pywinrm against tinylinux-a-winrm, whose WinRM service is
compatlab-winrs-standin: a STAND-IN for Windows's WinRM service, not Windows. One cell of
``matrix/demo-winrm.yaml`` (``none``, which passes, as over the guest agent), with one boot after
the install instead of two, to fit the suite's budget: every phase, every reboot (``shutdown /r
/t 0``) and every reconnection over WinRM. ``make demo`` runs the whole WinRM demo, boot loop
included. The image's password, read from its 0600 file, must appear in nothing the run wrote or
printed.

Measured here (2 cores, TCG): WinRM answers ~40 s after a start, ~9 s after the guest agent;
the cell takes about 4 minutes alone.
"""

from __future__ import annotations

import pytest

from tests.support.matrixrun import (
    PAYLOADS,
    ROOT,
    STORAGE_ROOT,
    Run,
    assert_nothing_left,
    events,
    require_demo_lab,
    run_matrices,
)

pytestmark = [pytest.mark.slow, pytest.mark.guests(1)]

WINRM = "winrm-pass.yaml"
IMAGE = STORAGE_ROOT / "images" / "tinylinux-a-winrm"
PASS_ID = "tinylinux-a-winrm/bios-1cpu/none"
# matrix/demo-winrm.yaml's candidate and `none` cell, with one boot after the install.
MATRIX = """
candidate:
  name: acme-sensor
  version: "7.11.1"
  payload: {payload}
  install: {{linux: "sh {{payload}}/install.sh"}}
  uninstall: {{linux: "sh {{payload}}/uninstall.sh"}}
  exit_codes: {{success: [0]}}
catalog:
  images: {root}/images
  hardware: {root}/configs/hardware
  products: {root}/configs/products
axes: {{build: [tinylinux-a-winrm], hardware: [bios-1cpu], products: [[]]}}
scenario: {{boots: 1, boot_timeout: 150, bake: 2, baseline: on_failure, rollback: true}}
"""


@pytest.fixture(scope="module")
def winrm(tmp_path_factory: pytest.TempPathFactory) -> Run:
    require_demo_lab(("acme-sensor-7.11.1", "other-edr", "acme-av"))
    if not (IMAGE / "disk.qcow2").is_file():
        from tests.support.lab import require_lab

        require_lab(f"no demo image {IMAGE} (make images)")
    folder = tmp_path_factory.mktemp("winrm")
    matrix = folder / "winrm-pass.yaml"
    matrix.write_text(
        MATRIX.format(root=ROOT, payload=PAYLOADS / "acme-sensor-7.11.1"), encoding="utf-8"
    )
    return run_matrices(folder / "report", "--matrix", str(matrix))


def test_a_passing_cell_runs_every_phase_over_winrm(winrm: Run) -> None:
    cell = winrm.cell(WINRM, PASS_ID)
    assert (cell["verdict"], cell["attribution"]) == ("pass", None), cell["reason"]
    assert [p["phase"] for p in cell["phases"]] == [
        "provision",
        "products",
        "baseline",
        "install",
        "boots",
        "checks",
        "rollback",
    ]
    # Every reboot went through WinRM (shutdown /r /t 0) and was seen by the hypervisor.
    assert {e["detail"] for e in events(cell, "reboot_requested")} == {"winrm"}
    assert len(events(cell, "reboot")) >= 3
    assert any("stand-in" in e["detail"] for e in events(cell, "image"))
    installs = [c for c in cell["commands"] if c["meaning"]]
    assert [(c["phase"], c["exit_code"]) for c in installs] == [("install", 0), ("rollback", 0)]


def test_the_password_appears_in_nothing_the_run_wrote_or_printed(winrm: Run) -> None:
    password = (IMAGE / "winrm-password").read_text().strip()
    assert len(password) >= 12
    assert password not in winrm.output
    for path in winrm.report.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_nothing_is_left_behind(winrm: Run) -> None:
    assert_nothing_left(winrm)
    leases = sorted((STORAGE_ROOT / "ports").glob("*.lock"))
    held = [p for p in leases if p.read_text().startswith(winrm.run_id)]
    assert held == []
