"""Sampling what a VM costs while it bakes: libvirt's domain statistics, about once a second.

:func:`read` takes one :class:`~compatlab.cost.Sample` -- CPU time, vCPU wait, disk bytes and
requests, guest and host memory -- in one bulk call, ``virConnectGetAllDomainStats`` for the one
domain (``domainListGetStats`` with ``VIR_DOMAIN_STATS_CPU_TOTAL | BALLOON | BLOCK | VCPU``): one
instant for every counter, no domain XML to parse for disk names. Where a driver refuses it or
answers empty, the per-call API is tried (``virDomainGetCPUStats`` total,
``virDomainMemoryStats``, ``virDomainBlockStats`` per disk of the XML). Never raises: a domain
that is not running, or a libvirt that refuses both, gives None, and the bake goes on unmeasured.

A :class:`Sampler` takes them on a thread of its own, so a slow or stuck statistics call can
never hold up the runner's watching of the hypervisor's events: a crash during a bake is seen
within the event poll, whatever the sampler is doing. :mod:`compatlab.cost` turns the samples
into a window.

Measured here (libvirt 9.0, QEMU 7.2, TCG, tinylinux on bios-1cpu, a 2-core host at load 8):
the bulk call answers ``cpu.time``, ``vcpu.N.delay``, ``block.N.rd.bytes`` / ``rd.reqs`` /
``wr.bytes`` / ``wr.reqs`` for every disk, and ``balloon.rss`` (the QEMU process's resident
memory, KiB), in 59 ms median, 153 ms at the 90th percentile and 2.8 s at worst -- the reason
sampling has its own thread. ``balloon.available`` / ``usable`` / ``unused`` come only from a
balloon device with a statistics period *and* a guest that runs the balloon driver (the
Windows images' virtio-win Balloon driver); the demo's tiny Linux loads no ``virtio_balloon``,
so its ``balloon.last-update`` stays 0 and no guest memory is reported. The ``test:///default``
driver answers the bulk call with ``{}`` and the per-call API with made-up figures: a fixed CPU
time, disk counters that follow the clock, and memory from a domain with a balloon only.
"""

from __future__ import annotations

import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any

import libvirt

from compatlab.cost import Sample
from compatlab.lab.activity import first_reading

__all__ = ["INTERVAL", "STATS", "Sampler", "from_stats", "read"]

log = logging.getLogger("compatlab.lab")

STATS = (
    libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_VCPU
)
INTERVAL = 1.0  # seconds between samples: the guest's balloon driver reports once a second too


def read(domain: Any) -> Sample | None:
    """The running ``virDomain``'s counters now; None where libvirt will not say. Never raises."""
    return first_reading(domain, (_bulk, _per_call))


def _bulk(domain: Any, taken: float) -> Sample | None:
    records = domain.connect().domainListGetStats([domain], STATS, 0)
    return from_stats(records[0][1], taken) if records else None


def from_stats(stats: Mapping[str, Any], taken: float) -> Sample | None:
    """A :class:`Sample` from one domain's record of ``virConnectGetAllDomainStats``; None
    without ``cpu.time`` (an inactive domain; the test driver's ``{}``)."""
    if "cpu.time" not in stats:
        return None
    disks = {"rd.bytes": 0, "wr.bytes": 0, "rd.reqs": 0, "wr.reqs": 0}
    for index in range(int(stats.get("block.count", 0))):
        for key in disks:
            # An empty CD-ROM drive may be listed without counters.
            disks[key] += int(stats.get(f"block.{index}.{key}", 0))
    vcpus = int(stats.get("vcpu.current", 1)) or 1
    delays = [stats.get(f"vcpu.{i}.delay") for i in range(vcpus)]
    delay = None if None in delays else sum(int(d) for d in delays if d is not None)
    return Sample(
        taken=taken,
        cpu_ns=int(stats["cpu.time"]),
        vcpus=vcpus,
        vcpu_delay_ns=delay,
        disk_read_bytes=disks["rd.bytes"],
        disk_write_bytes=disks["wr.bytes"],
        disk_read_ops=disks["rd.reqs"],
        disk_write_ops=disks["wr.reqs"],
        guest_available_kib=_kib(stats, "balloon.available"),
        guest_usable_kib=_kib(stats, "balloon.usable"),
        guest_unused_kib=_kib(stats, "balloon.unused"),
        host_rss_kib=_kib(stats, "balloon.rss"),
    )


def _kib(stats: Mapping[str, Any], key: str) -> int | None:
    value = stats.get(key)
    return None if value is None else int(value)


def _per_call(domain: Any, taken: float) -> Sample | None:
    if not domain.isActive():
        return None
    cpu_ns = int(domain.getCPUStats(True)[0]["cpu_time"])
    disks = [0, 0, 0, 0]  # rd_req, rd_bytes, wr_req, wr_bytes
    for target in ET.fromstring(domain.XMLDesc(0)).iterfind("./devices/disk/target"):
        dev = target.get("dev")
        if not dev:
            continue
        try:
            counters = domain.blockStats(dev)  # (rd_req, rd_bytes, wr_req, wr_bytes, errs)
        except libvirt.libvirtError:
            continue  # an empty CD-ROM drive has no statistics
        for i in range(4):
            disks[i] += int(counters[i])
    try:
        memory: Mapping[str, Any] = domain.memoryStats()
    except libvirt.libvirtError:
        memory = {}
    return Sample(
        taken=taken,
        cpu_ns=cpu_ns,
        disk_read_ops=disks[0],
        disk_read_bytes=disks[1],
        disk_write_ops=disks[2],
        disk_write_bytes=disks[3],
        guest_available_kib=_kib(memory, "available"),
        guest_usable_kib=_kib(memory, "usable"),
        guest_unused_kib=_kib(memory, "unused"),
        host_rss_kib=_kib(memory, "rss"),
    )


class Sampler:
    """Samples taken every ``interval`` seconds on a daemon thread, from :meth:`start` (the
    first at once) to :meth:`stop` (one more then). ``take`` is called on that thread; what it
    raises is logged and counts as no sample, so the thread never dies of it."""

    def __init__(
        self,
        take: Callable[[], Sample | None],
        *,
        interval: float = INTERVAL,
        name: str = "compatlab-cost",
    ) -> None:
        self._take = take
        self._interval = interval
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, timeout: float = 2.0) -> list[Sample]:
        """Stop sampling; the samples so far, oldest first. Waits at most ``timeout`` for the
        last one: a statistics call that hangs is left to its thread, not waited out."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            return list(self._samples)

    def _run(self) -> None:
        while True:
            self._one()
            if self._stop.wait(self._interval):
                self._one()  # the end of the window
                return

    def _one(self) -> None:
        try:
            sample = self._take()
        except Exception as exc:
            log.debug("cost sample failed: %s", exc)
            return
        if sample is not None:
            with self._lock:
                self._samples.append(sample)
