"""Blast radius weights: the ``fleet:`` block of a matrix and each cell's share of the fleet."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from compatlab._yaml import load as load_yaml
from compatlab.errors import MatrixError
from compatlab.fleet import (
    Fleet,
    FleetTotal,
    configuration,
    describe_share,
    normalise,
    share_of,
)
from compatlab.matrix import load_matrix
from compatlab.matrix.fleet import read_fleet
from tests.support.catalogs import make_project, matrix, write

ROOT = Path(__file__).resolve().parents[2]

AXES = """
axes:
  build: [lin-a, lin-b]
  hardware: [bios-1cpu, uefi-2cpu]
  products: [[], [av], [av, edr]]
"""

FLEET = """
fleet:
  build: {lin-a: 30, lin-b: 50, lin-old: 20}
  hardware: {bios-1cpu: 1, uefi-2cpu: 3}
  products: {none: 10, av: 60, "edr+av": 30}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def error(project: Path, body: str) -> tuple[MatrixError, Path]:
    path = matrix(project, body)
    with pytest.raises(MatrixError) as info:
        load_matrix(path, catalog_root=project)
    return info.value, path


def line_of(path: Path, needle: str) -> int:
    """1-based number of the first line of ``path`` holding ``needle``."""
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in {path}")


# -- the model ------------------------------------------------------------------------------------


