"""results.json fields added for issue 11 -- per cell ``fleet_share`` and ``repeats``, per run
``candidate.sha256``, ``matrix_sha256`` and ``compatlab_version`` -- written, read back, and
absent from older files without breaking them; and the checksums, recomputed without compatlab.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from compatlab.errors import InputError
from compatlab.model import Attribution, Bugcheck, Repeat, Verdict
from compatlab.report import ResultsWriter, load_results, write_results
from compatlab.report.provenance import (
    candidate_sha256,
    compatlab_version,
    matrix_sha256,
    payload_sha256,
)
from tests.support.cells import crashed_cell, run_info

REPEATS = [
    Repeat(Verdict.PASS, None, 41.5, ""),
    Repeat(Verdict.CRASH, Attribution.CANDIDATE, 12.25, "BUG: soft lockup in acme_scan [acme]"),
    Repeat(Verdict.INFRA_ERROR, Attribution.INFRA, 3.0, ""),
]


def test_new_fields_round_trip(tmp_path: Path) -> None:
    run = run_info(
        candidate_sha256="ab" * 32,
        matrix_sha256={"matrix/demo.yaml": "cd" * 32},
        compatlab_version="0.2.0",
    )
    cells = [
        crashed_cell("a/hw/none", fleet_share=0.125, repeats=REPEATS),
        crashed_cell("b/hw/none", bugcheck=Bugcheck("panic", "x", signature="BUG: y in z [m]")),
    ]
    write_results(tmp_path, run, cells)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["run"]["candidate"] == {
        "name": "sensor-content",
        "version": "291",
        "sha256": "ab" * 32,
    }
    assert doc["run"]["matrix_sha256"] == {"matrix/demo.yaml": "cd" * 32}
    assert doc["run"]["compatlab_version"] == "0.2.0"
    first, second = doc["cells"]
    assert first["fleet_share"] == 0.125 and second["fleet_share"] is None
    assert first["repeats"][1] == {
        "verdict": "crash",
        "attribution": "candidate",
        "seconds": 12.25,
        "signature": "BUG: soft lockup in acme_scan [acme]",
    }
    assert second["repeats"] == []
    back = load_results(tmp_path)
    assert back.run == run
    assert back.cells[0].repeats == REPEATS and back.cells[0].fleet_share == 0.125
    assert back.cells[1].bugcheck is not None
    assert back.cells[1].bugcheck.signature == "BUG: y in z [m]"
    assert [c.as_json() for c in back.cells] == [c.as_json() for c in cells]


def test_a_run_of_unknown_checksum_writes_null_and_reads_empty(tmp_path: Path) -> None:
    write_results(tmp_path, run_info(), [crashed_cell()])
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["run"]["candidate"]["sha256"] is None
    assert load_results(tmp_path).run.candidate_sha256 == ""


OLD_FILE = {  # a results.json as compatlab wrote it before issue 11
    "schema": 1,
    "run": {
        "id": "20261126T001852-45e5",
        "matrix": ["matrix/demo.yaml"],
        "candidate": {"name": "acme-sensor", "version": "7.11.1"},
        "started": "2026-11-26T00:18:52+00:00",
        "finished": "2026-11-26T00:29:14+00:00",
        "hosts": ["qemu:///system"],
        "complete": True,
    },
    "cells": [
        {
            "id": "tinylinux-a/bios-1cpu/none",
            "matrix": "matrix/demo.yaml",
            "build": "tinylinux-a",
            "hardware": "bios-1cpu",
            "products": [],
            "verdict": "boot_loop",
            "attribution": "candidate",
            "bugcheck": {"code": "panic", "name": "Kernel panic - not syncing", "params": []},
            "reason": "boot loop",
            "boots": [{"n": 1, "outcome": "crash", "seconds": 7.4}],
            "events": [{"t": 1.0, "source": "libvirt", "kind": "crashed", "detail": ""}],
            "artifacts": {},
            "seconds": 48.2,
        }
    ],
}


def test_an_old_results_json_still_loads_and_rewrites(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(OLD_FILE))
    old = load_results(tmp_path)
    assert old.run.candidate_sha256 == "" and dict(old.run.matrix_sha256) == {}
    assert old.run.compatlab_version == ""
    cell = old.cells[0]
    assert cell.fleet_share is None and cell.repeats == []
    assert cell.bugcheck is not None and cell.bugcheck.signature == ""
    # a resumed run writes the new keys beside the old ones
    writer = ResultsWriter.resume(tmp_path, run_info(id=old.run.id, finished=None))
    writer.add(crashed_cell("tinylinux-a/bios-1cpu/acme-av", fleet_share=0.5))
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [c.get("fleet_share") for c in doc["cells"]] == [None, 0.5]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"fleet_share": 1.5}, "not a share between 0 and 1"),
        ({"fleet_share": "12%"}, "fleet_share: expected a number"),
        ({"repeats": [{"verdict": "exploded"}]}, r"repeats\[0\].verdict: unknown value"),
        ({"repeats": {"verdict": "pass"}}, "repeats: expected a list"),
    ],
)
def test_bad_new_fields_are_named(
    tmp_path: Path, change: dict[str, object], complaint: str
) -> None:
    doc = json.loads(json.dumps(OLD_FILE))
    doc["cells"][0].update(change)
    (tmp_path / "results.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=complaint):
        load_results(tmp_path)


# -- checksums ------------------------------------------------------------------------------------


def _payload(root: Path) -> Path:
    folder = root / "acme-sensor-7.11.1"
    (folder / "drivers" / "x64").mkdir(parents=True)
    (folder / "install.sh").write_text("#!/bin/sh\ninsmod acme.ko\n")
    (folder / "drivers" / "x64" / "acme.sys").write_bytes(bytes(range(256)) * 50)
    (folder / "drivers" / "Readme").write_text("ä b\n")
    (folder / ".hidden").write_text("counted too\n")
    (folder / "link").symlink_to(folder / "install.sh")  # not followed, not counted
    return folder


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils' sha256sum")
def test_the_payload_checksum_is_the_documented_shell_pipeline(tmp_path: Path) -> None:
    folder = _payload(tmp_path)
    pipeline = (
        "(cd \"$1\" && find . -type f | sed 's|^\\./||' | LC_ALL=C sort"
        " | xargs -d '\\n' sha256sum) | sha256sum"
    )
    shell = subprocess.run(
        ["/bin/bash", "-c", pipeline, "sh", str(folder)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert payload_sha256(folder) == shell.stdout.split()[0]
    one = folder / "install.sh"
    assert payload_sha256(one) == hashlib.sha256(one.read_bytes()).hexdigest()


def test_checksums_change_with_the_payload_and_survive_unreadable_ones(tmp_path: Path) -> None:
    folder = _payload(tmp_path)
    before = candidate_sha256([folder])
    (folder / "drivers" / "Readme").write_text("ä c\n")
    assert candidate_sha256([folder]) != before
    other = tmp_path / "other.msu"
    other.write_bytes(b"MSCF")
    both = candidate_sha256([folder, other, folder])
    assert both == f"{payload_sha256(folder)} + {payload_sha256(other)}"
    assert candidate_sha256([tmp_path / "missing"]) == ""
    matrix = tmp_path / "demo.yaml"
    matrix.write_text("candidate: {}\n")
    sums = matrix_sha256([matrix, tmp_path / "gone.yaml"])
    assert sums == {str(matrix): hashlib.sha256(b"candidate: {}\n").hexdigest()}
    assert compatlab_version()  # the package is installed (editable) in the test environment
