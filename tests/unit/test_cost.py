"""The candidate's cost on the guest, the pure part: samples -> bakes -> baseline against
candidate, on hand-made samples whose figures are worked out here."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from compatlab.cost import (
    JUDGED,
    STARVED,
    Sample,
    Window,
    bakes_from_json,
    cell_cost,
    compare,
    format_value,
    phase_cost_json,
    summarize,
)
from compatlab.model import Boot, CellResult, Verdict

GiB_KIB = 1024 * 1024  # 1 GiB in KiB, as the balloon reports it
MIB = 1024 * 1024


def sample(t: float, *, cpu: float = 0.0, **counters: Any) -> Sample:
    """A sample at ``t`` s with ``cpu`` CPU seconds so far; other counters as given."""
    return Sample(taken=t, cpu_ns=round(cpu * 1e9), **counters)


def bake(
    boot: int,
    *,
    cpu_share: float = 0.1,
    read_rate: int = 0,
    write_rate: int = 0,
    used_mib: int | None = 100,
    seconds: int = 10,
    delay_share: float = 0.0,
) -> Window:
    """A bake of ``seconds`` sampled each second at a steady rate (one vCPU)."""
    samples = []
    for t in range(seconds + 1):
        memory: dict[str, Any] = {}
        if used_mib is not None:
            memory = {
                "guest_available_kib": GiB_KIB,
                "guest_usable_kib": GiB_KIB - used_mib * 1024,
            }
        samples.append(
            sample(
                100.0 + t,
                cpu=5 + cpu_share * t,
                vcpu_delay_ns=round(delay_share * t * 1e9),
                disk_read_bytes=read_rate * t,
                disk_write_bytes=write_rate * t,
                disk_read_ops=t,
                disk_write_ops=2 * t,
                host_rss_kib=200_000 + t,
                **memory,
            )
        )
    return summarize(samples, boot=boot)


# -- samples -> a bake ----------------------------------------------------------------------------


def test_a_bake_is_its_counters_difference_and_its_memory_peak_and_mean() -> None:
    samples = [
        sample(
            10.0,
            cpu=2.0,
            vcpus=2,
            vcpu_delay_ns=0,
            disk_read_bytes=1000,
            disk_write_bytes=500,
            disk_read_ops=10,
            disk_write_ops=4,
            guest_available_kib=GiB_KIB,
            guest_usable_kib=GiB_KIB - 100 * 1024,
            host_rss_kib=300_000,
        ),
        sample(
            12.0,
            cpu=2.5,
            vcpus=2,
            vcpu_delay_ns=400_000_000,
            disk_read_bytes=5000,
            disk_write_bytes=500,
            disk_read_ops=14,
            disk_write_ops=4,
            guest_available_kib=GiB_KIB,
            guest_usable_kib=GiB_KIB - 300 * 1024,
            host_rss_kib=310_000,
        ),
    ]
    window = summarize(reversed(samples), boot=2)  # any order: sorted by time
    assert window == Window(
        boot=2,
        seconds=2.0,
        samples=2,
        cpu_seconds=0.5,
        vcpu_delay_share=0.1,  # 0.4 s of waiting over 2 s, 2 vCPUs
        memory_peak=300 * MIB,
        memory_mean=200 * MIB,
        host_rss_peak=310_000 * 1024,
        disk_read_bytes=4000,
        disk_write_bytes=0,
        disk_read_ops=4,
        disk_write_ops=0,
    )
    assert window.usable
    assert window.value("cpu") == pytest.approx(0.25)
    assert window.value("disk_read") == pytest.approx(2000.0)
    assert window.value("memory") == 300 * MIB


def test_guest_memory_falls_back_to_free_memory_and_is_none_without_a_balloon_driver() -> None:
    assert sample(0, guest_available_kib=1024, guest_unused_kib=256).guest_used_bytes == 768 * 1024
    assert sample(0, guest_available_kib=1024).guest_used_bytes is None
    assert sample(0, host_rss_kib=5).guest_used_bytes is None
    window = summarize([sample(0.0, host_rss_kib=10), sample(1.0, host_rss_kib=20)], boot=1)
    assert window.memory_peak is None and window.memory_mean is None
    assert window.host_rss_peak == 20 * 1024


def test_a_bake_cut_short_or_with_restarted_counters_or_one_sample_is_not_usable() -> None:
    two = [sample(0.0, cpu=1.0), sample(1.0, cpu=1.5)]
    assert summarize(two, boot=1).usable
    cut = summarize(two, boot=1, complete=False)
    assert not cut.usable and "cut short" in cut.note
    restarted = summarize([sample(0.0, cpu=9.0), sample(1.0, cpu=0.2)], boot=1)
    assert not restarted.usable and "restarted" in restarted.note
    lonely = summarize([sample(0.0, cpu=1.0)], boot=1)
    assert not lonely.usable and lonely.samples == 1 and lonely.seconds == 0.0
    assert not summarize([], boot=1).usable


# -- results.json ---------------------------------------------------------------------------------


def test_bakes_round_trip_through_json() -> None:
    bakes = [bake(1), bake(2, cpu_share=0.3, used_mib=None), summarize([], boot=3)]
    text = json.dumps(phase_cost_json(bakes))
    back = bakes_from_json(json.loads(text))
    assert [w.as_json() for w in back] == [w.as_json() for w in bakes]
    assert back[1].memory_peak is None and back[2].note


@pytest.mark.parametrize(
    ("cost", "where"),
    [
        ([], "expected an object"),
        ({}, "bakes: expected a list"),
        ({"bakes": ["x"]}, "bakes[0]: expected an object"),
        ({"bakes": [{"boot": 1, "samples": 2}]}, "bakes[0]: missing key 'seconds'"),
        ({"bakes": [{"boot": 1, "seconds": "5", "samples": 2}]}, "bakes[0].seconds"),
        ({"bakes": [{"boot": 1, "seconds": 5, "samples": 2.5}]}, "bakes[0].samples"),
        ({"bakes": [{"boot": 1, "seconds": 5, "samples": 2, "cpu_seconds": -1}]}, "cpu_seconds"),
        ({"bakes": [{"boot": 1, "seconds": 5, "samples": 2, "note": 3}]}, "bakes[0].note"),
    ],
)
def test_a_malformed_cost_names_where_it_breaks(cost: object, where: str) -> None:
    with pytest.raises(ValueError, match=re.escape(where)):
        bakes_from_json(cost)


# -- baseline against candidate -------------------------------------------------------------------


def test_the_candidate_side_is_its_worst_bake_and_the_baseline_its_median() -> None:
    comparison = compare(
        [bake(1, cpu_share=0.10), bake(2, cpu_share=0.20), bake(3, cpu_share=0.12)],
        [bake(1, cpu_share=0.11), bake(2, cpu_share=0.30)],
        baseline_boots=[20.0],
        candidate_boots=[21.0, 26.0],
    )
    assert comparison is not None
    cpu = comparison.metric("cpu")
    assert cpu.baseline == pytest.approx(0.12) and cpu.candidate == pytest.approx(0.30)
    assert cpu.worst == 2
    assert cpu.change == pytest.approx(1.5)
    assert cpu.describe() == "CPU +150% (0.300 CPU-s/s vs 0.120 CPU-s/s, boot 2)"
    boot = comparison.metric("boot")
    assert (boot.baseline, boot.candidate) == (20.0, 26.0)
    assert comparison.baseline_bakes == 3 and comparison.candidate_bakes == 2


def test_over_needs_both_the_share_and_the_noise_floor() -> None:
    comparison = compare(
        [bake(1, cpu_share=0.01, write_rate=0, read_rate=1_000_000, used_mib=100)],
        [bake(1, cpu_share=0.025, write_rate=200_000, read_rate=1_100_000, used_mib=103)],
    )
    assert comparison is not None
    limits = dict.fromkeys(JUDGED, 0.25)
    over = {m.key for m in comparison.over(limits)}
    # CPU: +150%, but 0.015 CPU-s/s is under the floor; memory: +3%, 3 MiB; disk read: +10%.
    # Disk written: from nothing to 200 kB/s, over its floor: "new", over any share.
    assert over == {"disk_write"}
    assert comparison.metric("disk_write").change is None
    assert "new" in comparison.metric("disk_write").describe()
    assert {m.key for m in comparison.over({"disk_read": 0.05})} == {"disk_read"}
    assert comparison.over({"cpu": 0.25}) == []


def test_cpu_is_not_compared_when_the_host_starved_a_bake() -> None:
    comparison = compare([bake(1, delay_share=STARVED + 0.1)], [bake(1, cpu_share=0.9)])
    assert comparison is not None
    cpu = comparison.metric("cpu")
    assert not cpu.comparable and "waiting for a CPU" in cpu.note
    assert not cpu.over(0.0)
    assert "cpu" not in {m.key for m in comparison.judged()}
    assert comparison.metric("disk_read").comparable


def test_memory_is_not_compared_without_a_balloon_driver_on_both_sides() -> None:
    comparison = compare([bake(1, used_mib=None)], [bake(1, used_mib=900)])
    assert comparison is not None
    memory = comparison.metric("memory")
    assert not memory.measured and not memory.over(0.0)
    assert memory.note == "not reported: the guest runs no balloon driver"
    assert [m.key for m in comparison.judged()] == ["cpu", "disk_read", "disk_write"]


def test_no_usable_bake_on_a_side_is_no_comparison() -> None:
    cut = summarize([sample(0.0), sample(1.0)], boot=1, complete=False)
    assert compare([bake(1)], [cut]) is None
    assert compare([], [bake(1)]) is None
    comparison = compare([bake(1)], [cut, bake(2)])
    assert comparison is not None and comparison.left_out == 1


def _cell(baseline: list[Window], boots: list[Window]) -> CellResult:
    return CellResult(
        id="a/b/none",
        build="a",
        hardware="b",
        products=(),
        verdict=Verdict.PASS,
        boots=[Boot(1, "completed", 20.0, "baseline"), Boot(2, "completed", 30.0, "boots")],
        phases=[
            {"phase": "provision", "outcome": "pass"},
            {"phase": "baseline", "outcome": "pass", "cost": phase_cost_json(baseline)},
            {"phase": "boots", "outcome": "pass", "cost": phase_cost_json(boots)},
        ],
    )


def test_a_cells_cost_reads_its_phases_and_boots() -> None:
    comparison = cell_cost(_cell([bake(1, cpu_share=0.2)], [bake(1, cpu_share=0.3)]))
    assert comparison is not None
    assert comparison.metric("cpu").change == pytest.approx(0.5)
    assert comparison.metric("boot").change == pytest.approx(0.5)
    assert cell_cost(_cell([], [bake(1)])) is None
    old = _cell([bake(1)], [bake(1)])
    old.phases = [{k: v for k, v in p.items() if k != "cost"} for p in old.phases]
    assert cell_cost(old) is None  # a result from before costs were sampled


@pytest.mark.parametrize(
    ("unit", "value", "text"),
    [
        ("cpu", 0.2049, "0.205 CPU-s/s"),
        ("cpu", 1.5, "1.50 CPU-s/s"),
        ("bytes", 48_200_000, "48.2 MB"),
        ("bytes/s", 1_250_000.0, "1.2 MB/s"),
        ("bytes/s", -1_250_000.0, "-1.2 MB/s"),
        ("ops/s", 4.06, "4.1 ops/s"),
        ("s", 20.34, "20.3 s"),
        ("bytes", 999, "999 B"),
        ("cpu", None, "—"),
        ("s", float("nan"), "—"),
    ],
)
def test_values_read_as_people_write_them(unit: Any, value: float | None, text: str) -> None:
    assert format_value(unit, value) == text
