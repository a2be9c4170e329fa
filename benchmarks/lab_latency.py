"""Observation latency: from a libvirt event's arrival in our callback to the runner's record of it.

A domain with no disk (SeaBIOS only, no NIC) is started through :class:`Machine`; a consumer
thread sits in :meth:`DomainWatch.wait` the way a cell's observer does, and the main thread
suspends and resumes the domain, which makes libvirt send SUSPENDED / RESUMED lifecycle events
cheaply. For each event:

- ``handoff``: ``time.monotonic()`` when ``wait()`` returned it in the consumer, minus the
  monotonic stamp the callback took on arrival -- the latency our design adds (target: median
  under 100 ms);
- ``api_to_callback``: arrival minus the moment ``suspend()``/``resume()`` was called -- libvirt
  and QEMU's own share, for context.

Run: ``.venv/bin/python benchmarks/lab_latency.py [--uri qemu:///system] [--cycles 10]``.
Writes ``benchmarks/results/lab_latency.json``. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import libvirt

from compatlab.lab.connection import Hypervisor
from compatlab.lab.machine import Machine
from compatlab.lab.owner import CellMetadata, Controller, render_cell_metadata
from compatlab.model import Event

RESULTS = Path(__file__).parent / "results" / "lab_latency.json"
TARGET_MEDIAN_MS = 100.0


@dataclass(frozen=True)
class Sample:
    kind: str
    called: float  # monotonic, just before the API call
    arrived: float  # monotonic, stamped by the libvirt callback
    received: float  # monotonic, when wait() handed the event to the consumer

    @property
    def handoff_ms(self) -> float:
        return (self.received - self.arrived) * 1000

    @property
    def api_to_callback_ms(self) -> float:
        return (self.arrived - self.called) * 1000


def bench_xml(name: str, domain_type: str) -> str:
    meta = render_cell_metadata(CellMetadata("benchmark", "lab_latency", Controller.current()))
    return f"""<domain type='{domain_type}'>
  <name>{name}</name>
  <metadata>{meta}</metadata>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <on_crash>destroy</on_crash>
  <devices><memballoon model='none'/></devices>
</domain>"""


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = statistics.quantiles(ordered, n=100, method="inclusive")[94] if len(ordered) > 1 else 0
    return {
        "median": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


def measure(uri: str, cycles: int) -> dict[str, object]:
    with Hypervisor(uri) as hv:
        domain_type = hv.accelerator().domain_type
        name = f"compatlab-bench-{uuid.uuid4().hex[:8]}"
        with Machine(hv, bench_xml(name, domain_type)) as machine:
            machine.start()
            if machine.wait({"started"}, timeout=30) is None:
                raise SystemExit("the benchmark domain did not start")
            received: dict[str, tuple[Event, float]] = {}
            got = threading.Condition()

            def consume() -> None:
                while True:
                    event = machine.wait({"suspended", "resumed", "stopped"}, timeout=60)
                    now = time.monotonic()
                    if event is None or event.kind == "stopped":
                        return
                    with got:
                        received[event.kind] = (event, now)
                        got.notify()

            consumer = threading.Thread(target=consume, name="bench-consumer", daemon=True)
            consumer.start()
            samples: list[Sample] = []
            for _ in range(cycles):
                for kind, action in (("suspended", machine.suspend), ("resumed", machine.resume)):
                    with got:
                        received.pop(kind, None)
                    called = time.monotonic()
                    action()
                    with got:
                        if not got.wait_for(partial(received.__contains__, kind), timeout=10):
                            raise SystemExit(f"no {kind} event within 10 s")
                        event, at = received[kind]
                    samples.append(Sample(kind, called, machine.watch.arrival(event), at))
                    time.sleep(0.05)  # let the domain settle between events
            machine.destroy()
            consumer.join(timeout=10)
        return {
            "schema": 1,
            "measured": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "uri": uri,
            "host": hv.host,
            "libvirt": libvirt.getVersion(),
            "python": sys.version.split()[0],
            "domain_type": domain_type,
            "events": len(samples),
            "handoff_ms": stats([s.handoff_ms for s in samples]),
            "api_to_callback_ms": stats([s.api_to_callback_ms for s in samples]),
            "target_median_ms": TARGET_MEDIAN_MS,
            "target_met": statistics.median(s.handoff_ms for s in samples) < TARGET_MEDIAN_MS,
            "what": (
                "handoff = libvirt callback arrival -> DomainWatch.wait() returning it in a "
                "consumer thread; api_to_callback = suspend()/resume() call -> callback arrival"
            ),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--cycles", type=int, default=10, help="suspend+resume pairs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(args.uri, args.cycles)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
