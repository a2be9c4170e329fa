"""What the guest is doing, seen from the hypervisor: CPU time and disk bytes.

When the guest channel does not answer, the runner has to say what the guest was doing
instead, without entering it. :func:`sample` reads the domain's cumulative CPU time and disk
traffic from libvirt's domain statistics, and :func:`describe` turns two samples into the words
a verdict's reason can carry ("CPU 41% of one vCPU over the last 30 s, 1.2 MB read, 0 B
written"). Deciding what the numbers mean is the runner's job, not this module's -- and they
only say so much: an idle guest that is up and a boot blocked in a sleep both sit near 0% (the
serial console's boot marker, ``lab/serial.py``, tells those apart); a guest spinning at 100%
or still reading its disk is not idle.

One bulk call, ``virConnectGetAllDomainStats`` for the one domain (``domainListGetStats`` with
``VIR_DOMAIN_STATS_CPU_TOTAL | VIR_DOMAIN_STATS_BLOCK``), gives both counters at one instant,
with no domain XML to parse for disk names. Where a driver refuses it or leaves it empty, the
per-call API is tried (``virDomainGetCPUStats`` total, ``virDomainBlockStats`` per disk of the
XML). Best effort, like all evidence: a domain that is not running, or a libvirt that refuses
both, gives None rather than an exception.

Measured here (libvirt 9.0, QEMU 7.2, TCG, tinylinux-a): the bulk call answers ``cpu.time``
(ns) and ``block.N.rd.bytes`` / ``wr.bytes`` for the disk and the CD-ROM drive, in 8-16 ms; the
per-call API gives the same figures. Two boots up to the boot marker (20 and 26 s) used 61-75%
of the vCPU and read 4.7-7.1 MB; once up, the guest sat under 5%. The ``test:///default`` driver
answers the bulk call with ``{}`` for its running domain and the per-call API with made-up
figures; a domain that is not running, or is gone, gives None either way.
"""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from compatlab.cost import STARVED, decimal_size

__all__ = ["STARVED", "Activity", "describe", "first_reading", "from_stats", "sample", "starved"]

T = TypeVar("T")

log = logging.getLogger("compatlab.lab")

_STATS = (
    libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_VCPU
)
# STARVED (compatlab.cost): a guest whose vCPUs waited for a host CPU that share of the time or
# more was starved by the host: what it did (or did not do) in that time says nothing about the
# update, and its CPU time is not compared with another bake's.


@dataclass(frozen=True)
class Activity:
    """A domain's cumulative counters at one moment (``taken`` is ``time.monotonic()``).

    The counters start at 0 when the QEMU process starts, so they restart after a power
    cycle; a reboot inside the guest keeps them counting.
    """

    cpu_seconds: float
    disk_read_bytes: int
    disk_write_bytes: int
    taken: float
    # Time the vCPUs were runnable but waited for a host CPU (libvirt's vcpu.N.delay, the
    # host scheduler's run delay), summed; 0 where libvirt does not say.
    vcpu_delay_seconds: float = 0.0
    vcpus: int = 1


def first_reading(domain: Any, readers: Sequence[Callable[[Any, float], T | None]]) -> T | None:
    """The first answer of ``readers`` (the bulk stats call, then the per-call API some drivers
    still answer) for the running ``virDomain``; None where libvirt will not say (domain not
    running, driver without statistics, connection gone). Never raises."""
    for read in readers:
        try:
            answer = read(domain, time.monotonic())
        except libvirt.libvirtError as exc:
            log.debug("domain stats (%s) refused: %s", read.__name__.strip("_"), exc)
            continue
        except Exception:
            log.exception("reading domain stats failed")
            return None
        if answer is not None:
            return answer
    return None


def sample(domain: Any) -> Activity | None:
    """The running ``virDomain``'s CPU time and disk bytes now (see :func:`first_reading`)."""
    return first_reading(domain, (_bulk, _per_call))


