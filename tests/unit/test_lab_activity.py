"""Guest activity from libvirt's domain statistics: ``sample`` against the ``test:///default``
driver (real libvirt API, made-up figures), ``describe`` as the pure function it is."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from compatlab.lab.activity import Activity, describe, from_stats, sample
from compatlab.lab.connection import Hypervisor
from tests.support.testdomain import test_domain

URI = "test:///default"


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    with Hypervisor(URI) as hypervisor:
        yield hypervisor


@pytest.fixture
def domain(hv: Hypervisor) -> Iterator[Any]:
    """A defined, shut-off domain with a disk and an empty CD-ROM drive, removed afterwards."""
    with test_domain(
        hv, "<disk type='file' device='cdrom'><target dev='sdz' bus='sata'/><readonly/></disk>"
    ) as dom:
        yield dom


def test_sample_of_a_running_domain(domain: Any) -> None:
    domain.create()
    before = time.monotonic()
    activity = sample(domain)
    assert activity is not None
    assert before <= activity.taken <= time.monotonic()
    assert activity.cpu_seconds > 0
    assert activity.disk_read_bytes > 0 and activity.disk_write_bytes > 0


def test_sample_of_a_domain_that_is_not_running_is_none(domain: Any) -> None:
    assert sample(domain) is None


def test_sample_of_a_domain_that_is_gone_is_none_not_an_error(domain: Any) -> None:
    domain.create()
    gone = domain.connect().lookupByName(domain.name())
    gone.destroy()
    gone.undefine()
    assert sample(domain) is None


# Recorded from QEMU 7.2 under libvirt 9.0 (tinylinux-a, TCG, at its boot marker, 20 s in):
# domainListGetStats([dom], VIR_DOMAIN_STATS_CPU_TOTAL | VIR_DOMAIN_STATS_BLOCK), without the
# path and timing counters. The test:/// driver answers this call with {}.
QEMU_RECORD = {
    "cpu.time": 15151816000,
    "cpu.user": 13796449000,
    "cpu.system": 1355366000,
    "cpu.cache.monitor.count": 0,
    "cpu.haltpoll.success.time": 0,
    "cpu.haltpoll.fail.time": 0,
    "block.count": 2,
    "block.0.name": "vda",
    "block.0.backingIndex": 2,
    "block.0.rd.reqs": 157,
    "block.0.rd.bytes": 7093760,
    "block.0.wr.reqs": 16,
    "block.0.wr.bytes": 39936,
    "block.0.fl.reqs": 3,
    "block.0.allocation": 720896,
    "block.0.capacity": 268435456,
    "block.0.physical": 663552,
    "block.1.name": "sdz",
    "block.1.rd.reqs": 9,
    "block.1.rd.bytes": 174,
    "block.1.wr.reqs": 0,
    "block.1.wr.bytes": 0,
    "block.1.fl.reqs": 0,
}


def test_from_stats_sums_every_disk() -> None:
    assert from_stats(QEMU_RECORD, 7.0) == Activity(15.151816, 7_093_934, 39_936, 7.0)


def test_from_stats_without_cpu_time_is_none_and_missing_counters_are_zero() -> None:
    assert from_stats({}, 1.0) is None
    assert from_stats({"block.count": 1, "block.0.name": "vda"}, 1.0) is None
    empty_cdrom = {"cpu.time": 1, "block.count": 1, "block.0.name": "sdz"}
    assert from_stats(empty_cdrom, 1.0) == Activity(1e-9, 0, 0, 1.0)


def act(cpu: float, read: int, written: int, taken: float) -> Activity:
    return Activity(cpu_seconds=cpu, disk_read_bytes=read, disk_write_bytes=written, taken=taken)


@pytest.mark.parametrize(
    ("before", "after", "words"),
    [
        (
            act(10.0, 5_000_000, 0, 100.0),
            act(22.3, 6_200_000, 0, 130.0),
            "CPU 41% of one vCPU over the last 30 s, 1.2 MB read, 0 B written",
        ),
        (
            act(1.0, 0, 0, 0.0),
            act(1.001, 999, 1000, 4.0),
            "CPU <1% of one vCPU over the last 4.0 s, 999 B read, 1.0 kB written",
        ),
        (
            act(0.0, 0, 0, 0.0),
            act(0.0, 0, 0, 10.0),
            "CPU 0% of one vCPU over the last 10 s, 0 B read, 0 B written",
        ),
        (
            act(0.0, 0, 0, 0.0),
            act(23.0, 999_960, 3_400_000_000, 10.0),
            "CPU 230% of one vCPU over the last 10 s, 1.0 MB read, 3.4 GB written",
        ),
        (
            act(50.0, 10, 10, 0.0),
            act(2.0, 5, 10, 60.0),
            "activity counters restarted within the last 60 s (the guest was powered off and on)",
        ),
        (
            act(1.0, 0, 0, 5.0),
            act(1.0, 0, 0, 5.0),
            "no time passed between the two activity samples",
        ),
    ],
)
def test_describe(before: Activity, after: Activity, words: str) -> None:
    assert describe(before, after) == words


def test_describe_large_counts() -> None:
    assert describe(act(0, 0, 0, 0), act(0, 12 * 10**15, 0, 1)).endswith(
        "12000.0 TB read, 0 B written"
    )


def test_a_guest_that_waited_for_the_host_much_of_the_time_was_starved() -> None:
    from compatlab.lab.activity import Activity, describe, starved

    before = Activity(10.0, 0, 0, taken=100.0, vcpu_delay_seconds=5.0, vcpus=1)
    busy_host = Activity(52.0, 6_200_000, 22_500, taken=220.0, vcpu_delay_seconds=64.0, vcpus=1)
    idle_hang = Activity(12.0, 0, 0, taken=220.0, vcpu_delay_seconds=6.0, vcpus=1)
    assert starved(before, busy_host)
    assert not starved(before, idle_hang)
    assert "59 s waiting for a host CPU" in describe(before, busy_host)


def test_the_vcpu_delay_is_read_from_the_bulk_stats() -> None:
    from compatlab.lab.activity import from_stats

    stats = {
        "cpu.time": 81_785_940_000,
        "vcpu.current": 2,
        "vcpu.0.delay": 58_790_367_282,
        "vcpu.1.delay": 1_209_632_718,
        "block.count": 0,
    }
    found = from_stats(stats, taken=1.0)
    assert found is not None
    assert (found.vcpus, round(found.vcpu_delay_seconds, 3)) == (2, 60.0)
