"""The report renders whatever a results.json that parses holds (issue 8): odd numbers and
timestamps shown as they are, long cell ids, huge command output, guest control characters --
never a traceback, never a page the size of the output. The writer: ``test_results_writer.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compatlab.cli import main
from compatlab.model import Bugcheck, CellResult, CommandRecord, Event
from compatlab.report import ResultsWriter, RunInfo, cell_slug, render_report, write_results
from compatlab.report.html import OUTPUT_EXCERPT
from compatlab.text import cut_mark
from tests.support.cells import crashed_cell, run_info

MiB = 1024 * 1024


def _document(run_dir: Path, run: RunInfo, cells: list[CellResult]) -> dict[str, Any]:
    write_results(run_dir, run, cells)
    doc: dict[str, Any] = json.loads((run_dir / "results.json").read_text())
    return doc


def _rewrite(run_dir: Path, doc: dict[str, Any]) -> None:
    # allow_nan: Python's json writes and reads Infinity and NaN; a hand-edited file may too.
    (run_dir / "results.json").write_text(json.dumps(doc, allow_nan=True))


def _report(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    status = main(["report", str(run_dir)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "Traceback" not in err
    return out


# -- 5. odd numbers and timestamps ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e308", "-1e308"])
def test_odd_seconds_are_shown_as_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    doc = _document(tmp_path, run_info(), [crashed_cell()])
    number = float(value)
    doc["cells"][0]["seconds"] = number
    doc["cells"][0]["boots"][0]["seconds"] = number
    doc["cells"][0]["events"][0]["t"] = number
    doc["cells"][0]["attempts"] = 10**300
    doc["cells"][0]["boots"][0]["n"] = -(10**300)
    _rewrite(tmp_path, doc)

    _report(tmp_path, capsys)

    index = (tmp_path / "index.html").read_text()
    page = next((tmp_path / "cells").glob("*.html")).read_text()
    shown = f"{number:.1f}"  # "inf", "-inf", "nan", or all the digits
    assert shown in page
    assert "VM time" in index
    assert (tmp_path / "junit.xml").exists()


def test_naive_and_aware_timestamps_mixed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _document(tmp_path, run_info(), [crashed_cell()])
    doc["run"]["started"] = "2024-07-19T04:09:00"  # naive
    doc["run"]["finished"] = "2024-07-19T05:27:00+02:00"  # aware
    _rewrite(tmp_path, doc)

    _report(tmp_path, capsys)

    index = (tmp_path / "index.html").read_text()
    assert "2024-07-19 04:09:00" in index and "2024-07-19 05:27:00 +0200" in index


def test_a_run_that_ends_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _document(tmp_path, run_info(), [crashed_cell()])
    doc["run"]["started"] = "9999-12-31T23:59:59+00:00"
    doc["run"]["finished"] = "0001-01-01T00:00:00+00:00"
    _rewrite(tmp_path, doc)
    _report(tmp_path, capsys)


def test_odd_strings_in_axis_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # "²" is a digit to str.isdigit() but not to int(); 5000 digits are too many for int().
    cells = [
        crashed_cell("win²/bios/none"),
        crashed_cell("1" * 5000 + "/bios/none"),
        crashed_cell("win10/" + "٣" * 3 + "/none"),
        crashed_cell("win10/uefi/a+b"),
    ]
    doc = _document(tmp_path, run_info(), cells)
    _rewrite(tmp_path, doc)
    _report(tmp_path, capsys)
    assert len(list((tmp_path / "cells").glob("*.html"))) == 4


# -- 5. file names from cell ids ------------------------------------------------------------------


def test_a_300_character_cell_id_still_makes_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_a = "win11/uefi/" + "+".join(f"product-{n:03d}" for n in range(24)) + "+a"
    long_b = long_a[:-1] + "b"
    assert len(long_a) > 255
    doc = _document(tmp_path, run_info(), [crashed_cell(long_a), crashed_cell(long_b)])
    _rewrite(tmp_path, doc)

    _report(tmp_path, capsys)

    pages = sorted(p.name for p in (tmp_path / "cells").glob("*.html"))
    assert len(pages) == 2
    assert all(len(name) <= 125 for name in pages)  # 120 + ".html"
    index = (tmp_path / "index.html").read_text()
    for page in pages:
        assert f'href="cells/{page}"' in index


def test_cell_slugs_are_capped_and_distinct() -> None:
    a = crashed_cell("b/h/" + "x" * 400)
    b = crashed_cell("b/h/" + "x" * 399 + "y")
    assert len(cell_slug(a)) <= 120 and len(cell_slug(b)) <= 120
    assert cell_slug(a) != cell_slug(b)
    assert cell_slug(crashed_cell("demo/bios-1cpu/acme-av")) == "demo_bios-1cpu_acme-av"


# -- 3. command output in the report --------------------------------------------------------------


def test_a_20_mb_output_in_results_json_makes_a_bounded_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _document(tmp_path, run_info(), [crashed_cell()])
    out = "start\n" + "x" * (20 * MiB) + "\nend\n"
    record = CommandRecord("install", "setup.sh", 1, out, out, 30.0, "failure")
    doc["cells"][0]["commands"] = [record.as_json()]
    _rewrite(tmp_path, doc)

    _report(tmp_path, capsys)

    page = next((tmp_path / "cells").glob("*.html"))
    assert page.stat().st_size < 4 * OUTPUT_EXCERPT  # two excerpts and the page itself
    text = page.read_text()
    assert "start" in text and "end" in text
    assert cut_mark(len(out) - OUTPUT_EXCERPT) in text


# -- 4. control characters in the report ----------------------------------------------------------


def test_guest_control_characters_never_reach_the_pages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = "boom\x1b]0;pwned\x07\x1b[2J\x1b[31m red\x1b[0m\x00\x08\x9b5n\r"
    cell = crashed_cell(
        reason="crash: " + hostile,
        bugcheck=Bugcheck("panic", hostile, (hostile,)),
        events=[Event(1.0, "serial", "boot_marker", hostile, {"line": hostile})],
        commands=[CommandRecord("install", "setup.sh", 1, hostile, hostile, 1.0)],
        checks=[{"name": hostile, "passed": False, "detail": hostile}],
    )
    doc = _document(tmp_path, run_info(), [cell])
    _rewrite(tmp_path, doc)

    _report(tmp_path, capsys)

    for path in [tmp_path / "index.html", tmp_path / "junit.xml", *tmp_path.glob("cells/*")]:
        text = path.read_text()
        for control in ("\x1b", "\x07", "\x00", "\x08", "\x9b", "[2J", "[31m", "\r"):
            assert control not in text, (path.name, control)
        assert "boom" in text


def test_the_page_links_to_the_whole_output(tmp_path: Path) -> None:
    out = "start\n" + "x" * (3 * MiB) + "\nend\n"
    cell = crashed_cell(
        commands=[CommandRecord("install", "setup.sh", 1, out, "short", 30.0, "failure")]
    )
    ResultsWriter(tmp_path, run_info()).add(cell)

    render_report(tmp_path)

    artifact = json.loads((tmp_path / "results.json").read_text())["cells"][0]["artifacts"][
        "command-1-stdout"
    ]
    page = next((tmp_path / "cells").glob("*.html")).read_text()
    assert f'href="../{artifact}"' in page
    assert "stdout (an excerpt)" in page
    assert "stderr (1 line)" in page


def test_lone_surrogates_are_rendered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # JSON can carry "\ud800"; UTF-8 cannot: writing a page with one was a UnicodeEncodeError.
    doc = _document(tmp_path, run_info(), [crashed_cell(reason="lone \ud800 surrogate")])
    _rewrite(tmp_path, doc)

    _report(tmp_path, capsys)

    assert "lone  surrogate" in next((tmp_path / "cells").glob("*.html")).read_text()


def test_artifact_paths_no_file_can_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifacts = {
        "serial_log": "cells/a\x00b/serial.log",
        "screenshot": "x" * 5000 + ".png",
        "domain_log": "/".join(["y" * 200] * 40),
        "escape": "../../etc/passwd",
    }
    doc = _document(tmp_path, run_info(), [crashed_cell(artifacts=artifacts)])
    _rewrite(tmp_path, doc)

    _report(tmp_path, capsys)

    page = next((tmp_path / "cells").glob("*.html")).read_text()
    assert "no serial log" in page and "no screenshot" in page
    assert page.count("(missing)") == 4
