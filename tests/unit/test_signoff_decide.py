"""Ring decisions from results: go / no-go per ring, what blocks, and the blast radius."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from compatlab.errors import PolicyError
from compatlab.model import Attribution, Boot, CellResult, Repeat, Verdict
from compatlab.signoff import Policy, decide, load_policy
from compatlab.signoff.decide import boot_ratio
from tests.support.catalogs import write

MATRIX = "matrix/demo.yaml"


def cell(
    cell_id: str,
    verdict: Verdict = Verdict.PASS,
    attribution: Attribution | None = None,
    *,
    share: float | None = None,
    boots: tuple[float, ...] = (10.0, 11.0),
    **changes: Any,
) -> CellResult:
    """A cell of ``MATRIX``: a baseline boot of ``boots[0]`` s, then boots with the candidate."""
    build, hardware, products = cell_id.split("/")
    result = CellResult(
        id=cell_id,
        build=build,
        hardware=hardware,
        products=() if products == "none" else tuple(products.split("+")),
        verdict=verdict,
        attribution=attribution
        if attribution is not None or verdict is Verdict.PASS
        else Attribution.CANDIDATE,
        matrix=MATRIX,
        fleet_share=share,
        boots=[Boot(1, "completed", boots[0], "baseline")]
        + [Boot(n, "completed", s, "boots") for n, s in enumerate(boots[1:], start=2)],
    )
    for key, value in changes.items():
        setattr(result, key, value)
    return result


def policy(tmp_path: Path, text: str) -> Policy:
    return load_policy(write(tmp_path / "rollout.yaml", text))


RINGS = """
rings:
  - {name: internal, require: {fleet_share: 0.75}}
  - {name: early, require: {fleet_share: 0.95}}
  - {name: broad, require: {cells: all}}
"""


def demo_like() -> list[CellResult]:
    """Eight cells; the two with other-edr crash and stand for 22% of the fleet."""
    return [
        cell("a/h1/none", share=0.10),
        cell("a/h1/av", share=0.30),
        cell("a/h1/av+edr", Verdict.CRASH, share=0.12, reason="Kernel panic"),
        cell("b/h1/none", share=0.05),
        cell("b/h1/av", share=0.21),
        cell("b/h1/av+edr", Verdict.BOOT_LOOP, share=0.10),
        cell("c/h1/none", share=0.01),
        cell("c/h1/av", share=0.11),
    ]


def test_every_cell_passing_opens_every_ring(tmp_path: Path) -> None:
    cells = [cell("a/h1/none", share=0.5), cell("a/h1/av", share=0.5)]
    signoff = decide(policy(tmp_path, RINGS), cells)
    assert signoff.go and signoff.may_enter == ["internal", "early", "broad"]
    assert all(r.met and not r.blocking and not r.reasons for r in signoff.rings)
    assert not signoff.failing and signoff.failing_fleet.share == 0


def test_red_cells_read_as_a_share_of_the_fleet_and_close_the_rings_they_break(
    tmp_path: Path,
) -> None:
    signoff = decide(policy(tmp_path, RINGS), demo_like())
    assert not signoff.go
    assert signoff.may_enter == ["internal"]  # 78% of the fleet passes: over 75%, under 95%
    assert [c.id for c in signoff.failing] == ["a/h1/av+edr", "b/h1/av+edr"]
    assert signoff.failing_fleet.describe() == "about 22% of the fleet"
    internal, early, broad = signoff.rings
    assert internal.passing_share == pytest.approx(0.78)
    assert early.passing_share == pytest.approx(0.78)
    assert "78.0% of the fleet tested; the ring needs 95.0%" in early.reasons[0]
    assert [c.cell.id for c in early.blocking] == ["a/h1/av+edr", "b/h1/av+edr"]  # by share
    assert early.blocking_fleet.share == pytest.approx(0.22)
    assert {c.status for c in broad.blocking} == {"fails"}
    crash = next(c for c in broad.blocking if c.cell.id == "a/h1/av+edr")
    assert crash.why == "crash (attributed to candidate): Kernel panic"


def test_a_ring_is_closed_when_one_before_it_is_whatever_its_own_requirement(
    tmp_path: Path,
) -> None:
    text = """
