"""Sampling the guest's cost during bakes: :func:`read` and :class:`Sampler` against libvirt's
``test:///default`` driver (the real libvirt API; its figures are made up: a fixed CPU time,
disk counters that follow the clock, memory from a domain with a balloon), and whole cells
through the runner with a scripted guest (tests/support/fakeguest.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compatlab.cost import Sample, bakes_from_json, cell_cost, summarize
from compatlab.lab import guest_cost
from compatlab.lab.connection import Hypervisor
from compatlab.lab.guest_cost import Sampler, from_stats, read
from compatlab.matrix import Cell
from compatlab.model import Verdict
from compatlab.report import load_results, write_results
from tests.support.cells import run_info
from tests.support.testdomain import test_domain
from tests.unit.test_run_cell import Guests, cell, hv, run  # noqa: F401  (hv: a fixture)


@pytest.fixture
def domain(hv: Hypervisor) -> Iterator[Any]:  # noqa: F811
    """A defined, shut-off test domain with a disk and a balloon with a statistics period."""
    with test_domain(hv, "<memballoon model='virtio'><stats period='1'/></memballoon>") as dom:
        yield dom


def test_read_of_a_running_domain_has_cpu_disk_and_memory(domain: Any) -> None:
    domain.create()
    before = time.monotonic()
    got = read(domain)
    assert got is not None
    assert before <= got.taken <= time.monotonic()
    assert got.cpu_ns > 0
    assert got.disk_read_bytes > 0 and got.disk_write_bytes > 0
    assert got.disk_read_ops > 0 and got.disk_write_ops > 0
    # The test driver's balloon: half of the domain's 64 MiB usable, and half resident.
    assert got.guest_used_bytes == 32 * 1024 * 1024
    assert got.host_rss_kib == 32 * 1024


def test_read_of_a_domain_that_is_not_running_or_gone_is_none(domain: Any) -> None:
    assert read(domain) is None
    domain.create()
    gone = domain.connect().lookupByName(domain.name())
    gone.destroy()
    gone.undefine()
    assert read(domain) is None


def test_a_sampler_on_the_test_driver_gives_a_usable_bake(domain: Any) -> None:
    domain.create()
    sampler = Sampler(lambda: read(domain), interval=0.05)
    sampler.start()
    time.sleep(0.3)
    samples = sampler.stop()
    assert len(samples) >= 4
    assert [s.taken for s in samples] == sorted(s.taken for s in samples)
    window = summarize(samples, boot=1)
    assert window.usable
    assert window.disk_read_bytes is not None and window.disk_read_bytes > 0  # the clock's
    assert window.memory_peak == 32 * 1024 * 1024


def test_a_sampler_takes_one_at_once_and_one_at_the_end() -> None:
    taken: list[float] = []

    def take() -> Sample:
        taken.append(time.monotonic())
        return Sample(taken[-1], cpu_ns=len(taken))

    sampler = Sampler(take, interval=60.0)
    sampler.start()
    time.sleep(0.1)
    assert len(taken) == 1  # at once, not after an interval
    samples = sampler.stop()
    assert [s.cpu_ns for s in samples] == [1, 2]


def test_a_sampler_survives_what_its_take_raises_and_skips_none() -> None:
    calls = iter([RuntimeError("libvirt went away"), None, Sample(1.0, 5), Sample(2.0, 9)])

    def take() -> Sample | None:
        item = next(calls, None)
        if isinstance(item, Exception):
            raise item
        return item

    sampler = Sampler(take, interval=0.02)
    sampler.start()
    time.sleep(0.2)
    assert [s.cpu_ns for s in sampler.stop()] == [5, 9]


def test_a_hung_statistics_call_does_not_hold_up_stop() -> None:
    release = threading.Event()

    def hung() -> Sample | None:
        release.wait(30)
        return None

    sampler = Sampler(hung, interval=0.01)
    sampler.start()
    started = time.monotonic()
    assert sampler.stop(timeout=0.2) == []
    assert time.monotonic() - started < 1.0
    release.set()


# Recorded from QEMU 7.2 under libvirt 9.0 (tinylinux-a on bios-1cpu, TCG, on a loaded host, at
# its baseline boot): domainListGetStats([dom], guest_cost.STATS), without the path, size and
# timing counters. The domain has a balloon with a statistics period, but the guest loads no
# balloon driver: its report never came (last-update 0), so only the host's RSS is there.
QEMU_RECORD = {
    "cpu.time": 16762248000,
    "cpu.user": 15661813000,
    "cpu.system": 1100434000,
    "cpu.cache.monitor.count": 0,
    "cpu.haltpoll.success.time": 0,
    "cpu.haltpoll.fail.time": 0,
    "balloon.current": 262144,
    "balloon.maximum": 262144,
    "balloon.last-update": 0,
    "balloon.rss": 283680,
    "vcpu.current": 1,
    "vcpu.maximum": 1,
    "vcpu.0.state": 1,
    "vcpu.0.time": 15410000000,
    "vcpu.0.wait": 0,
    "vcpu.0.delay": 27973956922,
    "block.count": 2,
    "block.0.name": "vda",
    "block.0.rd.reqs": 116,
    "block.0.rd.bytes": 4628992,
    "block.0.wr.reqs": 16,
    "block.0.wr.bytes": 39936,
    "block.0.fl.reqs": 3,
    "block.1.name": "sdz",
    "block.1.rd.reqs": 9,
    "block.1.rd.bytes": 174,
    "block.1.wr.reqs": 0,
    "block.1.wr.bytes": 0,
    "block.1.fl.reqs": 0,
}


def test_from_stats_reads_a_qemu_record() -> None:
    got = from_stats(QEMU_RECORD, 3.0)
    assert got == Sample(
        taken=3.0,
        cpu_ns=16762248000,
        vcpus=1,
        vcpu_delay_ns=27973956922,
        disk_read_bytes=4628992 + 174,
        disk_write_bytes=39936,
        disk_read_ops=116 + 9,
        disk_write_ops=16,
        host_rss_kib=283680,
    )
    assert got.guest_used_bytes is None  # no balloon driver in the guest
    # What a guest with the driver adds (KiB): MemTotal and MemAvailable.
    with_driver = {**QEMU_RECORD, "balloon.available": 250000, "balloon.usable": 200000}
    assert from_stats(with_driver, 3.0).guest_used_bytes == 50000 * 1024  # type: ignore[union-attr]
    assert from_stats({}, 1.0) is None
    one_of_two = {"cpu.time": 1, "vcpu.current": 2, "vcpu.0.delay": 5}
    assert from_stats(one_of_two, 1.0).vcpu_delay_ns is None  # type: ignore[union-attr]


# -- whole cells ----------------------------------------------------------------------------------


def test_a_cell_keeps_the_cost_of_its_baseline_bake_and_of_each_candidate_bake(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
) -> None:
    result = run(hv, tmp_path, cell(tmp_path), Guests({}))
    assert result.verdict is Verdict.PASS, result.reason
    costs = {p["phase"]: p.get("cost") for p in result.phases}
    baseline = bakes_from_json(costs["baseline"])
    boots = bakes_from_json(costs["boots"])
    assert [w.boot for w in baseline] == [1]
    assert [w.boot for w in boots] == [1, 2]  # the scenario's two boots
    assert all(w.usable and w.samples >= 2 for w in baseline + boots)
    assert costs["provision"] is None and costs["checks"] is None  # no bake there
    assert cell_cost(result) is not None

    # results.json keeps it, and reads it back the same.
    write_results(tmp_path / "run", run_info(), [result])
    back = load_results(tmp_path / "run").cells[0]
    assert back.phases == json.loads(json.dumps(result.phases))
    again, first = cell_cost(back), cell_cost(result)
    assert again is not None and first is not None
    assert [m.describe() for m in again.metrics] == [m.describe() for m in first.metrics]


def test_a_crash_during_a_bake_is_seen_at_once_and_its_bake_kept_cut_short(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The statistics calls are slow here (0.8 s each); the crash is still decided within the
    event poll, because sampling runs on its own thread."""
    real_read = guest_cost.read

    def slow(dom: Any) -> Sample | None:
        time.sleep(0.8)
        return real_read(dom)

    monkeypatch.setattr(guest_cost, "read", slow)
    guests = Guests({}, {})

    def progress(_cell: str, text: str) -> None:
        if text == "baking 3 s (boot 1 of 2)":  # the candidate's VM, not the rerun's
            threading.Timer(0.5, guests.made[0]._panic).start()

    the_cell: Cell = cell(tmp_path, extra="include: [{scenario: {bake: 3}}]\n")
    result = run(hv, tmp_path, the_cell, guests, progress=progress)
    assert result.verdict in (Verdict.CRASH, Verdict.BOOT_LOOP), result.reason
    crashed = next(e.t for e in result.events if e.kind == "crashed")
    # The runner's answer to the crash: its evidence kept and the guest reset.
    acted = next(e.t for e in result.events if e.kind == "power_cycle" and e.t >= crashed)
    assert acted - crashed < 0.5  # within the event poll, whatever the sampler is doing
    boots = next(p for p in result.phases if p["phase"] == "boots")
    cut = bakes_from_json(boots["cost"])
    assert [w.boot for w in cut] == [1]
    assert not cut[0].usable and "cut short" in cut[0].note
