"""results.json, junit.xml and the HTML report, from synthetic cells of a realistic run.

``sample_run`` builds a 4-build x 3-hardware run shaped like the July 2024 incident: every cell
with the conflicting product boot-loops with bugcheck 0x50, plus one cell of every other verdict
and a few cells not run. ``python tests/unit/test_report.py DIR`` renders it for a human to look at.
"""

from __future__ import annotations

import json
import struct
import sys
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from compatlab.errors import InputError
from compatlab.model import (
    Attribution,
    Boot,
    Bugcheck,
    CellResult,
    CommandRecord,
    Event,
    Verdict,
)
from compatlab.report import (
    PlannedCell,
    ResultsWriter,
    RunInfo,
    load_results,
    render_html,
    render_report,
    summarize,
    write_junit,
    write_results,
)

MATRIX = "matrix/nightly.yaml"
BUILDS = ["win10-22h2", "win11-23h2", "winsrv-2022", "demo-linux-6.1"]
HARDWARE = ["bios-1cpu", "uefi-2cpu", "uefi-sb-tpm"]
PRODUCT_SETS = [(), ("acme-av",), ("other-edr",), ("acme-av", "other-edr")]
PAGE_FAULT = Bugcheck(
    "0x50",
    "PAGE_FAULT_IN_NONPAGED_AREA",
    ("0xffff840500000000", "0x0", "0xfffff8025c6a1f2e", "0x2"),
)


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG, standing in for a console screenshot."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def _loop_events() -> list[Event]:
    bc = PAGE_FAULT.as_event_data()
    events = [
        Event(0.0, "libvirt", "started", "booted"),
        Event(8.31, "channel", "agent_ready", "guest-ping answered"),
        Event(9.0, "scenario", "install", "candidate sensor-content 291"),
        Event(21.0, "libvirt", "reboot"),
    ]
    t = 21.0
    for _ in range(3):
        events += [
            Event(t + 7.4, "libvirt", "crashed", "panicked"),
            Event(t + 7.5, "domain-log", "bugcheck", "panic hyper-v", bc),
            Event(t + 7.9, "scenario", "power_cycle", "on_crash=preserve"),
            Event(t + 8.1, "libvirt", "started", "booted"),
        ]
        t += 8.1
    return events


def _cell(build: str, hardware: str, products: tuple[str, ...], run_dir: Path) -> CellResult:
    cell_id = f"{build}/{hardware}/{'+'.join(products) or 'none'}"
    base = CellResult(
        id=cell_id,
        build=build,
        hardware=hardware,
        products=products,
        verdict=Verdict.PASS,
        matrix=MATRIX,
        seconds=52.0 + 3 * len(products),
        reason="pass: 3 boots completed, no crash",
        boots=[Boot(1, "completed", 8.3, "baseline")]
        + [Boot(n, "completed", 8.1 + n / 10, "candidate") for n in (2, 3, 4)],
        events=[
            Event(0.0, "libvirt", "started", "booted"),
            Event(8.3, "channel", "agent_ready", "guest-ping answered"),
        ],
        commands=[
            CommandRecord(
                "candidate", "setup.exe /quiet /norestart", 0, "done\n", "", 9.2, "success"
            )
        ],
        checks=[{"name": "service csagent", "ok": True}],
    )
    if "other-edr" in products and not build.startswith("demo"):
        base.verdict, base.attribution, base.bugcheck = (
            Verdict.BOOT_LOOP,
            Attribution.CANDIDATE,
            PAGE_FAULT,
        )
        base.reason = (
            "boot loop: 3 failed boots in a row (3 crashes), none completed; bugcheck 0x50 "
            "PAGE_FAULT_IN_NONPAGED_AREA -> candidate: the rerun without the candidate passed"
        )
        base.boots = [Boot(1, "completed", 8.3, "baseline")] + [
            Boot(n, "crash", 7.4, "candidate") for n in (2, 3, 4)
        ]
        base.events = _loop_events()
        art = Path("cells") / cell_id
        (run_dir / art).mkdir(parents=True, exist_ok=True)
        serial = [f"[    {i * 0.137:8.6f}] boot line {i}" for i in range(150)]
        serial += ["*** STOP: 0x00000050 (0xFFFF840500000000,0x0,0xFFFFF8025C6A1F2E,0x2)"]
        serial += ["\x1b[31mPAGE_FAULT_IN_NONPAGED_AREA\x1b[0m", "csagent.sys - Address FFFFF802"]
        (run_dir / art / "serial.log").write_text("\r\n".join(serial) + "\r\n")
        (run_dir / art / "screen.png").write_bytes(_png(720, 400, (0, 120, 215)))
        base.artifacts = {
            "serial_log": f"{art}/serial.log",
            "screenshot": f"{art}/screen.png",
            "domain_log": f"{art}/domain.log",  # not there: the page says so
        }
    return base


