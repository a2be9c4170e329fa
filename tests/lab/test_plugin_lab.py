"""The plugin against the real libvirtd, without booting guests: lab failures, xdist, resume.

Cells whose golden image is missing fail in the lab before any VM exists, which makes these
tests fast while every hypervisor call, the retries and the report are real.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.support.catalogs import make_project, matrix

pytestmark = pytest.mark.slow  # needs a running libvirtd

pytest_plugins = ["pytester"]

AXES = """
axes:
  build: [lin-a]
  hardware: [bios-1cpu, uefi-2cpu]
  products: [[], [av]]
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> Path:
    root = make_project(pytester.path)
    matrix(root, AXES, name="m.yaml")
    return root


def _results(report: Path) -> dict[str, object]:
    return json.loads((report / "results.json").read_text())  # type: ignore[no-any-return]


def test_a_missing_golden_image_is_infra_error_never_the_update(
    pytester: pytest.Pytester, project: Path
) -> None:
    report = project / "out"
    result = pytester.runpytest_subprocess(
        "--matrix", "matrix/m.yaml", "--matrix-report", str(report), "-k", "bios-1cpu and none"
    )
    result.stdout.fnmatch_lines(
        ["*INFRA_ERROR [[]infra[]]: *golden image /nonexistent/lin-a.qcow2 does not exist*"]
    )
    cells = _results(report)["cells"]
    assert isinstance(cells, list) and len(cells) == 1
    assert cells[0]["verdict"] == "infra_error" and cells[0]["attribution"] == "infra"
    assert cells[0]["attempts"] == 2  # retried once before it was reported
    assert (report / "index.html").exists() and (report / "junit.xml").exists()
    assert "<error" in (report / "junit.xml").read_text()


def test_results_travel_from_xdist_workers_to_one_report(
    pytester: pytest.Pytester, project: Path
) -> None:
    report = project / "out"
    result = pytester.runpytest_subprocess(
        "-n", "2", "--matrix", "matrix/m.yaml", "--matrix-report", str(report)
    )
    result.assert_outcomes(failed=4)
    doc = _results(report)
    assert sorted(c["id"] for c in doc["cells"]) == [  # type: ignore[union-attr]
        "lin-a/bios-1cpu/av",
        "lin-a/bios-1cpu/none",
        "lin-a/uefi-2cpu/av",
        "lin-a/uefi-2cpu/none",
    ]
    run = doc["run"]
    assert isinstance(run, dict) and run["complete"] is True
    # The project's candidate payload is an empty folder: its manifest is empty, and so the
    # checksum is that of no bytes (``sha256sum </dev/null``), recomputed here without compatlab.
    empty = hashlib.sha256(b"").hexdigest()
    assert run["candidate"] == {"name": "sensor", "version": "1.2.3", "sha256": empty}


def test_resume_skips_finished_cells_and_retries_lab_failures(
    pytester: pytest.Pytester, project: Path
) -> None:
    report = project / "out"
    first = pytester.runpytest_subprocess(
        "--matrix", "matrix/m.yaml", "--matrix-report", str(report), "-k", "none"
    )
    first.assert_outcomes(failed=2)
    # Pretend one cell had finished with a verdict on the update: resume must skip it, and
    # must try the infra_error one again (the lab failed, not the update).
    doc = _results(report)
    cells = doc["cells"]
    assert isinstance(cells, list)
    cells[0].update(verdict="pass", attribution=None, reason="pass")
    (report / "results.json").write_text(json.dumps(doc))
    again = pytester.runpytest_subprocess(
        "--matrix",
        "matrix/m.yaml",
        "--matrix-report",
        str(report),
        "--matrix-resume",
        "-k",
        "none",
        "-rs",
    )
    again.assert_outcomes(skipped=1, failed=1)
    again.stdout.fnmatch_lines(["*finished in the resumed run: pass*"])
    kept = {c["id"]: c["verdict"] for c in _results(report)["cells"]}  # type: ignore[union-attr]
    assert kept == {cells[0]["id"]: "pass", cells[1]["id"]: "infra_error"}


def test_resume_needs_a_report_folder(pytester: pytest.Pytester, project: Path) -> None:
    result = pytester.runpytest_subprocess("--matrix", "matrix/m.yaml", "--matrix-resume")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--matrix-resume needs --matrix-report*"])