def test_normalise_divides_by_the_sum() -> None:
    assert normalise({"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}
    with pytest.raises(ValueError, match="add up to 0"):
        normalise({"a": 0, "b": 0})
    with pytest.raises(ValueError, match=">= 0"):
        normalise({"a": -1, "b": 3})
    with pytest.raises(ValueError):
        normalise({"a": math.nan})


def test_share_is_the_product_of_the_axis_shares() -> None:
    fleet = Fleet.from_weights(
        {"x": 1, "y": 1}, {"h": 2, "k": 8}, {frozenset(): 1, frozenset({"p", "q"}): 3}
    )
    assert fleet.share("x", "k", ["q", "p"]) == pytest.approx(0.5 * 0.8 * 0.75)
    assert fleet.missing("z", "k", ["p"]) == [("build", "z"), ("products", "p")]
    with pytest.raises(KeyError):
        fleet.share("z", "k", [])


def test_share_of_sums_known_shares_and_counts_a_configuration_once() -> None:
    a = configuration("b", "h", ["p", "q"])
    same_as_a = configuration("b", "h", ["q", "p"])
    total = share_of([(a, 0.2), (same_as_a, 0.2), (configuration("b", "h", []), 0.05)])
    assert total == FleetTotal(pytest.approx(0.25), 2, 0)
    partial = share_of([(a, 0.2), (configuration("c", "h", []), None)])
    assert partial.share == pytest.approx(0.2) and partial.unknown == 1
    assert "not counting 1 cell without fleet weights" in partial.describe()
    assert not share_of([(a, None)]).known
    assert share_of([(a, None)]).describe().startswith("share of the fleet not known")


@pytest.mark.parametrize(
    ("share", "words"),
    [
        (0.2199, "about 22% of the fleet"),
        (0.0, "none of the fleet"),
        (0.004, "about 0.4% of the fleet"),
        (0.00001, "less than 0.1% of the fleet"),
        (1.0, "all of the fleet"),
        (0.9996, "about 99.9% of the fleet"),
    ],
)
def test_describe_share_never_rounds_to_none_or_all(share: float, words: str) -> None:
    assert describe_share(share) == words


# -- the matrix block -----------------------------------------------------------------------------


def test_cells_get_their_configurations_share_of_the_whole_fleet(project: Path) -> None:
    m = load_matrix(matrix(project, AXES + FLEET), catalog_root=project)
    shares = {c.id: c.fleet_share for c in m.cells}
    # lin-old is not tested but weighs 20 of 100: the cells stand for 80% of the fleet.
    assert shares["lin-a/bios-1cpu/none"] == pytest.approx(0.3 * 0.25 * 0.1)
    assert shares["lin-b/uefi-2cpu/av+edr"] == pytest.approx(0.5 * 0.75 * 0.3)
    assert sum(s for s in shares.values() if s is not None) == pytest.approx(0.8)
    assert m.fleet is not None and m.fleet.build["lin-old"] == pytest.approx(0.2)


def test_without_a_fleet_block_no_cell_has_a_share(project: Path) -> None:
    m = load_matrix(matrix(project, AXES), catalog_root=project)
    assert m.fleet is None and all(c.fleet_share is None for c in m.cells)


def test_product_slots_are_weighed_by_the_whole_set(project: Path) -> None:
    body = """
axes:
  build: [lin-a]
  hardware: [uefi-2cpu]
  products: {av: [av, none], edr: [edr, none]}
fleet:
  build: {lin-a: 1}
  hardware: {uefi-2cpu: 1}
  products: {av+edr: 4, av: 3, edr: 2, none: 1}
"""
    m = load_matrix(matrix(project, body), catalog_root=project)
    assert {c.id: c.fleet_share for c in m.cells} == {
        "lin-a/uefi-2cpu/av+edr": pytest.approx(0.4),
        "lin-a/uefi-2cpu/av": pytest.approx(0.3),
        "lin-a/uefi-2cpu/edr": pytest.approx(0.2),
        "lin-a/uefi-2cpu/none": pytest.approx(0.1),
    }


def test_fleet_file_is_read_relative_to_the_matrix(project: Path) -> None:
    write(project / "configs" / "fleet.yaml", FLEET.replace("fleet:\n", "").replace("\n  ", "\n"))
    m = load_matrix(matrix(project, AXES + "fleet: ../configs/fleet.yaml\n"), catalog_root=project)
    assert m.cell("lin-a/bios-1cpu/none").fleet_share == pytest.approx(0.3 * 0.25 * 0.1)


def test_an_unweighed_value_is_an_error_at_its_axis(project: Path) -> None:
    body = AXES + FLEET.replace("lin-b: 50, ", "")
    err, path = error(project, body)
    assert "fleet build has no weight for 'lin-b'" in err.message
    assert "(cell lin-b/bios-1cpu/none)" in err.message
    assert err.file == path and err.line == line_of(path, "  build: {lin-a: 30")
    assert err.hint == "weigh every value the matrix tests; 0 if no endpoint runs it"
    # A weighed value no cell has, close to the missing one, is likely its typo.
    err, _ = error(project, AXES + FLEET.replace("lin-b: 50", "lin-bb: 50"))
    assert "fleet build has no weight for 'lin-b'" in err.message
    assert (err.hint or "").endswith("did you mean 'lin-bb'?")


def test_an_unweighed_product_set_is_named_as_a_cell_id_writes_it(project: Path) -> None:
    err, path = error(project, AXES + FLEET.replace(', "edr+av": 30', ""))
    assert "fleet products has no weight for 'av+edr'" in err.message
    assert err.line == line_of(path, "  products: {none")


def test_an_error_in_a_fleet_file_names_that_file(project: Path) -> None:
    fleet = write(
        project / "configs" / "fleet.yaml",
        """
        build: {lin-a: 1, lin-b: 1}
        hardware: {bios-1cpu: 1, uefi-2cpu: many}
        products: {none: 1, av: 1, av+edr: 1}
        """,
    )
    err, _ = error(project, AXES + "fleet: ../configs/fleet.yaml\n")
    assert err.file == fleet.resolve()
    assert (err.line, err.column) == (2, 37)
    assert "weight of 'uefi-2cpu' must be a number, not a string" in err.message


@pytest.mark.parametrize(
    ("fleet", "needle", "message"),
    [
        (FLEET.replace("lin-a: 30", "lin-a: -3"), "lin-a: -3", "must be at least 0"),
        (FLEET.replace("  build:", "  builds:"), "builds:", "unknown key 'builds' in fleet"),
        (FLEET.replace("  hardware: {bios-1cpu: 1, uefi-2cpu: 3}\n", ""), "{lin-a", "'hardware'"),
        (FLEET.replace("1, uefi-2cpu: 3", "0, uefi-2cpu: 0"), "{bios-1cpu: 0", "add up to 0"),
        (FLEET.replace("none: 10", "none: 10, av+edr: 1"), "none: 10", "weighed twice"),
        (FLEET.replace("none: 10", "none: 10, av++edr: 1"), "none: 10", "empty name"),
        (FLEET.replace("none: 10", "none: 10, av+av: 1"), "none: 10", "a product twice"),
        (FLEET.replace("lin-a: 30", "lin-a: .inf"), "lin-a: .inf", "finite"),
        ("fleet: ../configs/nothing.yaml\n", "fleet:", "does not exist"),
        ("fleet: [1, 2]\n", "fleet:", "must be a non-empty string"),
        (FLEET.replace('{none: 10, av: 60, "edr+av": 30}', "{}"), "products: {}", "at least one"),
    ],
)
def test_bad_fleet_blocks_are_errors_with_a_position(
    project: Path, fleet: str, needle: str, message: str
) -> None:
    err, path = error(project, AXES + fleet)
    assert message in str(err)
    assert err.file == path and err.line == line_of(path, needle) and err.column > 0


def test_a_fleet_file_that_is_not_a_mapping_is_an_error(project: Path) -> None:
    write(project / "configs" / "fleet.yaml", "- build\n")
    err, _ = error(project, AXES + "fleet: ../configs/fleet.yaml\n")
    assert "a fleet file must be a mapping" in err.message
    assert err.file.name == "fleet.yaml"


# -- the project's own matrices -------------------------------------------------------------------


def _fleet_of(matrix_file: Path) -> tuple[Fleet, dict[str, list[object]]]:
    top = load_yaml(matrix_file, MatrixError).mapping("matrix", optional=None)
    axes = {k: v.value for k, v in top["axes"].mapping("axes", optional=None).items()}
    return read_fleet(top["fleet"], matrix_file.parent).fleet, axes


def test_the_demo_fleet_makes_the_other_edr_cells_about_22_percent() -> None:
    fleet, axes = _fleet_of(ROOT / "matrix" / "demo.yaml")
    failing = [
        (configuration(b, h, ["acme-av", "other-edr"]), fleet.share(b, h, ["acme-av", "other-edr"]))
        for b in axes["build"]
        for h in axes["hardware"]
    ]
    assert describe_share(share_of(failing).share) == "about 22% of the fleet"


def test_the_nightly_fleet_weighs_every_value_the_nightly_matrix_tests() -> None:
    fleet, axes = _fleet_of(ROOT / "matrix" / "nightly.yaml")
    slots = axes["products"]
    assert isinstance(slots, dict)
    choices = [[c for c in values if c != "none"] for values in slots.values()]
    sets = [[a, e] for a in [*choices[0], None] for e in [*choices[1], None]]
    for build in axes["build"]:
        for hardware in axes["hardware"]:
            for chosen in sets:
                names = [n for n in chosen if n]
                assert not fleet.missing(str(build), str(hardware), names), (build, hardware, names)