def sample_run(run_dir: Path) -> tuple[RunInfo, list[CellResult], list[PlannedCell]]:
    """A run with every verdict, written under ``run_dir`` (artifacts included)."""
    cells: list[CellResult] = []
    planned: list[PlannedCell] = []
    for build in BUILDS:
        for hardware in HARDWARE:
            for products in PRODUCT_SETS:
                planned.append(PlannedCell(MATRIX, build, hardware, products))
                if (build, hardware) == ("winsrv-2022", "uefi-sb-tpm") and products:
                    continue  # not run: the run was stopped
                cells.append(_cell(build, hardware, products, run_dir))
    by_id = {c.id: c for c in cells}

    def make(cell_id: str, verdict: Verdict, attribution: Attribution, reason: str) -> CellResult:
        cell = by_id[cell_id]
        cell.verdict, cell.attribution, cell.reason = verdict, attribution, reason
        return cell

    crash = make(
        "win11-23h2/uefi-2cpu/acme-av",
        Verdict.CRASH,
        Attribution.CANDIDATE,
        "crash: bugcheck 0x7E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED (1 crash, 3 boots completed) "
        "-> candidate: the pre-install boot passed (not confirmed by a baseline rerun)",
    )
    crash.bugcheck = Bugcheck("0x7E", "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED", ("0xc0000005",))
    make(
        "win10-22h2/uefi-sb-tpm/acme-av",
        Verdict.HANG,
        Attribution.CANDIDATE,
        "hang: boot 3 not complete 300.4 s after it started (timeout 300 s) -> candidate: the "
        "rerun without the candidate passed",
    ).boots[-1] = Boot(4, "hang", 300.4, "candidate")
    failed = make(
        "win10-22h2/bios-1cpu/acme-av",
        Verdict.INSTALL_FAILED,
        Attribution.CANDIDATE,
        "install failed: `setup.exe /quiet /norestart` exited 1603 (failure) -> candidate: the "
        "pre-install boot passed (not confirmed by a baseline rerun)",
    )
    failed.commands = [
        CommandRecord(
            "candidate", "setup.exe /quiet /norestart", 1603, "", "MSI error\n", 31, "failure"
        )
    ]
    make(
        "demo-linux-6.1/uefi-2cpu/acme-av",
        Verdict.CHECK_FAILED,
        Attribution.BASELINE,
        "checks failed: service acme-av -> baseline: already check_failed before the candidate "
        "was installed",
    ).checks = [{"name": "service acme-av", "ok": False, "state": "stopped"}]
    make(
        "win11-23h2/bios-1cpu/none",
        Verdict.ROLLBACK_FAILED,
        Attribution.CANDIDATE,
        "rollback failed: uninstaller exited 5 -> candidate: the rerun without the candidate "
        "passed",
    )
    make(
        "winsrv-2022/uefi-2cpu/none",
        Verdict.INFRA_ERROR,
        Attribution.INFRA,
        "infra error: libvirt: Cannot recv data: Connection reset by peer [host lab-3] -> infra: "
        "the lab failed",
    ).attempts = 2
    run = RunInfo(
        id="2024-07-19T0409-nightly",
        matrix=(MATRIX,),
        candidate_name="Falcon sensor content",
        candidate_version="C-00000291-0.0.0.32",
        started=datetime(2024, 7, 19, 4, 9, 0, tzinfo=UTC),
        finished=datetime(2024, 7, 19, 5, 2, 41, tzinfo=UTC),
        hosts=("qemu+ssh://lab-1/system", "qemu+ssh://lab-2/system", "qemu+ssh://lab-3/system"),
    )
    return run, cells, planned


Sample = tuple[Path, RunInfo, list[CellResult], list[PlannedCell]]


@pytest.fixture
def sample(tmp_path: Path) -> Sample:
    run, cells, planned = sample_run(tmp_path)
    return tmp_path, run, cells, planned


