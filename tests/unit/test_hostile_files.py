"""Inputs that crashed the loader (issue 8, class 1): each ends as an input error naming the file,
and the line where there is one -- never a traceback, a hang or unbounded memory.

FIFOs and devices named ``*.yaml``, oversized files, symlink loops (matrix, catalog folder and
file, payloads, an image's disk), YAML the library itself chokes on (keys that are lists or maps,
nesting thousands deep, bad scalars, bad bytes), and ``previous:`` / results.json files of the
wrong shape. ``test_fuzz_loaders.py`` tries mutations of valid files at random.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from compatlab.catalog import load_catalog, parse_hardware, parse_image
from compatlab.errors import CatalogError, InputError, MatrixError
from compatlab.files import MAX_RESULTS_BYTES, MAX_YAML_BYTES, read_text, resolve
from compatlab.matrix import load_matrix
from compatlab.report import load_results
from compatlab.run import load_lab_settings
from tests.support.catalogs import CANDIDATE, make_project, matrix, write
from tests.support.hostile import AXES, BODY_LINE, bounded, load_error, matrix_error


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Path]:
    """A symlink loop: ``loop-a`` -> ``loop-b`` -> ``loop-a``."""
    a, b = tmp_path / "loop-a", tmp_path / "loop-b"
    a.symlink_to(b)
    b.symlink_to(a)
    yield a


# -- 1. files that are not what they claim ---------------------------------------------------


def test_a_fifo_named_yaml_is_refused_without_hanging(project: Path) -> None:
    path = project / "matrix" / "fifo.yaml"
    os.mkfifo(path)
    with pytest.raises(MatrixError, match="is a fifo, not a regular file") as info:
        bounded(lambda: load_matrix(path, catalog_root=project), unblock=path)
    assert info.value.file == path


def test_a_fifo_in_a_catalog_folder_is_refused_without_hanging(project: Path) -> None:
    fifo = project / "configs" / "hardware" / "zz.yaml"
    os.mkfifo(fifo)
    with pytest.raises(CatalogError, match="is a fifo") as info:
        bounded(lambda: load_matrix(matrix(project, AXES), catalog_root=project), unblock=fifo)
    assert info.value.file == fifo


def test_a_device_named_yaml_is_refused_before_it_is_read(project: Path) -> None:
    # /dev/zero never ends: read whole, it took gigabytes before the loader gave up.
    path = project / "matrix" / "zero.yaml"
    path.symlink_to("/dev/zero")
    error = load_error(path, project)
    assert "is a char device, not a regular file" in error.message


def test_a_folder_named_yaml_is_refused(project: Path) -> None:
    (project / "images" / "folder.yaml").mkdir()
    with pytest.raises(CatalogError, match="is a folder, not a regular file"):
        load_matrix(matrix(project, AXES), catalog_root=project)


def test_an_oversized_yaml_is_refused_before_it_is_read(project: Path) -> None:
    path = project / "matrix" / "big.yaml"
    with path.open("w") as out:
        out.write("# a log pasted into the matrix\n")
        out.truncate(MAX_YAML_BYTES + 1)  # sparse: cheap to make, a megabyte to read
    error = load_error(path, project)
    assert "larger than the 1 MiB compatlab reads" in error.message


def test_the_size_limit_holds_on_what_is_read_not_what_stat_says(tmp_path: Path) -> None:
    # /proc files say 0 bytes; the reader must count what it reads.
    status = Path("/proc/self/status")
    with pytest.raises(InputError, match="larger than 16 bytes"):
        read_text(status, limit=16)
    assert "Name:" in read_text(status, limit=1 << 20)


def test_bad_utf8_names_the_line(project: Path) -> None:
    path = matrix(project, AXES)
    path.write_bytes(path.read_bytes() + b"scenario: {boots: \xff\xfe}\n")
    error = load_error(path, project)
    assert "not UTF-8" in error.message and error.line == BODY_LINE and error.column == 19


# -- 1. symlink loops ---------------------------------------------------------------------------


def test_a_matrix_file_that_is_a_symlink_loop(project: Path, loop: Path) -> None:
    error = load_error(loop, project)
    assert "symlink loop" in error.message


def test_a_catalog_folder_that_is_a_symlink_loop(project: Path, loop: Path) -> None:
    error = matrix_error(project, AXES + f"catalog: {{images: {loop}}}\n")
    assert "symlink loop" in error.message and error.line == BODY_LINE


def test_a_catalog_root_folder_that_is_a_symlink_loop(project: Path, loop: Path) -> None:
    images = project / "images"
    for path in images.iterdir():
        path.unlink()
    images.rmdir()
    images.symlink_to(loop)
    with pytest.raises(CatalogError, match="symlink loop") as info:
        load_matrix(matrix(project, AXES), catalog_root=project)
    assert info.value.file == images


def test_a_catalog_file_that_is_a_symlink_loop(project: Path, loop: Path) -> None:
    (project / "images" / "zz.yaml").symlink_to(loop)
    with pytest.raises(CatalogError, match="symlink loop"):
        load_matrix(matrix(project, AXES), catalog_root=project)


def test_a_candidate_payload_that_is_a_symlink_loop(project: Path, loop: Path) -> None:
    path = matrix(project, AXES)
    path.write_text(path.read_text().replace("../payloads/candidate", str(loop)))
    error = load_error(path, project)
    assert "symlink loop" in error.message and error.line == 4


def test_a_product_payload_that_is_a_symlink_loop(project: Path) -> None:
    payloads = project / "payloads"
    (payloads / "av").symlink_to(payloads / "av")  # relative to the product file: ../../payloads
    with pytest.raises(CatalogError, match="symlink loop") as info:
        load_matrix(matrix(project, AXES), catalog_root=project)
    assert info.value.file == project / "configs" / "products" / "av.yaml"
    assert info.value.line in (3, 5)  # the linux or the windows payload


def test_a_product_payload_that_is_a_file(project: Path) -> None:
    (project / "payloads" / "av").write_text("not a folder")
    with pytest.raises(CatalogError, match="is a file, not a folder"):
        load_matrix(matrix(project, AXES), catalog_root=project)


@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_an_image_disk_that_is_a_symlink_loop(project: Path, loop: Path, absolute: bool) -> None:
    disk = str(loop) if absolute else os.path.relpath(loop, project / "images")
    image = project / "images" / "lin-a.yaml"
    image.write_text(image.read_text().replace("/nonexistent/lin-a.qcow2", disk))
    with pytest.raises(CatalogError, match="symlink loop") as info:
        parse_image(image)
    assert info.value.line == 4


def test_an_image_kernel_that_is_a_folder(project: Path) -> None:
    image = write(
        project / "images" / "k.yaml",
        f"name: k\nos_family: linux\nbuild: '1'\ndisk: d.qcow2\nfirmware: bios\n"
        f"channel: agent\nkernel: {project / 'payloads'}\n",
    )
    with pytest.raises(CatalogError, match="is a folder, not a file") as info:
        parse_image(image)
    assert info.value.line == 7


def test_resolve_reports_a_loop_instead_of_raising_runtime_error(loop: Path) -> None:
    with pytest.raises(InputError, match="symlink loop"):
        resolve(loop / "below")


# -- 1. YAML the library chokes on ----------------------------------------------------------------

YAML_CRASHES = {
    "a key that is a nested list": "? [[a], b]\n: 1\n",
    "a key that is a map holding a list": "? {a: [1]}\n: 1\n",
    "a flow key that is a list of maps": "{[{a: 1}]: 1}\n",
    "nesting 5000 deep (flow)": "deep: " + "[" * 5000 + "]" * 5000 + "\n",
    "nesting 1000 deep (block)": "deep:\n" + "".join(" " * i + "- \n" for i in range(1, 1000)),
    "nesting 2000 deep (maps)": "deep: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n",
    "an integer of 5000 digits": "scenario: {boots: " + "9" * 5000 + "}\n",
    "a hex integer of 5000 digits": "scenario: {boots: 0x" + "f" * 5000 + "}\n",
    "a date that does not exist": "scenario: {boots: 2001-02-30}\n",
    "!!int on a word": "scenario: {boots: !!int xyz}\n",
    "!!float on a word": "scenario: {bake: !!float xyz}\n",
    "!!bool on a word": "scenario: {rollback: !!bool xyz}\n",
    "!!omap with a repeated key": "scenario: !!omap [boots: 1, boots: 2]\n",
    "!!binary that is not base64": "scenario: !!binary xyz\n",
    "a duplicate key": "axes: {}\n",
    "an undefined alias": "scenario: *nowhere\n",
    "a NUL byte": "scenario: {boots: \x00}\n",
    "a raw escape character": "scenario: {boots: \x1b[31m}\n",
    "a second document": "---\nscenario: {}\n",
    "an unknown YAML version": "%YAML 9.9\n---\n",
}


@pytest.mark.parametrize("body", YAML_CRASHES.values(), ids=YAML_CRASHES.keys())
def test_yaml_the_library_chokes_on_is_a_matrix_error_with_a_line(project: Path, body: str) -> None:
    path = project / "matrix" / "m.yaml"
    path.write_text(CANDIDATE.lstrip("\n") + AXES + body, encoding="utf-8")
    error = load_error(path, project)
    assert error.line >= BODY_LINE, error
    assert str(error).startswith(f"{path}:{error.line}")


def test_yaml_errors_in_a_catalog_file_are_catalog_errors(project: Path) -> None:
    path = write(project / "configs" / "hardware" / "bad.yaml", "name: bad\n? [[x]]\n: 1\n")
    with pytest.raises(CatalogError) as info:
        parse_hardware(path)
    assert info.value.line == 2 and info.value.file == path


def test_reused_anchors_and_yaml_1_1_floats_are_yaml_not_errors(project: Path) -> None:
    # Both make ruamel warn; with warnings as errors they escaped as the warning itself.
    body = AXES + "scenario: {boots: &n 2, boot_loop: &n 3}\n"
    assert len(load_matrix(matrix(project, body), catalog_root=project).cells) == 12
    path = matrix(project, AXES + "scenario: {bake: 1e2}\n")
    path.write_text("%YAML 1.1\n---\n" + path.read_text())
    assert load_matrix(path, catalog_root=project).scenario.bake == 100.0


# -- 1. previous: and results.json of the wrong shape --------------------------------------------

PAIRWISE = AXES + "strategy: {kind: pairwise, previous: prev.json}\n"

WRONG_SHAPES = {
    "a list at the top": "[]",
    "cells is an object": '{"cells": {"a": 1}}',
    "a cell is a string": '{"cells": ["lin-a/bios-1cpu/none"]}',
    "products is a number": (
        '{"cells": [{"build": "lin-a", "hardware": "bios-1cpu", "products": 5}]}'
    ),
    "products holds a list": (
        '{"cells": [{"build": "lin-a", "hardware": "bios-1cpu", "products": [["av"]]}]}'
    ),
    "build is a list": '{"cells": [{"build": ["lin-a"], "hardware": "bios-1cpu", "products": []}]}',
    "nested 100000 deep": "[" * 100_000 + "]" * 100_000,
    "an integer of 5000 digits": '{"cells": ' + "9" * 5000 + "}",
    "not JSON": "{cells",
    "not UTF-8": '{"cells": "\xff"}',
}


@pytest.mark.parametrize("text", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_previous_results_of_the_wrong_shape(project: Path, text: str) -> None:
    (project / "matrix" / "prev.json").write_bytes(text.encode("latin-1"))
    error = matrix_error(project, PAIRWISE)
    assert "previous results" in error.message and error.line == BODY_LINE


def test_previous_results_that_are_a_fifo(project: Path) -> None:
    fifo = project / "matrix" / "prev.json"
    os.mkfifo(fifo)
    path = matrix(project, PAIRWISE)
    with pytest.raises(MatrixError, match="is a fifo"):
        bounded(lambda: load_matrix(path, catalog_root=project), unblock=fifo)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"schema": ' + "9" * 5000 + "}", "not JSON"),
        ('{"schema": 1, "run": 5, "cells": []}', "expected an object"),
    ],
    ids=["deep", "huge integer", "run is a number"],
)
def test_load_results_refuses_what_it_cannot_read(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_results(path)


def test_load_results_on_a_fifo_or_an_oversized_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo" / "results.json"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a fifo"):
        bounded(lambda: load_results(fifo.parent), unblock=fifo)
    big = tmp_path / "big.json"
    with big.open("w") as out:
        out.truncate(MAX_RESULTS_BYTES + 1)
    with pytest.raises(InputError, match="larger than"):
        load_results(big)


# -- 1. lab settings and the catalog alone -----------------------------------------------------


def test_lab_settings_with_a_list_key(tmp_path: Path) -> None:
    path = write(tmp_path / "lab.yaml", "hosts: [{uri: qemu:///system}]\n? [[x]]\n: 1\n")
    with pytest.raises(InputError, match="a key must be a plain value") as info:
        load_lab_settings(path)
    assert info.value.line == 2


def test_lab_settings_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "lab.yaml"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a fifo"):
        bounded(lambda: load_lab_settings(fifo), unblock=fifo)


def test_a_fifo_in_the_catalog_alone(project: Path) -> None:
    # The catalog loader on its own, as `compatlab images build` uses it.
    os.mkfifo(project / "configs" / "products" / "zz.yaml")
    with pytest.raises(CatalogError, match="is a fifo"):
        bounded(
            lambda: load_catalog(
                project / "images",
                project / "configs" / "hardware",
                project / "configs" / "products",
            )
        )
