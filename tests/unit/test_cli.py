"""The compatlab command's lab-side subcommands: images build, report."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from compatlab.cli import main
from compatlab.model import CellResult, Verdict
from compatlab.report import RunInfo, write_results
from tests.support.catalogs import write


def test_report_rerenders_from_results_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RunInfo("r1", ("matrix/demo.yaml",), "sensor", "1.0", datetime(2026, 1, 1, tzinfo=UTC))
    cell = CellResult(
        "a/b/none",
        "a",
        "b",
        (),
        Verdict.HANG,
        reason="hang: no boot in 90 s",
        matrix="matrix/demo.yaml",
    )
    write_results(tmp_path, run, [cell])
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "index.html").exists() and (tmp_path / "junit.xml").exists()
    assert "hang: no boot in 90 s" in (tmp_path / "junit.xml").read_text()
    assert str(tmp_path / "index.html") in capsys.readouterr().out


def test_report_on_a_folder_without_results_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json" in capsys.readouterr().err


def test_images_build_runs_each_recipe_with_its_variant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "configs").mkdir()
    write(
        tmp_path / "images" / "tiny.yaml",
        f"""
        name: tiny
        os_family: linux
        build: "1"
        disk: {tmp_path}/out/tiny/disk.qcow2
        firmware: [bios]
        channel: agent
        recipe: fake
        variant: v7
    """,
    )
    write(
        tmp_path / "images" / "recipes" / "fake" / "build.sh",
        'mkdir -p "$1" && echo "$2" > "$1/variant" && echo "built $2"\n',
    )
    assert main(["images", "build", "--project", str(tmp_path)]) == 0
    assert (tmp_path / "out" / "tiny" / "variant").read_text() == "v7\n"
    assert "image tiny: built v7" in capsys.readouterr().out


def test_images_build_failure_names_the_image_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "configs").mkdir()
    write(
        tmp_path / "images" / "tiny.yaml",
        """
        name: tiny
        os_family: linux
        build: "1"
        disk: /nonexistent/disk.qcow2
        firmware: [bios]
        channel: agent
        recipe: fake
    """,
    )
    write(tmp_path / "images" / "recipes" / "fake" / "build.sh", 'echo "no kernel" >&2; exit 3\n')
    assert main(["images", "build", "--project", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "building image tiny failed (exit 3)" in err and "no kernel" in err