# -- results.json ---------------------------------------------------------------------------------


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_contract(doc: object) -> None:
    """DESIGN.md's results.json contract, by hand: keys present with the contracted types."""
    assert isinstance(doc, dict) and doc["schema"] == 1
    run = doc["run"]
    assert isinstance(run["id"], str) and _is_str_list(run["matrix"]) and _is_str_list(run["hosts"])
    assert isinstance(run["candidate"]["name"], str)
    assert isinstance(run["candidate"]["version"], str)
    for key in ("started", "finished"):
        datetime.fromisoformat(run[key])
    assert isinstance(doc["cells"], list)
    for cell in doc["cells"]:
        for key in ("id", "build", "hardware", "verdict"):
            assert isinstance(cell[key], str), key
        assert _is_str_list(cell["products"])
        assert cell["verdict"] in {v.value for v in Verdict}
        assert cell["attribution"] in {a.value for a in Attribution} | {None}
        bugcheck = cell["bugcheck"]
        assert bugcheck is None or (
            isinstance(bugcheck["code"], str)
            and isinstance(bugcheck["name"], str)
            and _is_str_list(bugcheck["params"])
        )
        for boot in cell["boots"]:
            assert isinstance(boot["n"], int) and isinstance(boot["outcome"], str)
            assert _is_number(boot["seconds"])
        for event in cell["events"]:
            assert _is_number(event["t"])
            assert all(isinstance(event[k], str) for k in ("source", "kind", "detail"))
        assert all(isinstance(v, str) for v in cell["artifacts"].values())
        assert _is_number(cell["seconds"])


def test_results_json_meets_the_contract_and_round_trips(sample: Sample) -> None:
    run_dir, run, cells, _ = sample
    path = write_results(run_dir, run, cells)
    assert path == run_dir / "results.json"
    check_contract(json.loads(path.read_text()))
    back = load_results(run_dir)
    assert back.run == run
    assert [c.as_json() for c in back.cells] == [c.as_json() for c in cells]
    assert not list(run_dir.glob(".results.json.*"))  # no temporary left behind


def test_incremental_writes_resume_and_retry(tmp_path: Path) -> None:
    run, cells, _ = sample_run(tmp_path)
    writer = ResultsWriter(tmp_path, RunInfo(**{**run.__dict__, "finished": None}))
    for cell in cells[:5]:
        writer.add(cell)
    doc = json.loads((tmp_path / "results.json").read_text())
    check_contract(doc)  # valid mid-run, too
    assert doc["run"]["complete"] is False and len(doc["cells"]) == 5
    assert load_results(tmp_path).run.finished is None

    resumed = ResultsWriter.resume(tmp_path, run)
    done = load_results(tmp_path).finished()
    assert done == {(MATRIX, c.id) for c in cells[:5] if c.verdict is not Verdict.INFRA_ERROR}
    retry = CellResult(**{**cells[0].__dict__, "verdict": Verdict.PASS, "attempts": 2})
    resumed.add(retry)
    resumed.finish(datetime(2024, 7, 19, 6, 0, tzinfo=UTC))
    back = load_results(tmp_path)
    assert [c.id for c in back.cells] == [c.id for c in cells[:5]]  # replaced in place
    assert back.cells[0].attempts == 2
    assert back.run.finished == datetime(2024, 7, 19, 6, 0, tzinfo=UTC)
    assert back.run.started == run.started


