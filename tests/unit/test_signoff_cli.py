"""``compatlab signoff``: exit codes, signoff.json / signoff.html beside the report, escaping."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from compatlab.cli import main
from compatlab.model import Attribution, Boot, CellResult, Verdict
from compatlab.report import RunInfo, cell_slug, render_report, write_results
from tests.support.catalogs import write

MATRIX = "matrix/demo.yaml"
SHA = "ab" * 32
POLICY = """
target: broad
rings:
  - {name: internal, description: ring 0, require: {fleet_share: 0.75}}
  - {name: early, require: {fleet_share: 0.95}}
  - {name: broad, require: {cells: all}, boot_regression: 1.5}
"""
HOSTILE = "<script>alert(1)</script> \"quoted\" 'single' javascript:alert(2)"


def run_info(**changes: Any) -> RunInfo:
    values: dict[str, Any] = {
        "id": "20260101-0400",
        "matrix": (MATRIX,),
        "candidate_name": "acme-sensor",
        "candidate_version": "7.11.1",
        "started": datetime(2026, 1, 1, 4, 0, tzinfo=UTC),
        "finished": datetime(2026, 1, 1, 5, 0, tzinfo=UTC),
        "hosts": ("qemu:///system",),
        "candidate_sha256": SHA,
        "matrix_sha256": {MATRIX: "cd" * 32},
        "compatlab_version": "0.1.0",
    }
    values.update(changes)
    return RunInfo(**values)


def cell(cell_id: str, verdict: Verdict, share: float | None, reason: str = "") -> CellResult:
    build, hardware, products = cell_id.split("/")
    return CellResult(
        id=cell_id,
        build=build,
        hardware=hardware,
        products=() if products == "none" else tuple(products.split("+")),
        verdict=verdict,
        attribution=None if verdict is Verdict.PASS else Attribution.CANDIDATE,
        matrix=MATRIX,
        reason=reason,
        fleet_share=share,
        boots=[Boot(1, "completed", 10.0, "baseline"), Boot(2, "completed", 11.0, "boots")],
    )


def demo_cells(shares: bool = True) -> list[CellResult]:
    def s(x: float) -> float | None:
        return x if shares else None

    return [
        cell("a/h1/none", Verdict.PASS, s(0.13)),
        cell("a/h1/acme-av", Verdict.PASS, s(0.65)),
        cell("a/h1/acme-av+other-edr", Verdict.BOOT_LOOP, s(0.22), HOSTILE),
    ]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "reports" / "demo"
    write_results(folder, run_info(), demo_cells())
    return folder


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    return write(tmp_path / "rollout.yaml", POLICY)


def signoff(run_dir: Path, policy: Path, *extra: str) -> int:
    return main(["signoff", str(run_dir), "--policy", str(policy), *extra])


def test_no_go_exits_1_and_says_which_rings_are_open(
    run_dir: Path, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert signoff(run_dir, policy) == 1
    out = capsys.readouterr().out
    assert "compatlab signoff: NO-GO for broad: may enter internal only" in out
    assert "1 cell fails with the candidate: about 22% of the fleet" in out
    assert "early: the cells that pass stand for 78.0% of the fleet tested" in out
    assert str(run_dir / "signoff.html") in out
    assert (run_dir / "signoff.html").is_file() and (run_dir / "signoff.json").is_file()


def test_go_for_the_ring_asked_exits_0(run_dir: Path, policy: Path) -> None:
    assert signoff(run_dir, policy, "--ring", "internal") == 0
    document = json.loads((run_dir / "signoff.json").read_text())
    assert document["decision"] == "go" and document["target"] == "internal"


def test_every_ring_passing_exits_0(tmp_path: Path, policy: Path) -> None:
    cells = [replace(c, verdict=Verdict.PASS, attribution=None) for c in demo_cells()]
    write_results(tmp_path, run_info(), cells)
    assert signoff(tmp_path, policy) == 0
    assert json.loads((tmp_path / "signoff.json").read_text())["may_enter"] == [
        "internal",
        "early",
        "broad",
    ]


def test_signoff_json_records_the_decision_the_blast_radius_and_what_was_tested(
    run_dir: Path, policy: Path
) -> None:
    signoff(run_dir, policy)
    document = json.loads((run_dir / "signoff.json").read_text())
    assert document["decision"] == "no-go" and document["may_enter"] == ["internal"]
    assert document["blast_radius"]["failing_cells"] == 1
    assert document["blast_radius"]["fleet_share"] == pytest.approx(0.22)
    assert document["blast_radius"]["words"].endswith("about 22% of the fleet")
    broad = document["rings"][2]
    assert broad["may_enter"] is False and broad["requirement_met"] is False
    (blocking,) = broad["blocking"]
    failing = demo_cells()[2]
    assert blocking["id"] == failing.id and blocking["status"] == "fails"
    assert blocking["evidence"] == f"cells/{cell_slug(failing)}.html"
    tested = document["tested"]
    assert tested["candidate"] == {"name": "acme-sensor", "version": "7.11.1", "sha256": SHA}
    assert tested["matrix"] == [{"path": MATRIX, "sha256": "cd" * 32}]
    assert tested["compatlab_version"] == "0.1.0" and tested["hosts"] == ["qemu:///system"]
    assert len(document["policy"]["sha256"]) == 64


def test_what_the_run_did_not_record_is_said_so(tmp_path: Path, policy: Path) -> None:
    old = run_info(candidate_sha256="", matrix_sha256={}, compatlab_version="", hosts=())
    write_results(tmp_path, old, demo_cells())
    signoff(tmp_path, policy)
    tested = json.loads((tmp_path / "signoff.json").read_text())["tested"]
    assert tested["candidate"]["sha256"] is None and tested["compatlab_version"] is None
    assert tested["matrix"] == [{"path": MATRIX, "sha256": None}]
    page = (tmp_path / "signoff.html").read_text()
    assert page.count("not recorded") == 4  # payload, matrix, compatlab version, hosts


def test_guest_text_is_escaped_on_the_page(run_dir: Path, policy: Path) -> None:
    signoff(run_dir, policy)
    page = (run_dir / "signoff.html").read_text()
    assert "<script" not in page.lower()  # the page has no script of its own either
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;quoted&#34;" in page and "&#39;single&#39;" in page
    assert not re.search(r"""(href|src)\s*=\s*["']?\s*javascript:""", page, re.IGNORECASE)
    assert not re.search(r"""(href|src)\s*=\s*["']?https?:""", page)  # nothing fetched
    assert f'href="cells/{cell_slug(demo_cells()[2])}.html"' in page
    assert "about 22% of the fleet" in page