rings:
  - {name: internal, require: {cells: [{products: av+edr}]}}
  - {name: early, require: {fleet_share: 0.5}}
"""
    signoff = decide(policy(tmp_path, text), demo_like())
    internal, early = signoff.rings
    assert not internal.may_enter
    assert early.met and not early.may_enter
    assert early.reasons == ["a ring before it is closed"]
    assert signoff.may_enter == []


def test_the_lab_failing_or_the_baseline_failing_is_not_tested_and_not_the_updates_failure(
    tmp_path: Path,
) -> None:
    cells = [
        cell("a/h1/none", Verdict.INFRA_ERROR, Attribution.INFRA, share=0.4, reason="no host"),
        cell("a/h1/av", Verdict.CRASH, Attribution.BASELINE, share=0.3),
        cell("a/h1/edr", share=0.3),
    ]
    signoff = decide(policy(tmp_path, RINGS), cells)
    assert not signoff.failing and signoff.failing_fleet.share == 0
    broad = signoff.rings[2]
    assert [c.status for c in broad.blocking] == ["not_tested", "not_tested"]
    assert "1 run" not in broad.reasons[0] and "2 not tested" in broad.reasons[0]
    why = {c.cell.id: c.why for c in broad.blocking}
    assert why["a/h1/none"] == "the lab failed (infra_error): the update was not tested; no host"
    assert why["a/h1/av"].startswith("crash without the candidate too (baseline)")
    # Not tested is not passed: 30% of the fleet tested passed, under every share asked for.
    assert signoff.rings[0].passing_share == pytest.approx(0.3)
    assert signoff.may_enter == []


def test_a_verdict_the_ring_does_not_block_is_let_through_and_listed(tmp_path: Path) -> None:
    text = """
rings:
  - {name: internal}
  - {name: broad, block: [crash, check_failed]}
"""
    cells = [cell("a/h1/none"), cell("a/h1/av", Verdict.CHECK_FAILED, reason="svc down")]
    internal, broad = decide(policy(tmp_path, text), cells).rings
    assert internal.may_enter and not internal.blocking
    assert [(c.cell.id, c.status) for c in internal.allowed] == [("a/h1/av", "allowed")]
    assert not broad.may_enter and broad.blocking[0].status == "fails"
    assert [c.id for c in decide(policy(tmp_path, text), cells).failing] == ["a/h1/av"]


def test_a_cell_failing_once_in_n_runs_fails_and_too_few_runs_are_not_tested(
    tmp_path: Path,
) -> None:
    text = "rings:\n  - {name: broad, repeats: 3}\n"
    flaky = cell(
        "a/h1/av",
        Verdict.CRASH,
        share=0.2,
        repeats=[
            Repeat(Verdict.PASS),
            Repeat(Verdict.CRASH, Attribution.CANDIDATE),
            Repeat(Verdict.PASS),
        ],
    )
    once = cell("a/h1/none", share=0.3)
    short = cell(
        "a/h1/edr",
        share=0.1,
        repeats=[
            Repeat(Verdict.PASS),
            Repeat(Verdict.INFRA_ERROR, Attribution.INFRA),
            Repeat(Verdict.PASS),
        ],
    )
    steady = cell("b/h1/none", share=0.4, repeats=[Repeat(Verdict.PASS)] * 3)
    signoff = decide(policy(tmp_path, text), [flaky, once, short, steady])
    why = {c.cell.id: (c.status, c.why) for c in signoff.rings[0].blocking}
    assert why["a/h1/av"] == ("fails", "crash in 1 of 3 runs (attributed to candidate)")
    assert why["a/h1/none"] == (
        "not_tested",
        "1 run with a verdict; the ring needs 3 (--matrix-repeat 3)",
    )
    assert why["a/h1/edr"][0] == "not_tested" and why["a/h1/edr"][1].startswith("2 runs")
    assert "b/h1/none" not in why
    assert [c.id for c in signoff.failing] == ["a/h1/av"]


def test_a_boot_slower_than_the_ring_allows_fails_the_cell(tmp_path: Path) -> None:
    text = "rings:\n  - {name: broad, boot_regression: 1.5}\n"
    slow = cell("a/h1/av", boots=(10.0, 12.0, 16.0))
    fine = cell("a/h1/none", boots=(10.0, 15.0, 11.0))
    unmeasured = cell("a/h1/edr", boots=(10.0,))
    assert boot_ratio(slow) == (1.6, 16.0, 10.0)
    blocking = decide(policy(tmp_path, text), [slow, fine, unmeasured]).rings[0].blocking
    why = {c.cell.id: (c.status, c.why) for c in blocking}
    assert why["a/h1/av"] == (
        "fails",
        "boot time 1.60x the baseline (16.0 s vs 10.0 s), over the 1.5x allowed",
    )
    assert why["a/h1/edr"][0] == "not_tested" and "not measured" in why["a/h1/edr"][1]
    assert "a/h1/none" not in why
    # Without a limit, the same boots do not matter.
    assert decide(policy(tmp_path, "rings: [{name: broad}]\n"), [slow, fine]).go


def test_selectors_name_the_cells_that_must_pass_and_an_untested_selector_closes_the_ring(
    tmp_path: Path,
) -> None:
    text = """
