"""The HTML report of issue 11: filters kept in the URL, SVG timeline strips and boot charts,
crash groups by signature, failure rates of repeated cells, the blast radius, and guest text
that is escaped and cut with a mark -- on hostile results as well as ordinary ones.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from compatlab.cli import main
from compatlab.model import (
    Attribution,
    Boot,
    Bugcheck,
    CellResult,
    CommandRecord,
    Event,
    Repeat,
    Verdict,
)
from compatlab.report import PlannedCell, RunInfo, render_html, render_report, write_results
from compatlab.report.html import GUEST_LINE
from compatlab.text import cut_mark
from tests.support.cells import MATRIX, crashed_cell, run_info

EVIL = "\"'><script>alert(1)</script><img src=x onerror=alert(2)> javascript:alert(3)"
NULL = "BUG: kernel NULL pointer dereference in acme_apply_channel [acme_sensor]"


class Page(HTMLParser):
    """Every tag, attribute and text of a page, as a browser's parser sees them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_script = tag == "script"
        if tag == "script":
            self.scripts.append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)

    def all(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.tags
            if t == tag and all(w in a.get(k.rstrip("_"), "").split() for k, w in wanted.items())
        ]

    @property
    def policy(self) -> str:
        (meta,) = [a for t, a in self.tags if t == "meta" and "http-equiv" in a]
        return meta["content"]


def _run(**kw: object) -> RunInfo:
    return run_info(candidate_sha256="5e" * 32, compatlab_version="9.9", **kw)


def _sample() -> list[CellResult]:
    boots = [
        Boot(1, "completed", 20.0, "provision"),
        Boot(2, "completed", 18.0, "baseline"),
        Boot(3, "completed", 27.0, "boots"),
        Boot(4, "completed", 29.0, "boots"),
        Boot(5, "completed", 21.0, "rollback"),
    ]
    events = [
        Event(0.1, "scenario", "phase", "provision"),
        Event(1.0, "libvirt", "started", "booted"),
        Event(20.0, "channel", "agent_ready", "agent answered"),
        Event(30.0, "scenario", "phase", "boots"),
        Event(31.0, "libvirt", "reboot"),
        Event(60.0, "qmp", "guest_panicked", "", {"action": "pause"}),
        Event(60.1, "serial", "bugcheck", "panic", Bugcheck("panic", "x").as_event_data()),
        Event(0.2, "rerun-1/scenario", "phase", "provision"),
        Event(19.0, "rerun-1/channel", "agent_ready", "agent answered"),
    ]
    crash = Bugcheck("panic", "Kernel panic - not syncing: Fatal exception", signature=NULL)
    return [
        crashed_cell(
            "linux-a/bios/edr",
            verdict=Verdict.BOOT_LOOP,
            attribution=Attribution.CANDIDATE,
            bugcheck=crash,
            fleet_share=0.15,
            boots=boots,
            events=events,
        ),
        crashed_cell(
            "linux-b/uefi/edr",
            attribution=Attribution.CANDIDATE,
            bugcheck=crash,
            fleet_share=0.07,
            repeats=[Repeat(Verdict.PASS, seconds=40)] * 4
            + [Repeat(Verdict.CRASH, Attribution.CANDIDATE, 9.0, NULL)],
        ),
        crashed_cell(
            "linux-b/uefi/av",
            attribution=Attribution.CANDIDATE,
            bugcheck=Bugcheck(
                "panic",
                "Kernel panic - not syncing: Fatal exception",
                signature="BUG: soft lockup in av_scan [av]",
            ),
            fleet_share=0.0,
        ),
        crashed_cell("linux-a/uefi/none", verdict=Verdict.PASS, bugcheck=None, fleet_share=0.78),
    ]


@pytest.fixture
def rendered(tmp_path: Path) -> tuple[Path, Page]:
    planned = [PlannedCell(MATRIX, "linux-c", "bios", ("av", "edr"))]
    index = render_html(tmp_path, _run(), _sample(), planned=planned, history=tmp_path / "h.sqlite")
    return tmp_path, Page(index.read_text())