def test_every_evidence_link_opens_the_cells_page_in_the_report(
    tmp_path: Path, policy: Path
) -> None:
    """The links go to the pages ``compatlab report`` wrote, whatever the page names had to
    become: two matrix files (names carry the matrix), ids that differ only in unsafe
    characters (the second gets ``-2``)."""
    other = "matrix/demo-faults.yaml"
    cells = [
        *demo_cells(),
        replace(cell("a/h1/x y", Verdict.CRASH, 0.0), matrix=other),
        replace(cell("a/h1/x_y", Verdict.HANG, 0.0), matrix=other),
    ]
    write_results(tmp_path, run_info(matrix=(MATRIX, other)), cells)
    render_report(tmp_path, history=False)
    signoff(tmp_path, policy)
    document = json.loads((tmp_path / "signoff.json").read_text())
    links = {c["evidence"] for r in document["rings"] for c in r["blocking"] + r["allowed"]}
    page = (tmp_path / "signoff.html").read_text()
    links |= set(re.findall(r'href="([^"#]*(?:#[^"]*)?)"', page)) - {"index.html"}
    assert len(links) == 3, links  # three failing cells, each blocking some ring
    for link in links:
        path, _, fragment = link.partition("#")
        assert not fragment, f"{link}: a page, not an anchor the index does not have"
        assert (tmp_path / path).is_file(), f"{link} names no page of the report"


def test_a_hostile_cell_id_cannot_leave_its_attribute(tmp_path: Path, policy: Path) -> None:
    bad = cell('a/h1/x"><img src=y onerror=alert(3)>', Verdict.CRASH, 0.5)
    write_results(tmp_path, run_info(), [bad, cell("a/h1/none", Verdict.PASS, 0.5)])
    signoff(tmp_path, policy)
    page = (tmp_path / "signoff.html").read_text()
    assert "<img" not in page and "&lt;img src=y onerror=alert(3)&gt;" in page


def test_a_malformed_policy_exits_2_naming_its_line(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path / "bad.yaml", "rings:\n  - {name: a, repeats: many}\n")
    assert signoff(run_dir, bad) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert not (run_dir / "signoff.html").exists()


def test_a_run_dir_without_results_exits_2(
    tmp_path: Path, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert signoff(tmp_path / "nothing", policy) == 2
    assert "results.json" in capsys.readouterr().err


def test_an_unknown_ring_exits_2(
    run_dir: Path, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert signoff(run_dir, policy, "--ring", "ring9") == 2
    assert "--ring ring9: the policy has no such ring" in capsys.readouterr().err


def test_a_share_asked_of_a_run_without_fleet_weights_exits_2(
    tmp_path: Path, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_results(tmp_path, run_info(), demo_cells(shares=False))
    assert signoff(tmp_path, policy) == 2
    err = capsys.readouterr().err
    assert f"{policy}:3:" in err and "needs a share of the fleet" in err
