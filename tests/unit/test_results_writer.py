"""results.json per cell (issue 8): each cell serialised once and kept as text -- the file still
the one ``json.dumps`` of the whole run gives --, a command's long output kept as a file with an
excerpt in results.json, and what JSON can hold but strict writing refused (infinite numbers,
lone surrogates) written instead of failing the run.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from compatlab.model import CommandRecord
from compatlab.report import ResultsWriter, results_document, write_results
from compatlab.report.results import RESULTS_OUTPUT_LIMIT, evidence_folder, keep_long_outputs
from compatlab.text import cut_mark
from tests.support.cells import crashed_cell, run_info

MiB = 1024 * 1024


def test_the_writer_writes_what_json_dumps_of_the_run_gives(tmp_path: Path) -> None:
    run = run_info(finished=None)
    cells = [
        crashed_cell(f"demo/bios-{n}cpu/acme-av", reason=f'cell {n} \u2603 "quoted" \\ \n')
        for n in range(5)
    ]
    writer = ResultsWriter(tmp_path / "a", run)
    for cell in cells:
        writer.add(cell)
    writer.add(crashed_cell("demo/bios-2cpu/acme-av", reason="a retry replaces it in place"))
    cells[2] = crashed_cell("demo/bios-2cpu/acme-av", reason="a retry replaces it in place")
    finished = datetime(2024, 7, 19, 6, 0, tzinfo=UTC)
    writer.finish(finished)

    # What the writer wrote before it kept cells as text: the whole document serialised at once.
    document = results_document(run_info(finished=finished), cells)
    expected = json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    assert (tmp_path / "a" / "results.json").read_text() == expected
    assert write_results(tmp_path / "b", run_info(finished=finished), cells).read_text() == expected
    empty = results_document(run_info(finished=finished), [])
    written = write_results(tmp_path / "c", run_info(finished=finished), [])
    assert written.read_text() == json.dumps(empty, indent=1) + "\n"


def test_the_writer_keeps_long_output_as_a_file_and_an_excerpt_in_results_json(
    tmp_path: Path,
) -> None:
    out = "start\n" + "x" * (3 * MiB) + "\nend\n"
    record = CommandRecord("install", "setup.sh", 1, out, "short", 30.0, "failure")
    writer = ResultsWriter(tmp_path, run_info(finished=None))

    writer.add(crashed_cell(commands=[record]))

    assert (tmp_path / "results.json").stat().st_size < 2 * RESULTS_OUTPUT_LIMIT
    doc = json.loads((tmp_path / "results.json").read_text())
    kept = doc["cells"][0]["commands"][0]
    assert kept["stderr"] == "short"
    assert kept["stdout"].startswith("start\n") and kept["stdout"].endswith("\nend\n")
    assert cut_mark(len(out) - RESULTS_OUTPUT_LIMIT) in kept["stdout"]
    artifact = doc["cells"][0]["artifacts"]["command-1-stdout"]
    assert artifact == f"{evidence_folder(crashed_cell())}/command-1-stdout.txt"
    assert (tmp_path / artifact).read_text() == out
    # What the writer holds for the report is the excerpt too: a run's memory stays bounded.
    assert len(writer.cells[0].commands[0].stdout) < RESULTS_OUTPUT_LIMIT + 64


def test_the_evidence_folder_is_the_scenario_s() -> None:
    # The scenario copies serial.log and screenshots into report_dir/cells/<storage cell_slug>.
    from compatlab.lab.storage import cell_slug

    cell = crashed_cell("demo/bios-1cpu/acme-av+other-edr")
    assert evidence_folder(cell) == "cells/" + cell_slug("demo/demo/bios-1cpu/acme-av+other-edr")


def test_short_output_leaves_the_cell_as_it_is(tmp_path: Path) -> None:
    cell = crashed_cell(commands=[CommandRecord("install", "x", 0, "ok\n", "", 1.0)])
    assert keep_long_outputs(tmp_path, cell) is cell
    assert not (tmp_path / "cells").exists()


def test_a_full_disk_keeps_the_excerpt_without_the_file(tmp_path: Path) -> None:
    blocked = tmp_path / "cells"
    blocked.write_text("a file where the folder should be")
    cell = crashed_cell(commands=[CommandRecord("install", "x", 0, "y" * MiB, "", 1.0)])

    kept = keep_long_outputs(tmp_path, cell, limit=1000)

    assert "command-1-stdout" not in kept.artifacts
    assert cut_mark(MiB - 1000) in kept.commands[0].stdout


def test_the_writer_survives_a_cell_with_infinite_seconds(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path, run_info(finished=None))
    writer.add(crashed_cell(seconds=float("inf")))
    writer.add(crashed_cell("demo/uefi/none"))
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [c["id"] for c in doc["cells"]] == ["demo/bios-1cpu/acme-av", "demo/uefi/none"]


def test_lone_surrogates_are_written(tmp_path: Path) -> None:
    # JSON can carry "\ud800"; UTF-8 cannot: the write was a UnicodeEncodeError.
    writer = ResultsWriter(tmp_path, run_info(finished=None))
    writer.add(crashed_cell(reason="lone \ud800 surrogate"))
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["cells"][0]["reason"] == "lone \ud800 surrogate"