def test_filters_offer_the_report_s_values_and_every_cell_carries_them(
    rendered: tuple[Path, Page],
) -> None:
    _, page = rendered
    assert len(page.all("form", id="filters")) == 1
    selects = {a["name"] for a in page.all("select")}
    assert selects >= {"verdict", "build", "hardware", "product"}
    assert page.all("input", name="q") and page.all("input")[0]["type"] == "search"
    options = [a.get("value") for t, a in page.tags if t == "option"]
    assert {"failing", "boot_loop", "crash", "pass", "not_run"} <= set(options)
    chips = page.all("a", class_="chip") + page.all("span", class_="chip")
    assert len(chips) == 5  # four results and the planned cell that did not run
    by_id = {c["data-cell"]: c for c in chips}
    loop = by_id["linux-a/bios/edr"]
    assert [loop[k] for k in ("data-v", "data-b", "data-h", "data-p")] == [
        "boot_loop",
        "linux-a",
        "bios",
        "edr",
    ]
    assert by_id["linux-c/bios/av+edr"]["data-v"] == "not_run"
    # Searchable by signature: the search box reads the cell's row among the failing cells,
    # found by the page both link to (filters.js), instead of a copy of it in every chip.
    assert not any("data-q" in attrs for _, attrs in page.tags)
    html = (rendered[0] / "index.html").read_text()
    failing = html.split('id="failing-cells"', 1)[1]  # the last section: the failing cells
    row = next(r for r in failing.split("<tr ")[1:] if 'data-cell="linux-b/uefi/edr"' in r)
    assert NULL in row and f'href="{by_id["linux-b/uefi/edr"]["href"]}"' in row
    text = " ".join(page.text)
    for build in ("linux-a", "linux-b", "linux-c"):
        assert build in text


def test_the_only_script_is_the_filter_script_the_policy_allows(
    rendered: tuple[Path, Page],
) -> None:
    run_dir, page = rendered
    (script,) = page.scripts
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in page.policy
    assert "default-src 'none'" in page.policy
    assert "location.hash" in script and "replaceState" in script  # the state is in the URL
    for cell_page in (run_dir / "cells").glob("*.html"):
        parsed = Page(cell_page.read_text())
        assert parsed.scripts == [] and "script-src 'none'" in parsed.policy


def test_the_header_says_the_share_of_the_fleet(rendered: tuple[Path, Page]) -> None:
    _, page = rendered
    assert "3 failing cells, about 22% of the fleet" in " ".join(page.text)


def test_crashes_group_by_signature_across_verdicts(rendered: tuple[Path, Page]) -> None:
    run_dir, _ = rendered
    html = (run_dir / "index.html").read_text()
    table = html.split("Failures by signature", 1)[1].split("</table>", 1)[0]
    rows = table.split("<tr>")[1:]
    null_row = next(r for r in rows if "NULL pointer" in r)
    # one boot loop and one crash, same signature: one group of 2, both verdicts shown
    assert "<strong>2</strong>" in null_row and "LOOP" in null_row and "CRASH" in null_row
    lockup = next(r for r in rows if "soft lockup" in r)
    assert "<strong>1</strong>" in lockup  # same bugcheck code, another signature
    assert "first seen in this run" in null_row


def test_a_repeated_cell_shows_its_failure_rate_and_is_not_a_pass(
    rendered: tuple[Path, Page],
) -> None:
    run_dir, page = rendered
    chip = next(c for c in page.all("a", class_="chip") if c["data-cell"] == "linux-b/uefi/edr")
    assert chip["data-v"] == "crash"
    index = (run_dir / "index.html").read_text()
    assert '1/5 <span class="muted">(4% to 62%)</span>' in index  # Wilson 95% of 1 in 5
    cell = (run_dir / "cells" / "linux-b_uefi_edr.html").read_text()
    assert "Repeats (5): failed 1/5, 95% interval 4% to 62%" in cell
    assert cell.count('<tr class="bad">') >= 1 and cell.count('<tr class="good">') >= 4


