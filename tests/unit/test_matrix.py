"""Matrix files: validation with positions, and the expansion rules."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from compatlab.errors import CatalogError, MatrixError
from compatlab.matrix import load_matrix
from tests.support.catalogs import make_project, matrix, write


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def load(project: Path, body: str) -> list[str]:
    return [c.id for c in load_matrix(matrix(project, body), catalog_root=project).cells]


def error(project: Path, body: str) -> MatrixError:
    with pytest.raises(MatrixError) as info:
        load_matrix(matrix(project, body), catalog_root=project)
    return info.value


AXES = """
axes:
  build: [lin-a, lin-b]
  hardware: [bios-1cpu, uefi-2cpu]
  products: [[], [av], [av, edr]]
"""


def test_full_is_the_cartesian_product_in_axis_order(project: Path) -> None:
    ids = load(project, AXES)
    expected = [
        f"{b}/{h}/{p}"
        for b, h, p in itertools.product(
            ["lin-a", "lin-b"], ["bios-1cpu", "uefi-2cpu"], ["none", "av", "av+edr"]
        )
    ]
    assert ids == expected


def test_cell_carries_catalog_objects_and_settings(project: Path) -> None:
    m = load_matrix(
        matrix(project, AXES + "scenario: {boots: 5, baseline: never}\n"), catalog_root=project
    )
    cell = m.cells[-1]
    assert cell.image.name == "lin-b" and cell.hardware.firmware == "uefi"
    assert [p.name for p in cell.products] == ["av", "edr"]
    assert cell.scenario.boots == 5 and cell.scenario.baseline == "never"
    assert cell.candidate.commands["linux"].exit_codes.meaning(3010) == "reboot"


def test_exclude_removes_every_match_of_all_its_keys(project: Path) -> None:
    ids = load(project, AXES + "exclude:\n  - {build: lin-a, products: [edr, av]}\n")
    assert "lin-a/bios-1cpu/av+edr" not in ids and "lin-a/uefi-2cpu/av+edr" not in ids
    assert "lin-b/bios-1cpu/av+edr" in ids
    assert len(ids) == 10


def test_include_adds_keys_to_matches_without_new_cells(project: Path) -> None:
    body = AXES + "include:\n  - {build: lin-b, hardware: uefi-2cpu, scenario: {boots: 7}}\n"
    m = load_matrix(matrix(project, body), catalog_root=project)
    assert len(m.cells) == 12
    boots = {c.id: c.scenario.boots for c in m.cells}
    assert boots["lin-b/uefi-2cpu/none"] == 7 and boots["lin-b/uefi-2cpu/av+edr"] == 7
    assert boots["lin-a/uefi-2cpu/none"] == 3


def test_include_that_matches_nothing_adds_a_cell(project: Path) -> None:
    body = AXES + "include:\n  - {build: lin-a, hardware: bios-1cpu, products: [dlp]}\n"
    ids = load(project, body)
    assert ids[-1] == "lin-a/bios-1cpu/dlp" and len(ids) == 13


def test_include_can_bring_back_an_excluded_cell(project: Path) -> None:
    body = (
        AXES
        + "exclude:\n  - {build: lin-a}\n"
        + "include:\n  - {build: lin-a, hardware: bios-1cpu, products: []}\n"
    )
    ids = load(project, body)
    assert [i for i in ids if i.startswith("lin-a")] == ["lin-a/bios-1cpu/none"]


def test_new_include_cell_must_name_every_axis(project: Path) -> None:
    err = error(project, AXES + "include:\n  - {build: lin-a, products: [dlp]}\n")
    assert "does not name hardware" in err.message and err.line == 14


def test_constraint_then_not_and_membership(project: Path) -> None:
    body = AXES + "constraints:\n  - {if: {products: [edr]}, then_not: {hardware: bios-1cpu}}\n"
    ids = load(project, body)
    assert not any(i.endswith("bios-1cpu/av+edr") for i in ids)
    assert "lin-a/uefi-2cpu/av+edr" in ids and len(ids) == 10


def test_constraint_then_must_hold(project: Path) -> None:
    body = AXES + "constraints:\n  - {if: {build: lin-b}, then: {products: [av]}}\n"
    ids = load(project, body)
    assert not any(i.startswith("lin-b/") and i.endswith("/none") for i in ids)


def test_include_breaking_a_constraint_is_an_error(project: Path) -> None:
    body = (
        AXES
        + "constraints:\n  - {if: {products: [edr]}, then_not: {hardware: bios-1cpu}}\n"
        + "include:\n  - {build: lin-a, hardware: bios-1cpu, products: [edr]}\n"
    )
    err = error(project, body)
    assert "breaks the constraint at line 14" in err.message and err.line == 16


def test_product_slots_union_into_the_cell_set(project: Path) -> None:
    body = """
