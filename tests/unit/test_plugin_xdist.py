"""``pytest -n N --matrix``: every cell runs once, on the xdist worker that runs its item.

Each xdist worker collects every item but runs only those xdist hands it, which it learns one
at a time. So a worker must not submit every collected cell to its engine (the embedded engine
of issue 10 does so without xdist, where the process runs every item): it submits the cell of
the item it runs, and the workers together run as many cells at once as there are workers.

The lab is libvirt's ``test:///default`` driver with scripted guests (tests/support/fakeguest.py);
each guest's channel writes the cell it serves to a file, whichever process runs it.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from tests.support.catalogs import stand_in_project
from tests.unit.test_runner_sigterm import STAND_INS

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = (
    "scenario: {boots: 1, boot_timeout: 60, bake: 0.2, boot_loop: 3, baseline: never,"
    " rollback: false}\n"
)
# Each VM the cell starts opens one channel: say whose it is, in a file every process appends to.
COUNTING = STAND_INS.replace(
    "def channels(cell, machine, forwards=()):\n",
    "def channels(cell, machine, forwards=()):\n"
    "    with open(HERE / 'ran.log', 'a') as ran:\n"
    "        ran.write(cell.id + '\\n')\n",
)


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    assert COUNTING != STAND_INS
    stand_ins = COUNTING.replace('["hang"]', "[]")
    root = stand_in_project(pytester.path, SCENARIO, stand_ins, "{vcpus: 4, memory: 8192}")
    for name in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(root)]))
    return root


def test_each_cell_runs_once_under_xdist(pytester: pytest.Pytester, project: Path) -> None:
    result = pytester.runpytest_subprocess(
        *("-p", "stand_ins", "-p", "no:cacheprovider", "-n", "2"),
        *("--matrix", "matrix/m.yaml", "--matrix-hosts", "lab.yaml"),
        *("--matrix-report", "out"),
    )
    result.assert_outcomes(passed=4)
    ran = collections.Counter((project / "ran.log").read_text().split())
    assert ran == {
        "lin-a/bios-1cpu/none": 1,
        "lin-a/bios-1cpu/av": 1,
        "lin-b/bios-1cpu/none": 1,
        "lin-b/bios-1cpu/av": 1,
    }, result.stdout.str()[-3000:]