def test_cell_page_draws_the_timeline_strip_and_boot_chart(rendered: tuple[Path, Page]) -> None:
    run_dir, _ = rendered
    page = Page((run_dir / "cells" / "linux-a_bios_edr.html").read_text())
    assert len(page.all("svg", class_="strip")) == 1
    lanes = [t for t, a in page.tags if t == "text" and a.get("class") == "lane"]
    assert len(lanes) == 2  # the deciding VM and the rerun
    assert {"candidate", "rerun-1"} <= set(page.text)
    assert len(page.all("rect", class_="m-bad")) == 2  # guest_panicked and the bugcheck
    assert len(page.all("rect", class_="band")) == 3  # provision, boots; the rerun's provision
    bars = page.all("rect", class_="bar")
    assert [b["class"].split()[1] for b in bars] == [
        "g-provision",
        "g-baseline",
        "g-candidate",
        "g-candidate",
        "g-rollback",
    ]
    assert page.all("line", class_="median")
    assert "baseline median 18.0 s, with the candidate 28.0 s (+56%)" in " ".join(page.text)
    assert float(bars[3]["height"]) > float(bars[1]["height"])  # 29 s is taller than 18 s


def test_hostile_guest_text_shows_as_text_and_long_text_is_cut_with_a_mark(
    tmp_path: Path,
) -> None:
    long_line = "L" * (GUEST_LINE * 3)
    cell = crashed_cell(
        f"win/hw/{EVIL}",
        products=(EVIL, "javascript:alert(4)"),
        reason=f"crash: {EVIL}",
        bugcheck=Bugcheck("0x50", EVIL, (EVIL,), signature=EVIL),
        events=[
            Event(1.0, "serial", "crashed", EVIL, {"k": EVIL}),
            Event(2.0, f"rerun-1/{EVIL}", EVIL, long_line),
            Event(3.0, "scenario", "phase", EVIL),
        ],
        commands=[CommandRecord("install", EVIL, 1, EVIL, EVIL, 1.0)],
        repeats=[Repeat(Verdict.CRASH, signature=EVIL), Repeat(Verdict.PASS)],
        artifacts={"serial_log": "serial.log", "screenshot": "javascript:alert(5)"},
    )
    (tmp_path / "serial.log").write_text(f"boot\n{EVIL}\nKernel panic {EVIL}\n{long_line}\n")
    index = render_html(tmp_path, _run(candidate_name=EVIL), [cell], history=tmp_path / "h.sqlite")
    pages = [index, *tmp_path.glob("cells/*.html")]
    assert len(pages) == 2
    for path in pages:
        html = path.read_text()
        page = Page(html)
        assert len(page.scripts) == (1 if path == index else 0), path
        for tag, attrs in page.tags:
            assert tag not in ("img", "iframe", "object") or not attrs.get("src", "").startswith(
                "x"
            )
            for name, value in attrs.items():
                assert not name.startswith("on"), (path.name, tag, name)
                if name in ("href", "src", "action"):
                    assert not value.strip().lower().startswith("javascript:"), (tag, value)
        assert "<script>alert(1)</script>" in "".join(page.text)  # shown as text
        assert "<script>alert" not in html
    cell_page = next(p for p in pages if p != index).read_text()
    assert cell_page.count('<mark class="cut">') >= 2  # the long event detail and serial line
    assert cut_mark(len(long_line) - GUEST_LINE) in cell_page


def test_compatlab_report_rerenders_from_results_and_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "reports"
    first, second = reports / "one", reports / "two"
    write_results(
        first, _run(id="one"), [crashed_cell("a/b/c", verdict=Verdict.PASS, bugcheck=None)]
    )
    later = _run(id="two", candidate_version="292", started=run_info().started.replace(hour=9))
    write_results(
        second, later, [crashed_cell("a/b/c", bugcheck=Bugcheck("panic", "x", signature=NULL))]
    )
    assert main(["report", str(first)]) == 0
    assert main(["report", str(second)]) == 0
    assert main(["report", str(second)]) == 0  # again: the history holds each run once
    out = capsys.readouterr().out
    assert str(second / "index.html") in out
    html = (second / "index.html").read_text()
    assert "new failure: 1" in html and re.search(r"compared with run <span[^>]*>one<", html)
    assert (reports / "history.sqlite").is_file()
    own = tmp_path / "elsewhere.sqlite"
    assert main(["report", str(second), "--history", str(own)]) == 0
    assert own.is_file() and "new cell: 1" in (second / "index.html").read_text()
    assert main(["report", str(second), "--no-history"]) == 0
    assert "no history kept" in (second / "index.html").read_text()
    index = render_report(second, history=False)
    assert index == second / "index.html"
