"""A ring's ``cost_regression``: read from the policy (a share, or a share per metric; mistakes at
their line), and held to: a cell whose candidate uses more than the share over its baseline
fails the ring; one without measured cost is not tested; the sign-off says the limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from compatlab.cost import JUDGED, Sample, Window, phase_cost_json, summarize
from compatlab.errors import PolicyError
from compatlab.model import Boot, CellResult, Verdict
from compatlab.report import write_results
from compatlab.signoff import decide, load_policy, sign_off
from compatlab.signoff.decide import judge
from tests.support.catalogs import write
from tests.support.cells import MATRIX, run_info


def bake(cpu: float, *, write_rate: int = 0, used_mib: int | None = None) -> Window:
    samples = []
    for t in range(11):
        memory = {}
        if used_mib is not None:
            memory = {
                "guest_available_kib": 1 << 20,
                "guest_usable_kib": (1 << 20) - used_mib * 1024,
            }
        samples.append(
            Sample(float(t), round(cpu * t * 1e9), disk_write_bytes=write_rate * t, **memory)
        )
    return summarize(samples, boot=1)


def cell(
    cell_id: str, baseline: Window | None, candidate: Window | None, *, share: float = 0.5
) -> CellResult:
    build, hardware, products = cell_id.split("/")
    phases: list[dict[str, object]] = []
    for name, window in (("baseline", baseline), ("boots", candidate)):
        phase: dict[str, object] = {"phase": name, "outcome": "pass", "detail": "", "t": 0.0}
        if window is not None:
            phase["cost"] = phase_cost_json([window])
        phases.append(phase)
    return CellResult(
        id=cell_id,
        build=build,
        hardware=hardware,
        products=() if products == "none" else tuple(products.split("+")),
        verdict=Verdict.PASS,
        matrix=MATRIX,
        fleet_share=share,
        boots=[Boot(1, "completed", 20.0, "baseline"), Boot(2, "completed", 20.0, "boots")],
        phases=phases,
    )


def policy_file(tmp_path: Path, ring: str) -> Path:
    return write(tmp_path / "rollout.yaml", f"rings:\n  - name: broad\n{ring}")


# -- reading -------------------------------------------------------------------------------------


def test_a_share_holds_every_judged_metric_and_a_mapping_only_those_it_names(
    tmp_path: Path,
) -> None:
    one = load_policy(policy_file(tmp_path, "    cost_regression: 0.25\n")).ring("broad")
    assert one.cost_regression == dict.fromkeys(JUDGED, 0.25)
    assert set(JUDGED) == {"cpu", "memory", "disk_read", "disk_write"}
    some = load_policy(
        policy_file(tmp_path, "    cost_regression: {cpu: 0.1, disk_write: 2}\n")
    ).ring("broad")
    assert some.cost_regression == {"cpu": 0.1, "disk_write": 2.0}
    none = load_policy(policy_file(tmp_path, "    cost_regression: null\n")).ring("broad")
    assert none.cost_regression is None
    default = write(
        tmp_path / "d.yaml", "defaults: {cost_regression: 0.5}\nrings:\n  - name: broad\n"
    )
    assert load_policy(default).ring("broad").cost_regression == dict.fromkeys(JUDGED, 0.5)
    assert load_policy(policy_file(tmp_path, "")).ring("broad").cost_regression is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be greater than 0"),
        ("-0.1", "must be greater than 0"),
        ("lots", "must be a number"),
        ("1000", "must be at most 100"),
        ("{cpus: 0.1}", "unknown key 'cpus'"),
        ("{cpu: 0}", "cost_regression.cpu must be greater than 0"),
        ("{}", "names no metric"),
        ("[0.1]", "must be a number"),
    ],
)
def test_a_malformed_cost_regression_is_an_error_at_its_line(
    tmp_path: Path, value: str, message: str
) -> None:
    path = policy_file(tmp_path, f"    description: ring 2\n    cost_regression: {value}\n")
    with pytest.raises(PolicyError, match=message) as raised:
        load_policy(path)
    lines = path.read_text().splitlines()
    assert raised.value.line == next(n for n, t in enumerate(lines, 1) if "cost_regression" in t)
    assert str(path) in str(raised.value)


# -- deciding ------------------------------------------------------------------------------------


def test_a_candidate_over_the_share_fails_the_ring_and_says_which_metric(tmp_path: Path) -> None:
    policy = load_policy(policy_file(tmp_path, "    cost_regression: 0.25\n"))
    ring = policy.ring("broad")
    fine = cell("a/h/none", bake(0.20), bake(0.24))  # +20%
    costly = cell("a/h/av", bake(0.20), bake(0.30, write_rate=500_000))  # +50%, writes new
    check = judge(costly, ring)
    assert check.status == "fails"
    assert check.why.startswith("guest cost over the baseline: CPU +50% (0.300 CPU-s/s vs 0.200")
    assert "disk written new (500.0 kB/s vs 0 B/s" in check.why
    assert check.why.endswith("over the 25% allowed")
    assert judge(fine, ring).status == "pass"

    signoff = decide(policy, [fine, costly])
    assert not signoff.go
    assert [c.cell.id for c in signoff.rings[0].blocking] == ["a/h/av"]
    assert signoff.failing == []  # a costly candidate is no failing verdict: no blast radius


def test_only_the_metrics_a_mapping_names_are_held(tmp_path: Path) -> None:
    ring = load_policy(policy_file(tmp_path, "    cost_regression: {memory: 0.1}\n")).ring("broad")
    cpu_only = cell("a/h/none", bake(0.1, used_mib=100), bake(0.9, used_mib=105))
    assert judge(cpu_only, ring).status == "pass"  # CPU x9 is not asked about; memory +5%
    more_memory = cell("a/h/none", bake(0.1, used_mib=100), bake(0.1, used_mib=150))
    assert "guest memory in use (peak) +50%" in judge(more_memory, ring).why


def test_a_cell_without_measured_cost_is_not_tested_and_a_missing_metric_is_left_out(
    tmp_path: Path,
) -> None:
    ring = load_policy(policy_file(tmp_path, "    cost_regression: 0.25\n")).ring("broad")
    old = cell("a/h/none", None, None)  # a result from before costs were sampled
    check = judge(old, ring)
    assert (check.status, check.why) == (
        "not_tested",
        "guest cost not measured (baseline or candidate)",
    )
    # No balloon driver: memory is not measured, CPU and disk still are.
    no_memory = cell("a/h/none", bake(0.2), bake(0.2))
    assert judge(no_memory, ring).status == "pass"
    memory_only = load_policy(policy_file(tmp_path, "    cost_regression: {memory: 0.25}\n")).ring(
        "broad"
    )
    assert judge(no_memory, memory_only).status == "not_tested"
    no_limit = load_policy(policy_file(tmp_path, "")).ring("broad")
    assert judge(old, no_limit).status == "pass"


def test_the_sign_off_states_the_limit(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_results(run_dir, run_info(), [cell("a/h/av", bake(0.2), bake(0.4))])
    path = policy_file(tmp_path, "    cost_regression: {cpu: 0.25}\n")
    decision, page = sign_off(run_dir, path, now=datetime(2024, 7, 19, tzinfo=UTC))
    assert not decision.go
    doc = json.loads((run_dir / "signoff.json").read_text())
    assert doc["rings"][0]["requires"]["cost_regression"] == {"cpu": 0.25}
    assert "CPU +100%" in doc["rings"][0]["blocking"][0]["why"]
    assert "at most +25% cpu over the baseline bake" in page.read_text()