def test_a_failed_write_leaves_the_previous_file(
    sample: Sample, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, run, cells, _ = sample
    write_results(run_dir, run, cells[:2])
    before = (run_dir / "results.json").read_text()

    def boom(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(Exception, match="No space left"):
        write_results(run_dir, run, cells)
    assert (run_dir / "results.json").read_text() == before
    assert not list(run_dir.glob(".results.json.*"))


@pytest.mark.parametrize(
    ("mutate", "complaint"),
    [
        (lambda d: d.update(schema=2), "schema"),
        (lambda d: d["cells"][0].pop("verdict"), "cells\\[0\\]: missing key 'verdict'"),
        (lambda d: d["cells"][1].update(verdict="exploded"), "unknown value 'exploded'"),
        (lambda d: d["cells"][0]["boots"][0].update(seconds="7"), "boots\\[0\\].seconds"),
        (lambda d: d["run"].update(started="yesterday"), "ISO-8601"),
    ],
)
def test_load_rejects_contract_breaks_with_their_place(
    tmp_path: Path,
    mutate: Callable[[dict[str, Any]], object],
    complaint: str,
) -> None:
    run, cells, _ = sample_run(tmp_path)
    doc = json.loads(write_results(tmp_path, run, cells[:3]).read_text())
    mutate(doc)
    (tmp_path / "results.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=complaint):
        load_results(tmp_path / "results.json")


def test_load_rejects_a_truncated_file(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"schema": 1, "run": {')
    with pytest.raises(InputError, match="not JSON") as info:
        load_results(tmp_path)
    assert info.value.line == 1


# -- junit.xml ------------------------------------------------------------------------------------


def test_junit_has_a_testcase_per_cell_with_properties(sample: Sample) -> None:
    run_dir, run, cells, _ = sample
    root = ET.parse(write_junit(run_dir, run, cells)).getroot()
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == len(cells)
    assert root.get("tests") == str(len(cells))
    by_name = {c.get("name"): c for c in cases}
    loop = by_name["win11-23h2/uefi-sb-tpm/other-edr"]
    assert loop.get("classname") == MATRIX
    props = {p.get("name"): p.get("value") for p in loop.iter("property")}
    assert props == {
        "verdict": "boot_loop",
        "attribution": "candidate",
        "bugcheck.code": "0x50",
        "bugcheck.name": "PAGE_FAULT_IN_NONPAGED_AREA",
    }
    failure = loop.find("failure")
    assert failure is not None and failure.get("type") == "boot_loop"
    assert (failure.get("message") or "").startswith("boot loop: 3 failed boots")
    assert "crashed" in (failure.text or "")
    infra = by_name["winsrv-2022/uefi-2cpu/none"]
    assert infra.find("error") is not None and infra.find("failure") is None
    passed = by_name["win10-22h2/bios-1cpu/none"]
    assert passed.find("failure") is None and passed.find("error") is None
    assert float(passed.get("time") or 0) == pytest.approx(52.0)
    failures = sum(1 for c in cells if c.verdict.is_failure) - 1
    assert root.get("failures") == str(failures) and root.get("errors") == "1"


def test_junit_survives_control_characters(tmp_path: Path) -> None:
    run, cells, _ = sample_run(tmp_path)
    cells[0].verdict, cells[0].reason = Verdict.CHECK_FAILED, "bad \x00\x1b[31m output\x07"
    root = ET.parse(write_junit(tmp_path, run, cells[:1])).getroot()
    failure = root.find(".//failure")
    assert failure is not None and "output" in (failure.get("message") or "")


# -- index.html and the evidence pages -------------------------------------------------------------


FILTERS_JS = (Path(__file__).parents[2] / "src/compatlab/report/templates/filters.js").read_text()


class _Page(HTMLParser):
    """Collects what the tests look at: grid cells, chip links, image sources, scripts.

    ``scripts`` counts scripts other than the index's own filters (the one a page may run).
    """

    def __init__(self) -> None:
        super().__init__()
        self.grid_cells = 0
        self.in_grid = False
        self.links: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.external: list[str] = []
        self.in_script = False
        self.script_text: list[str] = []

    def handle_data(self, data: str) -> None:
        if self.in_script:
            self.script_text.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and "grid" in (a.get("class") or ""):
            self.in_grid = True
        if self.in_grid and tag == "td":
            self.grid_cells += 1
        if tag == "a" and "chip" in (a.get("class") or ""):
            self.links.append(a.get("href") or "")
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "script":
            self.in_script = True
            self.script_text = []
        for name in ("href", "src"):
            value = a.get(name) or ""
            if value.startswith(("http:", "https:", "//")):
                self.external.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.in_grid = False
        if tag == "script":
            self.in_script = False
            self.scripts += "".join(self.script_text) != FILTERS_JS


def test_index_has_a_grid_cell_per_build_and_hardware(sample: Sample) -> None:
    run_dir, run, cells, planned = sample
    index = render_html(run_dir, run, cells, planned=planned)
    page = _Page()
    page.feed(index.read_text())
    assert page.grid_cells == len(BUILDS) * len(HARDWARE)
    assert len(page.links) == len(cells)  # every result is a linked chip; not-run ones are not
    for href in page.links:
        assert (run_dir / href).is_file(), href
    assert page.scripts == 0 and page.external == []
    html = index.read_text()
    assert "NO-GO: the candidate fails" in html
    assert html.count("NOT RUN</span>") == 3


def test_evidence_page_shows_timeline_serial_and_screenshot(sample: Sample) -> None:
    run_dir, run, cells, planned = sample
    render_html(run_dir, run, cells, planned=planned)
    page_path = run_dir / "cells" / "win11-23h2_uefi-sb-tpm_other-edr.html"
    html = page_path.read_text()
    page = _Page()
    page.feed(html)
    assert page.images == ["../cells/win11-23h2/uefi-sb-tpm/other-edr/screen.png"]
    assert (page_path.parent / page.images[0]).is_file()
    assert html.count('<tr class="bad">') >= 6  # 3 crashes + 3 bugcheck lines, highlighted
    assert "PAGE_FAULT_IN_NONPAGED_AREA" in html and "\x1b" not in html
    # 150 boot lines + 3 stop lines: the last 80 start at boot line 73
    assert "boot line 73" in html and "boot line 72" not in html
    assert 'domain.log <span class="muted">(missing)</span>' in html
    serial = html.split('<pre class="serial">', 1)[1].split("</pre>", 1)[0]
    assert serial.count("\n") == 80  # one line per line, not run together
    assert '<span class="hot">*** STOP: 0x00000050' in serial


def test_failures_are_grouped_by_signature(sample: Sample) -> None:
    run_dir, run, cells, planned = sample
    html = render_html(run_dir, run, cells, planned=planned).read_text()
    table = html.split("Failures by signature", 1)[1].split("</table>", 1)[0]
    loop_row = next(row for row in table.split("<tr>") if "0x50" in row)
    assert "<strong>16</strong>" in loop_row and "every cell has other-edr" in loop_row


def test_timeline_shows_the_qmp_bugcheck_decoded(tmp_path: Path) -> None:
    run, cells, _ = sample_run(tmp_path)
    info = {"type": "hyper-v", "arg1": 0x50, "arg2": 1, "arg3": 2, "arg4": 3, "arg5": 4}
    payload = json.dumps({"action": "pause", "info": info})
    cells[0].events = [Event(7.0, "qmp", "guest_panicked", "hyper-v", {"payload": payload})]
    render_html(tmp_path, run, cells[:1])
    html = (tmp_path / "cells" / "win10-22h2_bios-1cpu_none.html").read_text()
    assert "0x50 PAGE_FAULT_IN_NONPAGED_AREA (0x1, 0x2, 0x3, 0x4)" in html
    assert "payload=" not in html


def test_hostile_values_are_escaped(tmp_path: Path) -> None:
    run, cells, _ = sample_run(tmp_path)
    evil = '<script>alert("x")</script>'
    cell = cells[0]
    cell.id = f"win10/<b>hw</b>/{evil}"
    cell.products = (evil,)
    cell.reason = f"crash: {evil} & more"
    cell.verdict = Verdict.CRASH
    cell.attribution = Attribution.CANDIDATE
    cell.bugcheck = Bugcheck("0x50", evil)
    cell.events = [Event(1.0, "serial", "crashed", evil, {"k": evil})]
    cell.commands = [CommandRecord("x", evil, 1, evil, evil, 1.0)]
    cell.artifacts = {"serial_log": "../../../../etc/passwd", "screenshot": "/etc/passwd"}
    run = RunInfo(**{**run.__dict__, "candidate_name": evil})
    index = render_html(tmp_path, run, cells[:2])
    pages = [index, *sorted((tmp_path / "cells").glob("*.html"))]
    for path in pages:
        html = path.read_text()
        parsed = _Page()
        parsed.feed(html)
        assert parsed.scripts == 0, path
        assert "&lt;script&gt;" in html, path
    evidence = next(p for p in pages if "script" in p.name)
    assert "root:" not in evidence.read_text()  # the artifact outside the run is not read


def test_summary_levels(tmp_path: Path) -> None:
    _, cells, _ = sample_run(tmp_path)
    assert summarize(cells).level == "no-go"
    passing = [
        c for c in cells if not c.verdict.is_failure or c.attribution is Attribution.BASELINE
    ]
    assert summarize(passing).level == "go"
    assert "baseline" in summarize(passing).detail
    assert summarize(passing, not_run=2).level == "incomplete"
    assert summarize([]).headline == "INCOMPLETE: no cell has run"


def test_render_report_rerenders_from_results_json(sample: Sample) -> None:
    run_dir, run, cells, _ = sample
    write_results(run_dir, run, cells)
    index = render_report(run_dir)
    assert index == run_dir / "index.html"
    assert (run_dir / "junit.xml").is_file()
    assert len(list((run_dir / "cells").glob("*.html"))) == len(cells)


if __name__ == "__main__":  # render the sample for a human: python tests/unit/test_report.py DIR
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/compatlab-sample")
    out.mkdir(parents=True, exist_ok=True)
    sample_run_, sample_cells, sample_planned = sample_run(out)
    write_results(out, sample_run_, sample_cells)
    write_junit(out, sample_run_, sample_cells)
    print(render_html(out, sample_run_, sample_cells, planned=sample_planned))