axes:
  build: [lin-a]
  hardware: [bios-1cpu]
  products: {anti: [av, none], detect: [edr, dlp, none]}
"""
    ids = load(project, body)
    assert ids == [
        "lin-a/bios-1cpu/av+edr",
        "lin-a/bios-1cpu/av+dlp",
        "lin-a/bios-1cpu/av",
        "lin-a/bios-1cpu/edr",
        "lin-a/bios-1cpu/dlp",
        "lin-a/bios-1cpu/none",
    ]


def test_exclude_by_slot(project: Path) -> None:
    body = """
axes:
  build: [lin-a]
  hardware: [bios-1cpu]
  products: {anti: [av, none], detect: [edr, none]}
exclude:
  - {products: {anti: none, detect: none}}
"""
    assert "lin-a/bios-1cpu/none" not in load(project, body)


@pytest.mark.parametrize(
    ("body", "line", "column", "needle", "hint"),
    [
        (AXES.replace("lin-b]", "lin-bb]"), 10, 18, "unknown build 'lin-bb'", "lin-b"),
        (AXES.replace("uefi-2cpu", "uefi-2cpux"), 11, 25, "unknown hardware profile", "uefi-2cpu"),
        (AXES.replace("[av, edr]", "[av, edrr]"), 12, 29, "unknown product 'edrr'", "edr"),
        (AXES + "scenari: {boots: 2}\n", 13, 1, "unknown key 'scenari'", "scenario"),
        (AXES + "scenario: {boots: two}\n", 13, 19, "boots must be a whole number", None),
        (AXES + "scenario: {boots: 0}\n", 13, 19, "boots must be at least 1", None),
        (AXES + "scenario: {baseline: sometimes}\n", 13, 22, "baseline must be one of", None),
        (
            AXES + "strategy: {kind: pairwise, strength: 4}\n",
            13,
            38,
            "strength must be 2 or 3",
            None,
        ),
        (AXES + "strategy: {kind: full, seed: 3}\n", 13, 30, "only applies to strategy", None),
        (AXES.replace("[[], [av], [av, edr]]", "[[], [av], [av]]"), 12, 24, "listed twice", None),
        (AXES.replace("build: [lin-a, lin-b]", "build: lin-a"), 10, 10, "must be a list", None),
        (AXES + "constraints:\n  - {if: {build: lin-a}}\n", 14, 5, "needs 'then'", None),
    ],
)
def test_errors_name_file_line_and_column(
    project: Path, body: str, line: int, column: int, needle: str, hint: str | None
) -> None:
    err = error(project, body)
    assert needle in err.message
    assert (err.line, err.column) == (line, column), str(err)
    assert err.file.name == "m.yaml"
    if hint:
        assert err.hint is not None and hint in err.hint
    assert str(err).startswith(f"{err.file}:{line}:{column}: ")


def test_constraints_that_leave_nothing_are_an_error(project: Path) -> None:
    body = AXES + "constraints:\n  - {then_not: {build: [lin-a, lin-b]}}\n"
    err = error(project, body)
    assert "leave no cell" in err.message and err.line == 14


def test_product_without_payload_for_the_os_family(project: Path) -> None:
    body = AXES.replace("[av, edr]", "[av, winav]")
    err = error(project, body)
    assert "product 'winav' has no linux payload" in err.message
    assert err.line == 12


def test_firmware_mismatch_names_the_cell(project: Path) -> None:
    body = """
axes:
  build: [win11]
  hardware: [bios-1cpu]
  products: [[]]
