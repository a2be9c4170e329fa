"""Covering-array generator: coverage, validity, determinism and seeding properties.

Correctness is checked against brute force (every valid full row of a small model), so
the properties hold for constrained models too, including implicitly impossible tuples.
Sizes are never asserted against the clock; benchmarks/expand.py measures speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations, product

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compatlab.matrix.pairwise import covering_array

Allowed = Callable[[Mapping[int, int]], bool]
Forbidden = list[tuple[tuple[int, int], tuple[int, int]]]

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def forbid(pairs: Forbidden) -> Allowed:
    """PICT-like 'if a=x then b<>y' rules as a monotone predicate on partial rows."""

    def allowed(partial: Mapping[int, int]) -> bool:
        return not any(partial.get(a) == x and partial.get(b) == y for (a, x), (b, y) in pairs)

    return allowed


def valid_rows(sizes: Sequence[int], allowed: Allowed | None) -> list[tuple[int, ...]]:
    rows = product(*(range(s) for s in sizes))
    return [r for r in rows if allowed is None or allowed(dict(enumerate(r)))]


def tuples_of(rows: Sequence[Sequence[int]], t: int) -> set[tuple[tuple[int, int], ...]]:
    return {
        tuple((a, row[a]) for a in axes)
        for row in rows
        for axes in combinations(range(len(row)), t)
    }


def assert_covering(
    rows: list[tuple[int, ...]], sizes: Sequence[int], t: int, allowed: Allowed | None
) -> None:
    assert isinstance(rows, list)
    assert all(type(r) is tuple and all(type(v) is int for v in r) for r in rows)
    assert all(
        len(r) == len(sizes) and all(0 <= v < s for v, s in zip(r, sizes, strict=True))
        for r in rows
    )
    valid = valid_rows(sizes, allowed)
    assert set(rows) <= set(valid), "an output row violates the constraints"
    t = min(t, len(sizes))
    missing = tuples_of(valid, t) - tuples_of(rows, t)
    assert not missing, f"uncovered {t}-tuples: {sorted(missing)[:5]}"


sizes_st = st.lists(st.integers(1, 4), min_size=2, max_size=5)


@st.composite
def models(draw: st.DrawFn, constrained: bool) -> tuple[list[int], int, Forbidden]:
    sizes = draw(sizes_st)
    strength = draw(st.sampled_from([2, 3]))
    if strength == 3:  # keep 3-wise models small enough for quick brute force
        sizes = sizes[:4]
    pairs: Forbidden = []
    if constrained:
        cell = st.tuples(st.integers(0, len(sizes) - 1), st.integers(0, 3))
        for (a, x), (b, y) in draw(st.lists(st.tuples(cell, cell), max_size=6)):
            if a != b and x < sizes[a] and y < sizes[b]:
                pairs.append(((a, x), (b, y)))
    return sizes, strength, pairs


@PROPS
@given(models(constrained=False), st.integers(0, 3))
def test_unconstrained_arrays_cover_every_tuple(
    model: tuple[list[int], int, Forbidden], seed: int
) -> None:
    sizes, strength, _ = model
    rows = covering_array(sizes, strength, seed=seed)
    assert_covering(rows, sizes, strength, None)


@PROPS
@given(models(constrained=True), st.integers(0, 3))
def test_constrained_arrays_cover_every_possible_tuple_with_valid_rows(
    model: tuple[list[int], int, Forbidden], seed: int
) -> None:
    sizes, strength, pairs = model
    allowed = forbid(pairs)
    rows = covering_array(sizes, strength, seed=seed, allowed=allowed)
    assert_covering(rows, sizes, strength, allowed)
    assert rows or not valid_rows(sizes, allowed)


@PROPS
@given(models(constrained=True), st.integers(0, 2**32))
def test_same_seed_same_output(model: tuple[list[int], int, Forbidden], seed: int) -> None:
    sizes, strength, pairs = model
    first = covering_array(sizes, strength, seed=seed, allowed=forbid(pairs))
    assert covering_array(sizes, strength, seed=seed, allowed=forbid(pairs)) == first


@PROPS
@given(models(constrained=True), st.data())
def test_must_include_rows_come_first_unchanged(
    model: tuple[list[int], int, Forbidden], data: st.DataObject
) -> None:
    sizes, strength, pairs = model
    allowed = forbid(pairs)
    valid = valid_rows(sizes, allowed)
    picks = data.draw(st.lists(st.sampled_from(valid), max_size=4)) if valid else []
    seeds = [
        [data.draw(st.sampled_from([v, None])) for v in row]  # free some slots
        for row in picks
    ]
    rows = covering_array(sizes, strength, allowed=allowed, must_include=seeds)
    assert_covering(rows, sizes, strength, allowed)
    assert len(rows) >= len(seeds)
    for seed_row, row in zip(seeds, rows[: len(seeds)], strict=True):
        assert all(v is None or v == got for v, got in zip(seed_row, row, strict=True))


# A model with rules in the style of a PICT file, used by several tests below.
VM_SIZES = [4, 2, 3, 3, 3]  # os, arch, firmware, tpm, disk
VM_RULES: Forbidden = [
    ((0, 1), (2, 0)),  # win11 -> no BIOS
    ((0, 1), (3, 0)),  # win11 -> needs a TPM
    ((1, 1), (2, 0)),  # arm64 -> no BIOS
    ((4, 0), (2, 1)),  # IDE disk -> BIOS only ...
    ((4, 0), (2, 2)),  # ... so (arm64, IDE) and (win11, IDE) are implicitly impossible
]


def test_implicitly_impossible_tuples_are_skipped_not_looped_on() -> None:
    allowed = forbid(VM_RULES)
    rows = covering_array(VM_SIZES, 2, allowed=allowed)
    assert_covering(rows, VM_SIZES, 2, allowed)
    pairs = tuples_of(rows, 2)
    assert ((1, 1), (4, 0)) not in pairs and ((0, 1), (4, 0)) not in pairs
    assert_covering(covering_array(VM_SIZES, 3, allowed=allowed), VM_SIZES, 3, allowed)


def test_output_is_identical_in_a_process_with_other_hash_seed() -> None:
    seeds = [[2, None, 1, None, 2]]
    here = covering_array(VM_SIZES, 2, seed=7, allowed=forbid(VM_RULES), must_include=seeds)
    script = (
        "import json, sys\n"
        "from compatlab.matrix.pairwise import covering_array\n"
        "sizes, rules, seeds = json.loads(sys.argv[1])\n"
        "def allowed(p):\n"
        "    return not any(p.get(a) == x and p.get(b) == y for (a, x), (b, y) in rules)\n"
        "print(json.dumps(covering_array(sizes, 2, seed=7, allowed=allowed, must_include=seeds)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps([VM_SIZES, VM_RULES, seeds])],
        env={**os.environ, "PYTHONHASHSEED": "4242"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert [tuple(r) for r in json.loads(out.stdout)] == here


@pytest.mark.parametrize(("sizes", "grow"), [([3, 3, 3, 3], 2), ([2, 3, 4, 2, 3], 0), ([2] * 8, 7)])
@pytest.mark.parametrize("strength", [2, 3])
def test_previous_rows_stay_a_prefix_when_an_axis_grows(
    sizes: list[int], grow: int, strength: int
) -> None:
    before = covering_array(sizes, strength)
    bigger = [s + (a == grow) for a, s in enumerate(sizes)]
    after = covering_array(bigger, strength, must_include=before)
    assert after[: len(before)] == before
    assert_covering(after, bigger, strength, None)


def test_same_seed_different_seed() -> None:
    sizes = [3, 4, 2, 3, 2]
    assert covering_array(sizes, seed=1) == covering_array(sizes, seed=1)
    assert_covering(covering_array(sizes, seed=2), sizes, 2, None)


def test_reaches_the_optimum_on_small_classic_models() -> None:
    assert len(covering_array([3, 3, 3, 3])) == 9  # an orthogonal array
    assert len(covering_array([2] * 10)) == 6
    # 3^4 without (axis0=0, axis1=1): 9 rows would need two orthogonal-ish Latin squares.
    assert len(covering_array([3, 3, 3, 3], allowed=forbid([((0, 0), (1, 1))]))) == 10


def test_single_axis_is_its_values() -> None:
    assert covering_array([3]) == [(0,), (1,), (2,)]
    assert covering_array([3], allowed=lambda p: p.get(0) != 1) == [(0,), (2,)]


def test_axes_of_size_one() -> None:
    assert covering_array([1, 1, 1]) == [(0, 0, 0)]
    assert_covering(covering_array([1, 3, 1, 2]), [1, 3, 1, 2], 2, None)


def test_strength_above_axis_count_gives_the_full_product() -> None:
    assert sorted(covering_array([2, 3], strength=3)) == list(product(range(2), range(3)))
    rows = covering_array([2, 2], strength=3, must_include=[[1, None]])
    assert rows[0][0] == 1 and sorted(rows) == list(product(range(2), range(2)))
    assert covering_array([], strength=2) == [()]


def test_constraints_that_allow_nothing_give_no_rows() -> None:
    assert covering_array([3, 3, 3], allowed=lambda p: False) == []
    assert covering_array([2, 2, 2], allowed=lambda p: len(p) < 3) == []  # no full row
    assert covering_array([3], strength=3, allowed=lambda p: False) == []


def test_invalid_must_include_row_names_its_index() -> None:
    allowed = forbid([((0, 0), (1, 1))])
    with pytest.raises(ValueError, match="row 1"):
        covering_array([3, 3, 3], allowed=allowed, must_include=[[1, 1, 1], [0, 1, None]])
    no_completion = forbid([((0, 0), (2, 0)), ((1, 0), (2, 1))])
    with pytest.raises(ValueError, match="row 0"):  # fine locally, but no completion exists
        covering_array([2, 2, 2], allowed=no_completion, must_include=[[0, 0, None]])
    with pytest.raises(ValueError, match="row 0"):
        covering_array([3, 3], must_include=[[0, 3]])
    with pytest.raises(ValueError, match="row 0"):
        covering_array([3, 3], must_include=[[0]])


@pytest.mark.parametrize("strength", [1, 4])
def test_unsupported_strength_is_rejected(strength: int) -> None:
    with pytest.raises(ValueError, match="strength"):
        covering_array([2, 2, 2, 2], strength)


def test_empty_axis_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        covering_array([2, 0, 2])