rings:
  - name: internal
    require:
      cells: [{products: none}, {build: [a, b], products: [av]}]
  - name: early
    require:
      cells:
        - {products: none}
        - {hardware: h9}
"""
    internal, early = decide(policy(tmp_path, text), demo_like()).rings
    assert internal.may_enter  # the crashing av+edr cells are not named
    assert not early.met
    assert early.reasons == [
        "no cell of the run matches hardware h9 (policy line 9): that part of the requirement "
        "was not tested"
    ]


def test_a_fleet_share_is_of_the_fleet_the_run_tested(tmp_path: Path) -> None:
    # A pairwise sample: its cells stand for 40% of the fleet, 38% passes: 95% of it.
    cells = [cell("a/h1/none", share=0.38), cell("a/h1/av", Verdict.HANG, share=0.02)]
    signoff = decide(policy(tmp_path, RINGS), cells)
    assert signoff.rings[1].passing_share == pytest.approx(0.95)
    assert signoff.may_enter == ["internal", "early"]
    assert signoff.tested_fleet.share == pytest.approx(0.4)


def test_a_share_asked_of_a_run_without_fleet_weights_is_a_policy_error(tmp_path: Path) -> None:
    p = policy(tmp_path, RINGS)
    with pytest.raises(PolicyError) as info:
        decide(p, [cell("a/h1/none"), cell("a/h1/av")])
    assert info.value.line == 2 and "needs a share of the fleet" in info.value.message
    assert "fleet: block" in (info.value.hint or "")


def test_an_unfinished_or_empty_run_opens_no_ring(tmp_path: Path) -> None:
    p = policy(tmp_path, "rings: [{name: broad}]\n")
    partial = decide(p, [cell("a/h1/none")], complete=False)
    assert not partial.go and partial.rings[0].reasons[0].startswith("the run has not finished")
    assert decide(p, []).rings[0].reasons == ["no cell has a result"]


def test_the_target_ring_decides_go(tmp_path: Path) -> None:
    p = policy(tmp_path, RINGS)
    assert not decide(p, demo_like()).go
    assert decide(p, demo_like(), target="internal").go
    assert not decide(p, demo_like(), target="early").go


def test_a_configuration_tested_by_two_matrices_counts_once_in_the_blast_radius(
    tmp_path: Path,
) -> None:
    one = cell("a/h1/av", Verdict.CRASH, share=0.3)
    again = cell("a/h1/av", Verdict.CRASH, share=0.3, matrix="matrix/other.yaml")
    signoff = decide(policy(tmp_path, "rings: [{name: broad}]\n"), [one, again])
    assert len(signoff.failing) == 2
    assert signoff.failing_fleet.share == pytest.approx(0.3)


def test_a_cell_restored_from_memory_is_compared_with_its_layers_baseline_boot() -> None:
    # Found by review: filed under "baseline", the restore (0.3 s) made every candidate boot
    # look 60x slower and failed every ring's boot_regression.
    restored = cell("a/h1/av")
    restored.boots = [
        Boot(0, "completed", 20.0, "baseline", kind="layer"),
        Boot(1, "completed", 0.3, "provision", kind="restore"),
        Boot(2, "completed", 21.0, "boots"),
        Boot(3, "completed", 24.0, "boots"),
    ]
    assert boot_ratio(restored) == (1.2, 24.0, 20.0)