"""
    err = error(project, body)
    assert "win11/bios-1cpu/none" in err.message and "uefi" in err.message
    assert err.hint is not None and "exclude" in err.hint


# Profiles the catalog accepts but this lab's libvirt 9.0 / QEMU 7.2 cannot run
# (compatlab.catalog.check_supported).
UNSUPPORTED = {
    "sb-on-pc": (
        "name: sb-on-pc\nvcpus: 1\nmemory: 256MiB\nfirmware: uefi\nsecure_boot: true\n"
        "machine: pc\n",
        "Secure Boot needs machine q35, not pc",
    ),
    "itco": (
        "name: itco\nvcpus: 1\nmemory: 256MiB\nfirmware: bios\nwatchdog: {model: itco}\n",
        "libvirt 9.0 does not know watchdog model 'itco'",
    ),
}


@pytest.mark.parametrize("profile", sorted(UNSUPPORTED))
def test_a_profile_this_lab_cannot_run_is_refused_when_the_matrix_loads(
    project: Path, profile: str
) -> None:
    text, refusal = UNSUPPORTED[profile]
    write(project / "configs" / "hardware" / f"{profile}.yaml", text)
    path = matrix(project, AXES.replace("uefi-2cpu]", f"{profile}]"))
    with pytest.raises(MatrixError) as info:
        load_matrix(path, catalog_root=project)
    err = info.value
    # The matrix file and the axis value that brings the profile in, then why and which file.
    assert (err.file, err.line, err.column) == (path, 11, 25)
    assert str(err).startswith(f"{path}:11:25: cell lin-a/{profile}/none cannot run on this lab")
    assert refusal in err.message
    assert str(project / "configs" / "hardware" / f"{profile}.yaml") in err.message
    assert err.hint


def test_an_unrunnable_profile_blames_the_include_that_adds_it(project: Path) -> None:
    text, refusal = UNSUPPORTED["sb-on-pc"]
    write(project / "configs" / "hardware" / "sb-on-pc.yaml", text)
    body = AXES + "include:\n  - {build: lin-b, hardware: sb-on-pc, products: [av]}\n"
    err = error(project, body)
    assert err.line == 14 and "lin-b/sb-on-pc/av" in err.message and refusal in err.message


def test_an_unrunnable_profile_no_cell_uses_is_not_an_error(project: Path) -> None:
    text, _ = UNSUPPORTED["itco"]
    write(project / "configs" / "hardware" / "itco.yaml", text)
    body = AXES.replace("uefi-2cpu]", "uefi-2cpu, itco]") + "exclude:\n  - {hardware: itco}\n"
    assert len(load(project, body)) == 12


def test_candidate_without_a_command_for_the_os_family(project: Path) -> None:
    path = write(
        project / "matrix" / "c.yaml",
        """
        candidate:
          name: s
          version: "1"
          payload: ../payloads/candidate
          install: {windows: "i.cmd"}
          uninstall: {windows: "u.cmd"}
        axes: {build: [lin-a], hardware: [bios-1cpu], products: [[]]}
    """,
    )
    with pytest.raises(MatrixError, match="no linux install command") as info:
        load_matrix(path, catalog_root=project)
    assert info.value.line == 5


def test_missing_candidate_payload(project: Path) -> None:
    path = matrix(project, AXES)
    path.write_text(path.read_text().replace("../payloads/candidate", "../nowhere"))
    with pytest.raises(MatrixError, match=r"payload folder .* does not exist"):
        load_matrix(path, catalog_root=project)


def test_yaml_syntax_error_has_a_position(project: Path) -> None:
    path = write(project / "matrix" / "s.yaml", "candidate: [\n  name: x\n")
    with pytest.raises(MatrixError, match="invalid YAML") as info:
        load_matrix(path, catalog_root=project)
    assert info.value.line >= 2


def test_duplicate_key_is_an_error(project: Path) -> None:
    with pytest.raises(MatrixError, match="invalid YAML") as info:
        load_matrix(matrix(project, AXES + "axes: {}\n"), catalog_root=project)
    assert info.value.line == 13


def test_catalog_errors_point_into_the_catalog_file(project: Path) -> None:
    write(
        project / "configs" / "hardware" / "bad.yaml",
        "name: bad\nvcpus: 0\nmemory: 1\nfirmware: bios\n",
    )
    with pytest.raises(CatalogError) as info:
        load_matrix(matrix(project, AXES), catalog_root=project)
    assert info.value.file.name == "bad.yaml" and info.value.line == 2


def test_inline_password_is_refused(project: Path) -> None:
    write(
        project / "images" / "w.yaml",
        """
        name: w
        os_family: windows
        build: "1"
        disk: /x.qcow2
        firmware: [uefi]
        channel: winrm
        credentials: {username: a, password: hunter2}
    """,
    )
    with pytest.raises(CatalogError, match="unknown key 'password'"):
        load_matrix(matrix(project, AXES), catalog_root=project)


def test_pairwise_seeded_by_previous_results_keeps_old_cells(project: Path) -> None:
    body = """
axes:
  build: [lin-a, lin-b]
  hardware: [bios-1cpu, uefi-2cpu]
  products: [[], [av], [edr], [dlp]]
strategy: {kind: pairwise, strength: 2, seed: 4}
"""
    first = load_matrix(matrix(project, body), catalog_root=project)
    results = {
        "schema": 1,
        "cells": [
            {"build": c.build, "hardware": c.hardware.name, "products": list(c.product_names)}
            for c in first.cells
        ],
    }
    (project / "matrix" / "prev.json").write_text(json.dumps(results))
    grown = body.replace("[dlp]]", "[dlp], [av, edr]]").replace(
        "seed: 4}", "seed: 4, previous: prev.json}"
    )
    second = load_matrix(matrix(project, grown), catalog_root=project)
    old = [c.id for c in first.cells]
    assert [c.id for c in second.cells][: len(old)] == old
    assert any(c.product_names == ("av", "edr") for c in second.cells)
