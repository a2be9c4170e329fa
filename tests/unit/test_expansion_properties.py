"""Properties of matrix expansion, on random axes, excludes and includes (hypothesis)."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from compatlab.errors import MatrixError
from compatlab.matrix import load_matrix
from tests.support.catalogs import make_project, matrix

BUILDS = ["lin-a", "lin-b", "lin-c"]
HARDWARE = ["bios-1cpu", "bios-2cpu", "uefi-2cpu"]
PRODUCTS = ["av", "edr", "dlp"]
SETS = [(), ("av",), ("edr",), ("av", "edr"), ("dlp",)]

_project = Path(tempfile.mkdtemp(prefix="compatlab-props-"))
make_project(_project, builds=BUILDS, hardware=HARDWARE, products=PRODUCTS)


def _yaml_list(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


@st.composite
def matrices(draw: st.DrawFn) -> dict[str, object]:
    builds = draw(st.lists(st.sampled_from(BUILDS), min_size=1, max_size=3, unique=True))
    hardware = draw(st.lists(st.sampled_from(HARDWARE), min_size=1, max_size=3, unique=True))
    sets = draw(st.lists(st.sampled_from(SETS), min_size=1, max_size=5, unique=True))
    excludes = draw(
        st.lists(
            st.fixed_dictionaries(
                {},
                optional={"build": st.sampled_from(builds), "hardware": st.sampled_from(hardware)},
            ).filter(bool),
            max_size=2,
        )
    )
    includes = draw(
        st.lists(
            st.tuples(st.sampled_from(BUILDS), st.sampled_from(HARDWARE), st.sampled_from(SETS)),
            max_size=2,
        )
    )
    return {
        "builds": builds,
        "hardware": hardware,
        "sets": sets,
        "excludes": excludes,
        "includes": includes,
    }


def _body(m: dict[str, object], strategy: str = "") -> str:
    sets = ", ".join(_yaml_list(list(s)) for s in m["sets"])  # type: ignore[attr-defined]
    text = (
        "axes:\n"
        f"  build: {_yaml_list(m['builds'])}\n"  # type: ignore[arg-type]
        f"  hardware: {_yaml_list(m['hardware'])}\n"  # type: ignore[arg-type]
        f"  products: [{sets}]\n"
    )
    if m["excludes"]:
        text += "exclude:\n" + "".join(
            "  - {" + ", ".join(f"{k}: {v}" for k, v in e.items()) + "}\n"
            for e in m["excludes"]  # type: ignore[attr-defined]
        )
    if m["includes"]:
        text += "include:\n" + "".join(
            f"  - {{build: {b}, hardware: {h}, products: {_yaml_list(list(p))}}}\n"
            for b, h, p in m["includes"]  # type: ignore[attr-defined]
        )
    return text + strategy


def _excluded(m: dict[str, object], build: str, hardware: str) -> bool:
    return any(
        all({"build": build, "hardware": hardware}[k] == v for k, v in e.items())
        for e in m["excludes"]  # type: ignore[attr-defined]
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matrices())
def test_full_is_product_minus_excludes_plus_includes(m: dict[str, object]) -> None:
    expected = [
        (b, h, p)
        for b, h, p in itertools.product(m["builds"], m["hardware"], m["sets"])  # type: ignore[call-overload]
        if not _excluded(m, b, h)
    ]
    for b, h, p in m["includes"]:  # type: ignore[attr-defined]
        if not any(e[:2] == (b, h) and set(e[2]) == set(p) for e in expected):
            expected.append((b, h, p))
    if not expected:
        with pytest.raises(MatrixError, match="leave no cell"):
            load_matrix(matrix(_project, _body(m)), catalog_root=_project)
        return
    cells = load_matrix(matrix(_project, _body(m)), catalog_root=_project).cells
    got = [(c.build, c.hardware.name, c.product_names) for c in cells]
    assert got == expected
    assert len({c.id for c in cells}) == len(cells)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matrices(), st.integers(0, 3), st.sampled_from([2, 3]))
def test_pairwise_covers_every_allowed_tuple_and_is_deterministic(
    m: dict[str, object], seed: int, strength: int
) -> None:
    m = {**m, "includes": []}
    assume(not all(_excluded(m, b, h) for b in m["builds"] for h in m["hardware"]))  # type: ignore[attr-defined]
    full = load_matrix(matrix(_project, _body(m)), catalog_root=_project).cells
    strategy = f"strategy: {{kind: pairwise, strength: {strength}, seed: {seed}}}\n"
    path = matrix(_project, _body(m, strategy), name="p.yaml")
    cells = load_matrix(path, catalog_root=_project).cells
    again = load_matrix(path, catalog_root=_project).cells
    assert [c.id for c in cells] == [c.id for c in again]

    def values(cell: object) -> tuple[str, str, frozenset[str]]:
        return (cell.build, cell.hardware.name, frozenset(cell.product_names))  # type: ignore[attr-defined]

    allowed = {values(c) for c in full}
    assert {values(c) for c in cells} <= allowed
    t = min(strength, 3)
    for axes in itertools.combinations(range(3), t):
        wanted = {tuple(v[i] for i in axes) for v in allowed}
        covered = {tuple(values(c)[i] for i in axes) for c in cells}
        assert wanted == covered
