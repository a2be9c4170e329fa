"""Rollout policies: what a valid one means, and every malformed one an error at its place."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from compatlab.errors import InputError, PolicyError
from compatlab.model import Verdict
from compatlab.signoff import load_policy
from compatlab.signoff.policy import DEFAULT_BLOCK
from tests.support.catalogs import write

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
target: early
defaults:
  boot_regression: 1.5
rings:
  - name: internal
    description: ring 0
    require: {fleet_share: 0.75}
  - name: early
    require:
      cells: [{build: [b1, b2]}, {hardware: h1, products: none}, {products: [av, edr]}]
      fleet_share: 0.9
    block: [crash, check_failed]
    repeats: 2
  - name: broad
    boot_regression: null
"""


def policy_file(tmp_path: Path, text: str) -> Path:
    return write(tmp_path / "rollout.yaml", text)


def line_of(path: Path, needle: str) -> int:
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in {path}")


def test_a_policy_reads_as_rings_in_order_with_defaults(tmp_path: Path) -> None:
    path = policy_file(tmp_path, GOOD)
    policy = load_policy(path)
    assert [r.name for r in policy.rings] == ["internal", "early", "broad"]
    assert policy.target == "early"
    assert policy.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    internal, early, broad = policy.rings
    assert internal.description == "ring 0" and internal.block == DEFAULT_BLOCK
    assert internal.require.cells == () and internal.require.fleet_share == 0.75
    assert internal.boot_regression == 1.5 and internal.repeats == 1
    assert early.block == {Verdict.CRASH, Verdict.CHECK_FAILED} and early.repeats == 2
    first, second, third = early.require.cells or ()
    assert first.build == {"b1", "b2"} and first.hardware is None and first.products is None
    assert second.hardware == {"h1"} and second.products == frozenset()
    assert third.products == {"av", "edr"}
    assert early.require.fleet_share == 0.9
    # No require: every cell must pass. A ring's null overrides the default.
    assert broad.require.cells is None and broad.require.fleet_share is None
    assert broad.boot_regression is None


def test_the_target_defaults_to_the_last_ring(tmp_path: Path) -> None:
    policy = load_policy(policy_file(tmp_path, "rings: [{name: a}, {name: b}]\n"))
    assert policy.target == "b"


def test_the_projects_rollout_policy_loads() -> None:
    policy = load_policy(ROOT / "configs" / "rollout.yaml")
    assert [r.name for r in policy.rings] == ["internal", "early-adopters", "broad"]
    assert policy.target == "broad"
    assert all(Verdict.INFRA_ERROR not in r.block for r in policy.rings)


@pytest.mark.parametrize(
    ("text", "needle", "message"),
    [
        ("rings: []\n", "rings:", "at least one ring"),
        ("ring: [{name: a}]\n", "ring:", "unknown key 'ring' in policy (did you mean 'rings'?)"),
        ("rings: [{name: a}, {name: a}]\n", "rings:", "ring 'a' is named twice"),
        ("rings:\n  - {description: x}\n", "description", "missing the required key 'name'"),
        ("target: broda\nrings: [{name: broad}]\n", "target:", "did you mean 'broad'?"),
        ("rings:\n  - {name: a, block: [infra_error]}\n", "infra_error", "cannot block"),
        ("rings:\n  - {name: a, block: [pass]}\n", "block", "must be one of crash"),
        ("rings:\n  - {name: a, block: [crash, crash]}\n", "block", "listed twice"),
        ("rings:\n  - {name: a, block: crash}\n", "block", "block must be a list"),
        ("rings:\n  - {name: a, repeats: 0}\n", "repeats", "at least 1"),
        ("rings:\n  - {name: a, repeats: 2.5}\n", "repeats", "whole number"),
        ("rings:\n  - {name: a, boot_regression: 0.8}\n", "boot_regression", "at least 1"),
        ("rings:\n  - {name: a, require: {}}\n", "require", "cells, fleet_share or both"),
        ("rings:\n  - {name: a, require: {cells: some}}\n", "cells", "all or a list"),
        ("rings:\n  - {name: a, require: {cells: []}}\n", "cells", "no selector"),
        ("rings:\n  - {name: a, require: {cells: [{}]}}\n", "cells", "empty selector"),
        ("rings:\n  - {name: a, require: {cells: [{os: x}]}}\n", "os", "unknown key 'os'"),
        ("rings:\n  - {name: a, require: {cells: [{products: a+a}]}}\n", "a+a", "twice"),
        ("rings:\n  - {name: a, require: {fleet_share: 1.5}}\n", "fleet_share", "at most 1"),
        ("rings:\n  - {name: a, require: {fleet_share: 0}}\n", "fleet_share", "greater than 0"),
        ("rings:\n  - {name: a, require: {fleet_share: 95%}}\n", "fleet_share", "a number"),
        ("defaults: {name: x}\nrings: [{name: a}]\n", "defaults", "unknown key 'name'"),
        ("rings:\n  - {name: a, colour: red}\n", "colour", "unknown key 'colour' in ring"),
        ("rings:\n  - name: a\n    require: {cells: all\n", "cells", "invalid YAML"),
    ],
)
def test_a_malformed_policy_is_an_error_at_its_line(
    tmp_path: Path, text: str, needle: str, message: str
) -> None:
    path = policy_file(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    err = info.value
    assert message in str(err)
    assert err.file == path
    assert err.line == line_of(path, needle) or (message == "invalid YAML" and err.line > 0)
    assert str(err).startswith(f"{path}:{err.line}:")


def test_a_missing_policy_file_is_an_input_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_policy(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)
