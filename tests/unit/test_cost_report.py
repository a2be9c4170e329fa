"""The guest's cost in results.json and in the report: the per-phase ``cost`` key read back (and
refused when malformed, at its JSON path), old files without it, the cell page's table and the
index's flags -- every value escaped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compatlab.cost import Sample, Window, phase_cost_json, summarize
from compatlab.errors import InputError
from compatlab.model import Boot, CellResult, Verdict
from compatlab.report import load_results, render_html, write_results
from compatlab.report.cost import FLAG_SHARE, cost_flags, cost_table
from tests.support.cells import MATRIX, run_info

EVIL = "<script>alert(1)</script>\"'javascript:alert(2)"


def bake(boot: int, cpu_share: float, *, write_rate: int = 0, note: str = "") -> Window:
    """A 10 s bake at a steady CPU share and write rate, 150 MiB of guest memory in use."""
    samples = [
        Sample(
            taken=float(t),
            cpu_ns=round(cpu_share * t * 1e9),
            disk_write_bytes=write_rate * t,
            guest_available_kib=1024 * 1024,
            guest_usable_kib=1024 * 1024 - 150 * 1024,
        )
        for t in range(11)
    ]
    window = summarize(samples, boot=boot)
    return Window(**{**window.__dict__, "note": note}) if note else window


def costly_cell(cell_id: str, baseline: float, candidate: float, **changes: Any) -> CellResult:
    build, hardware, products = cell_id.split("/")
    cell = CellResult(
        id=cell_id,
        build=build,
        hardware=hardware,
        products=() if products == "none" else tuple(products.split("+")),
        verdict=Verdict.PASS,
        matrix=MATRIX,
        boots=[Boot(1, "completed", 20.0, "baseline"), Boot(2, "completed", 22.0, "boots")],
        phases=[
            {
                "phase": "baseline",
                "outcome": "pass",
                "detail": "",
                "t": 1.0,
                "seconds": 30.0,
                "cost": phase_cost_json([bake(1, baseline)]),
            },
            {
                "phase": "boots",
                "outcome": "pass",
                "detail": "",
                "t": 31.0,
                "seconds": 30.0,
                "cost": phase_cost_json([bake(1, candidate), bake(2, 0.0, note=EVIL)]),
            },
        ],
    )
    for key, value in changes.items():
        setattr(cell, key, value)
    return cell


def test_results_json_keeps_the_cost_and_old_files_without_it_still_load(tmp_path: Path) -> None:
    cells = [costly_cell("a/h/none", 0.1, 0.2)]
    write_results(tmp_path, run_info(), cells)
    back = load_results(tmp_path).cells[0]
    assert back.phases[1]["cost"] == json.loads(json.dumps(cells[0].phases[1]["cost"]))

    doc = json.loads((tmp_path / "results.json").read_text())
    for phase in doc["cells"][0]["phases"]:
        del phase["cost"]
    (tmp_path / "results.json").write_text(json.dumps(doc))
    old = load_results(tmp_path).cells[0]
    assert "cost" not in old.phases[0]
    assert cost_table(old) is None


def test_a_malformed_cost_is_refused_at_its_json_path(tmp_path: Path) -> None:
    write_results(tmp_path, run_info(), [costly_cell("a/h/none", 0.1, 0.2)])
    doc = json.loads((tmp_path / "results.json").read_text())
    doc["cells"][0]["phases"][1]["cost"]["bakes"][1]["seconds"] = "ten"
    (tmp_path / "results.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"cells\[0\]\.phases\[1\]\.cost: bakes\[1\]\.seconds"):
        load_results(tmp_path)


def test_the_cell_table_compares_baseline_and_candidate_boot_time_included() -> None:
    table = cost_table(costly_cell("a/h/none", 0.10, 0.20))
    assert table is not None
    rows = {r.label: r for r in table.rows}
    cpu = rows["CPU"]
    assert (cpu.baseline, cpu.candidate, cpu.difference, cpu.change) == (
        "0.100 CPU-s/s",
        "0.200 CPU-s/s",
        "+0.100 CPU-s/s",
        "+100%",
    )
    assert cpu.over and cpu.worst == "boot 1"
    assert not rows["guest memory in use (peak)"].over  # the same on both sides
    boot = rows["boot time"]
    assert (boot.baseline, boot.candidate, boot.change, boot.over) == (
        "20.0 s",
        "22.0 s",
        "+10%",
        False,
    )
    assert table.left_out == [f"with the candidate, boot 2: {EVIL}"]
    assert table.bakes == "1 baseline bake against 1 with the candidate"


def test_the_index_flags_only_cells_over_the_share_largest_rise_first() -> None:
    cells = [
        costly_cell("a/h/none", 0.10, 0.11),  # +10%: under
        costly_cell("a/h/av", 0.10, 0.20),  # +100%
        costly_cell("b/h/none", 0.10, 0.40),  # +300%
        costly_cell("b/h/av", 0.10, 0.10, phases=[]),  # not measured
    ]
    flags = cost_flags(cells, {id(c): f"cells/{n}.html" for n, c in enumerate(cells)})
    assert [f.cell.id for f in flags.rows] == ["b/h/none", "a/h/av"]
    assert flags.measured == 3 and flags.more == 0 and flags.share == FLAG_SHARE
    assert flags.rows[0].over.startswith("CPU +300%")
    limited = cost_flags(cells, {id(c): "x" for c in cells}, limit=1)
    assert len(limited.rows) == 1 and limited.more == 1


def test_the_pages_show_the_cost_escaped(tmp_path: Path) -> None:
    cell = costly_cell("b/h/edr", 0.10, 0.40, products=(EVIL,))
    quiet = costly_cell("a/h/none", 0.10, 0.10)
    # The candidate's second bake carries a hostile note: the page says why it was left out.
    index = render_html(tmp_path, run_info(), [cell, quiet]).read_text()
    pages = {p.name: p.read_text() for p in (tmp_path / "cells").glob("*.html")}
    page = next(text for name, text in pages.items() if "edr" in name)

    assert 'id="cost"' in page and "0.400 CPU-s/s" in page and "+300%" in page
    assert '<tr class="bad">' in page.split('id="cost"')[1].split("</table>")[0]
    assert "Cost on the guest over +25% (1 of 2 cells measured)" in index
    assert "CPU +300%" in index
    assert "a/h/none" not in index.split("Cost on the guest over")[1].split("</table>")[0]
    assert "Left out: with the candidate, boot 2: &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'data-p="&lt;script&gt;' in index  # the flag row's product, for the filters
    for html in (index, page):
        assert "<script>alert" not in html
        assert "\"'javascript" not in html