def _bulk(domain: Any, taken: float) -> Activity | None:
    records = domain.connect().domainListGetStats([domain], _STATS, 0)
    return from_stats(records[0][1], taken) if records else None


def from_stats(stats: Mapping[str, Any], taken: float) -> Activity | None:
    """An :class:`Activity` from one domain's record of ``virConnectGetAllDomainStats``
    (``cpu.time`` in ns, ``block.N.rd.bytes`` / ``wr.bytes``); None without ``cpu.time``."""
    if "cpu.time" not in stats:
        # An inactive domain has no CPU time; the test:/// driver answers {} for a running one.
        return None
    read = written = 0
    for index in range(int(stats.get("block.count", 0))):
        # An empty CD-ROM drive may be listed without counters.
        read += int(stats.get(f"block.{index}.rd.bytes", 0))
        written += int(stats.get(f"block.{index}.wr.bytes", 0))
    vcpus = int(stats.get("vcpu.current", 1)) or 1
    delay = sum(int(stats.get(f"vcpu.{i}.delay", 0)) for i in range(vcpus)) / 1e9
    return Activity(int(stats["cpu.time"]) / 1e9, read, written, taken, delay, vcpus)


def _per_call(domain: Any, taken: float) -> Activity | None:
    if not domain.isActive():
        return None
    total = domain.getCPUStats(True)
    cpu_ns = int(total[0]["cpu_time"])
    read = written = 0
    desc = ET.fromstring(domain.XMLDesc(0))
    for target in desc.iterfind("./devices/disk/target"):
        dev = target.get("dev")
        if not dev:
            continue
        try:
            # (rd_req, rd_bytes, wr_req, wr_bytes, errs)
            counters = domain.blockStats(dev)
        except libvirt.libvirtError:
            continue  # an empty CD-ROM drive has no statistics
        read += int(counters[1])
        written += int(counters[3])
    return Activity(cpu_ns / 1e9, read, written, taken)


# -- words ------------------------------------------------------------------------------------


def describe(before: Activity, after: Activity) -> str:
    """What the guest did between two samples, in words for a verdict's reason.

    E.g. ``"CPU 41% of one vCPU over the last 30 s, 1.2 MB read, 0 B written"``. Counters
    that went down mean the QEMU process restarted in between, and say so.
    """
    elapsed = after.taken - before.taken
    if elapsed <= 0:
        return "no time passed between the two activity samples"
    cpu = after.cpu_seconds - before.cpu_seconds
    read = after.disk_read_bytes - before.disk_read_bytes
    written = after.disk_write_bytes - before.disk_write_bytes
    if cpu < 0 or read < 0 or written < 0:
        return (
            f"activity counters restarted within the last {_duration(elapsed)} "
            "(the guest was powered off and on)"
        )
    share = 100 * cpu / elapsed
    text = (
        f"CPU {_percent(share)} of one vCPU over the last {_duration(elapsed)}, "
        f"{decimal_size(read)} read, {decimal_size(written)} written"
    )
    waited = after.vcpu_delay_seconds - before.vcpu_delay_seconds
    if waited > 0:
        text += f", {_duration(waited)} waiting for a host CPU"
    return text


def starved(before: Activity, after: Activity) -> bool:
    """The host kept the guest's vCPUs waiting for a CPU at least :data:`STARVED` of the time.

    A hung guest sleeps and waits for nothing; a guest that wanted to run and could not was
    slowed by the lab, and a boot timeout it ran into is the lab's failure, not a hang.
    """
    elapsed = after.taken - before.taken
    waited = after.vcpu_delay_seconds - before.vcpu_delay_seconds
    return elapsed > 0 and waited >= STARVED * elapsed * max(after.vcpus, 1)


def _percent(share: float) -> str:
    if 0 < share < 1:
        return "<1%"  # idle, but not dead: "0%" would claim the vCPU never ran
    return f"{share:.0f}%"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
