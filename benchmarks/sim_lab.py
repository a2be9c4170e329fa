"""Simulated lab (issue 10, item 6): 5,000 cells on 50 hypervisor hosts, no VMs.

Question: does the engine compatlab stands on (Dask distributed, resource-annotated tasks) keep
a large lab as busy as it can be, and what does it cost per cell? Measured against the lower
bound of the makespan, which no placement can beat:

    bound = max( sum(vCPUs x seconds) / total vCPUs,  sum(MiB x seconds) / total MiB,
                 the longest cell,
                 for each label set S: the same two ratios over the cells needing S and the
                 hosts offering S )

What is real: a ``dask scheduler`` process on 127.0.0.1 (``allowed-failures: 0``, as a lab
runs it), 50 ``distributed.Worker`` objects built with the arguments ``compatlab worker``
gives its Worker (``nthreads`` = vCPUs, ``Capacity.resources()``), and the controller's
``DaskEngine.submit_many`` / ``CellHandle.wait`` -- the calls ``CellQueue`` makes -- with real
:class:`~compatlab.matrix.Cell` objects whose needs come from ``cell_needs``, each with its
expected seconds as the plugin finds them: read by ``compatlab.engine.earlier`` from earlier
runs' results.json written here (:func:`earlier_runs`: the cells' times off by up to 20% in
each of 3 runs, 10% of the cells new). The engine as built does the rest itself: placeability
asked once per distinct needs, Dask ``priority=`` longest expected first, and a window of
1.25 x what fits handed over, the rest held (``compatlab.engine.order``). On the worker the
real ``run_cell_task`` runs (claim lock on the scheduler, lab lookup, staging folder, release
watcher, host health, evidence packing); only ``compatlab.scenario.run_cell`` -- the VM -- is
a stand-in that sleeps the cell's scaled duration and records when it ran, and where.

What is not: the 50 workers share 10 processes (5 workers to an event loop and a GIL) and two
cores with the scheduler and the controller, where a lab gives each worker its own host; so
everything on the workers' side is slower here (the idle-lab probe below shows the engine's
own cost per cell without that contention). Dask's worker upkeep that takes no part in
placement is made rare (:data:`WORKER_ENV`). ``kvm`` is asked through a shim: the engine
derives a cell's needs from its hardware profile alone (``tpm``), and nothing in compatlab can
ask a worker for ``kvm`` yet -- the shim passes it as ``cell_needs(cell, labels=...)`` would,
for the profiles named ``kvm-*``. Every process runs a copy of src/compatlab taken when the
run starts (:func:`frozen`).

Cell durations are drawn (seed :data:`SEED`) from the demo's 12 measured cell times
(``benchmarks/results/demo.json``), then time is scaled: ``--scales 200,1000`` runs the lab
with 1 demo second = 200 ms (a demo cell of 142 s lasts 28 s) and 1000 ms (as long as in the
demo: the scale the target is judged at, see ``scale.why`` in the results). A fixed cost per
cell shows as a ratio that improves with the scale; bad placement shows at every scale. Two
references need no engine and have no overhead, over the same cells and hosts: a central pull
scheduler (:func:`pull_schedule`: a host with room takes the oldest queued cell that fits),
what greedy placement itself can reach; and the engine's policy under Dask's rule for placing
a resource-restricted task (:func:`dask_rule_schedule`), what placement by that rule costs.

Figures per run: makespan (first submit -> last result at the controller) against the bound;
the engine's overhead per cell (``run_cell_task``'s time minus the sleep) and submit -> start
latency, in the full run and on the idle lab (cells one at a time, before the run); the gap
between a finish and the next start on a worker; vCPU utilisation per tenth of the makespan;
cells placed on a worker lacking a label they need and starts that overcommitted a worker
(both from the recorded spans; must be 0); steals; CPU seconds per process.

Run: ``.venv/bin/python benchmarks/sim_lab.py [--scales 200,1000] [--stealing-off]
[--cells N --hosts N]``. Writes ``benchmarks/results/sim_lab.json`` (only for the full
5,000 x 50 lab, unless ``--out``), with the runs of the file it replaces in brief
(``previous_runs``). Measures; asserts nothing. About 45 min on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import heapq
import importlib.metadata as md
import json
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: The compatlab source this run measures: a copy taken when it started (see :func:`frozen`),
#: else the working tree.
SOURCE = Path(os.environ.get("SIM_LAB_SOURCE") or ROOT / "src")
sys.path.insert(0, str(SOURCE))

from compatlab import capacity as capacity_module  # noqa: E402
from compatlab.capacity import Capacity, Needs, cell_needs  # noqa: E402
from compatlab.catalog import GoldenImage, HardwareProfile, Product  # noqa: E402
from compatlab.engine.earlier import earlier_expectations  # noqa: E402
from compatlab.engine.order import WINDOW, cell_key  # noqa: E402
from compatlab.matrix import Cell  # noqa: E402
from compatlab.matrix.model import Candidate, ScenarioSettings  # noqa: E402
from compatlab.model import CellResult, Event, Verdict  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "sim_lab.json"
DEMO = ROOT / "benchmarks" / "results" / "demo.json"
SEED = 10
HOSTS = 50
CELLS = 5000
TARGET_RATIO = 1.10  # makespan within 10% of the bound
TARGET_OVERHEAD_MS = 50.0
IDLE_PROBE = 5.0  # seconds the lab idles before the cells go in, to measure its upkeep
#: The engine's expectations come from this many earlier runs, each cell's time in each off by
#: up to this share either way; this share of the cells is new (in no earlier run).
EARLIER_RUNS = 3
EXPECT_NOISE = 0.2
UNSEEN = 0.1
PROBES = 40  # cells run one at a time on the idle lab first: the engine's own latency
PROBE_SECONDS = 2.0  # demo seconds each
GIB = 1024
#: For the workers' processes: a Dask worker's own upkeep, which a lab host pays on its own
#: cores and does not take part in placement, made rare here, where 50 workers share 2 cores
#: with the engine under test. The statistical profiler samples ``sys._current_frames()`` --
#: every thread of the process, all workers' -- for each worker every 10 ms; the system and
#: memory monitors read /proc with psutil every 0.5 s and 0.1 s per worker, each the same
#: process. Left at their defaults, the 50 workers' upkeep took over a core of the two.
WORKER_ENV = {
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "10s",
    "DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL": "10s",
}


@dataclass(frozen=True)
class Profile:
    """A hardware profile of the simulated matrix, and how often cells use it."""

    name: str
    vcpus: int
    memory_gib: int
    tpm: bool = False
    kvm: bool = False
    weight: int = 1


PROFILES = (
    Profile("bios-1cpu-1g", 1, 1, weight=3),
    Profile("bios-1cpu-2g", 1, 2, weight=3),
    Profile("uefi-2cpu-2g", 2, 2, weight=2),
    Profile("uefi-2cpu-4g", 2, 4, weight=2),
    Profile("uefi-sb-tpm-2cpu-4g", 2, 4, tpm=True, weight=2),
    Profile("kvm-2cpu-4g", 2, 4, kvm=True, weight=1),
    Profile("uefi-4cpu-4g", 4, 4, weight=1),
    Profile("uefi-sb-tpm-4cpu-8g", 4, 8, tpm=True, weight=1),
    Profile("kvm-4cpu-8g", 4, 8, kvm=True, weight=1),
    Profile("kvm-tpm-4cpu-8g", 4, 8, tpm=True, kvm=True, weight=1),
)
PRODUCTS = ("acme-av", "other-edr", "dlp-one", "fw-two", "vpn-three", "backup-four")


@dataclass(frozen=True)
class SimCell:
    cell: Cell
    needs: Needs
    seconds: float  # demo seconds


@dataclass(frozen=True)
class Host:
    name: str
    capacity: Capacity


@dataclass(frozen=True)
class Span:
    """One cell as it ran: where, and when (monotonic seconds, shared by this machine's
    processes). ``vm`` is the stand-in VM's life, ``task`` the whole ``run_cell_task``."""

    index: int
    worker: str
    needs: Needs
    vm_start: float
    vm_stop: float
    task_start: float
    task_stop: float


# -- the simulated lab (pure) ------------------------------------------------------------------


def demo_seconds(path: Path = DEMO) -> list[float]:
    return [float(cell["seconds"]) for cell in json.loads(path.read_text())["per_cell"]]


def make_hosts(rng: random.Random, count: int) -> list[Host]:
    """Heterogeneous hypervisor hosts: 8-32 vCPUs, 32-128 GiB, ``kvm`` on ~60%, ``tpm`` on ~50%
    (the first host has both, so every profile fits somewhere)."""
    hosts = []
    for n in range(count):
        labels = {"kvm", "tpm"} if n == 0 else set()
        if n and rng.random() < 0.6:
            labels.add("kvm")
        if n and rng.random() < 0.5:
            labels.add("tpm")
        capacity = Capacity(
            vcpus=rng.choice((8, 16, 24, 32)),
            memory_mib=rng.choice((32, 64, 96, 128)) * GIB,
            labels=frozenset(labels),
        )
        hosts.append(Host(f"host-{n:02d}", capacity))
    return hosts


def make_cells(
    rng: random.Random, count: int, durations: Sequence[float], *, prefix: str = "build"
) -> list[SimCell]:
    """``count`` distinct cells (build x profile x products), profiles drawn by weight,
    durations drawn from ``durations``."""
    here = Path("/nonexistent/sim")
    candidate = Candidate("candidate", "1.0", here, {})
    products = {
        name: Product(name, name.split("-")[0], {}, here / f"{name}.yaml") for name in PRODUCTS
    }
    combos = [()] + [(p,) for p in PRODUCTS]
    combos += [(a, b) for i, a in enumerate(PRODUCTS) for b in PRODUCTS[i + 1 :]]
    profiles = [
        HardwareProfile(
            name=p.name,
            vcpus=p.vcpus,
            memory_mib=p.memory_gib * GIB,
            firmware="bios" if p.name.startswith("bios") else "uefi",
            secure_boot="-sb-" in p.name,
            tpm=p.tpm,
            disk_bus="virtio",
            machine="q35",
            source=here / f"{p.name}.yaml",
        )
        for p in PROFILES
    ]
    kvm = {p.name for p in PROFILES if p.kvm}
    scenario = ScenarioSettings()
    cells: list[SimCell] = []
    seen: set[str] = set()
    while len(cells) < count:
        build = f"{prefix}-{len(cells) // 100:02d}"
        hardware = rng.choices(profiles, weights=[p.weight for p in PROFILES])[0]
        chosen = tuple(products[name] for name in rng.choice(combos))
        image = GoldenImage(build, "linux", build, build, here / build, frozenset(), "agent", here)
        cell = Cell(here / "sim.yaml", image, hardware, chosen, candidate, scenario)
        if cell.id in seen:
            continue
        seen.add(cell.id)
        needs = cell_needs(cell, labels=("kvm",) if hardware.name in kvm else ())
        cells.append(SimCell(cell, needs, rng.choice(durations)))
    return cells


def lower_bound(work: Sequence[tuple[Needs, float]], hosts: Sequence[Capacity]) -> dict[str, Any]:
    """The makespan no placement can beat (see the module's docstring), and its parts."""

    def ratios(subset: Sequence[tuple[Needs, float]], offer: Sequence[Capacity]) -> list[float]:
        vcpus = sum(n.vcpus * d for n, d in subset) / sum(h.vcpus for h in offer)
        memory = sum(n.memory_mib * d for n, d in subset) / sum(h.memory_mib for h in offer)
        return [vcpus, memory]

    parts: dict[str, float] = {}
    parts["vcpus"], parts["memory"] = ratios(work, hosts)
    parts["longest_cell"] = max(d for _, d in work)
    label_sets = {n.labels for n, _ in work if n.labels}
    label_sets |= {frozenset({label}) for s in label_sets for label in s}
    for wanted in sorted(label_sets, key=sorted):
        subset = [(n, d) for n, d in work if wanted <= n.labels]
        offer = [h for h in hosts if wanted <= h.labels]
        name = "+".join(sorted(wanted))
        if not offer:
            parts[f"label {name}"] = float("inf")
            continue
        parts[f"label {name} vcpus"], parts[f"label {name} memory"] = ratios(subset, offer)
    binding = max(parts, key=lambda k: parts[k])
    return {"bound": parts[binding], "binding": binding, "parts": parts}


def _fits(needs: Needs, free: list[int], offer: Capacity) -> bool:
    return needs.vcpus <= free[0] and needs.memory_mib <= free[1] and needs.labels <= offer.labels


def pull_schedule(work: Sequence[tuple[Needs, float]], hosts: Sequence[Capacity]) -> float:
    """Makespan of a central pull scheduler with no overhead: whenever a host has room it takes
    the oldest queued cell that fits it (backfilling past cells that do not). Placement
    quality alone, for comparison with the engine's."""
    queues: dict[Needs, deque[int]] = defaultdict(deque)
    for index, (needs, _) in enumerate(work):
        queues[needs].append(index)
    free = [[h.vcpus, h.memory_mib] for h in hosts]
    running: list[tuple[float, int, int]] = []  # (finish, host, cell)

    def fill(host: int, now: float) -> None:
        while True:
            heads = [q[0] for n, q in queues.items() if q and _fits(n, free[host], hosts[host])]
            if not heads:
                return
            index = min(heads)
            needs, seconds = work[index]
            queues[needs].popleft()
            free[host][0] -= needs.vcpus
            free[host][1] -= needs.memory_mib
            heapq.heappush(running, (now + seconds, host, index))

    for host in range(len(hosts)):
        fill(host, 0.0)
    makespan = 0.0
    while running:
        makespan, host, index = heapq.heappop(running)
        free[host][0] += work[index][0].vcpus
        free[host][1] += work[index][0].memory_mib
        fill(host, makespan)
    if any(queues.values()):
        raise ValueError("some cells fit no host")
    return makespan


def dask_rule_schedule(
    work: Sequence[tuple[Needs, float]],
    hosts: Sequence[Capacity],
    expected: Sequence[float | None],
    *,
    window: float | None,
) -> float:
    """Makespan of the engine's policy under Dask's rule for resource-restricted tasks, with no
    overhead at all: the controller holds the cells and hands over the longest expected first
    while fewer than ``window`` x what fits (``compatlab.engine.order``; None: all at once);
    each handed cell is placed at once, among the workers whose *total* resources could hold
    it, on the one with the fewest tasks per thread (Dask's ``worker_objective``: occupancy /
    nthreads, one prefix, so one mean duration; ties to the first) -- not where there is room
    now; each worker runs its tasks in priority order and the first that does not fit blocks
    the ones behind it (``WorkerState._next_ready_task``). No work stealing (the windowed runs
    had none). What placement itself costs, apart from the engine's latency."""
    from compatlab.engine.order import in_flight_limit, priority

    free = [[h.vcpus, h.memory_mib] for h in hosts]
    tasks = [0] * len(hosts)
    queues: list[list[tuple[int, int, int]]] = [[] for _ in hosts]
    held = [(-priority(e), i) for i, e in enumerate(expected)]
    heapq.heapify(held)
    limit = len(work)
    if window is not None:
        mean_vcpus = statistics.fmean(n.vcpus for n, _ in work)
        mean_memory = statistics.fmean(n.memory_mib for n, _ in work)
        limit = in_flight_limit([h.resources() for h in hosts], mean_vcpus, mean_memory, window)
    valid = {
        needs: [h for h, o in enumerate(hosts) if _fits(needs, [o.vcpus, o.memory_mib], o)]
        for needs, _ in work
    }
    running: list[tuple[float, int, int]] = []  # (finish, host, cell)
    out = 0

    def start(host: int, now: float) -> None:
        while queues[host]:
            index = queues[host][0][2]
            needs, seconds = work[index]
            if needs.vcpus > free[host][0] or needs.memory_mib > free[host][1]:
                return  # the head does not fit yet: it blocks the rest
            heapq.heappop(queues[host])
            free[host][0] -= needs.vcpus
            free[host][1] -= needs.memory_mib
            heapq.heappush(running, (now + seconds, host, index))

    def hand_over(now: float) -> None:
        nonlocal out
        while held and out < limit:
            rank, index = heapq.heappop(held)
            out += 1
            candidates = valid[work[index][0]]
            if not candidates:
                raise ValueError("some cells fit no host")
            host = min(candidates, key=lambda h: tasks[h] / hosts[h].vcpus)
            tasks[host] += 1
            heapq.heappush(queues[host], (rank, index, index))
            start(host, now)

    hand_over(0.0)
    makespan = 0.0
    while running:
        makespan, host, index = heapq.heappop(running)
        free[host][0] += work[index][0].vcpus
        free[host][1] += work[index][0].memory_mib
        tasks[host] -= 1
        out -= 1
        start(host, makespan)
        hand_over(makespan)
    return makespan


def overcommits(spans: Sequence[Span], hosts: Mapping[str, Capacity]) -> dict[str, Any]:
    """Moments a worker ran more VMs than its vCPUs or memory allow (from the recorded VM
    lives; a stop and a start at the same instant count the stop first), and the peaks."""
    by_worker: dict[str, list[tuple[float, int, Needs]]] = defaultdict(list)
    for span in spans:
        by_worker[span.worker].append((span.vm_start, 1, span.needs))
        by_worker[span.worker].append((span.vm_stop, 0, span.needs))
    count, peak_share = 0, 0.0
    for worker, events in by_worker.items():
        offer = hosts[worker]
        vcpus = memory = 0
        for _, starting, needs in sorted(events, key=lambda e: (e[0], e[1])):
            sign = 1 if starting else -1
            vcpus += sign * needs.vcpus
            memory += sign * needs.memory_mib
            if starting and (vcpus > offer.vcpus or memory > offer.memory_mib):
                count += 1
            peak_share = max(peak_share, vcpus / offer.vcpus)
    return {"overcommitted_starts": count, "peak_vcpu_share": round(peak_share, 3)}


def misplaced(spans: Sequence[Span], hosts: Mapping[str, Capacity]) -> int:
    """Cells that ran on a worker lacking a label they need."""
    return sum(1 for s in spans if not s.needs.labels <= hosts[s.worker].labels)


def stats_ms(values: Sequence[float]) -> dict[str, float]:
    """Seconds in, milliseconds out: n, mean, p50, p95, max."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {
        "n": len(ordered),
        "mean": round(1000 * statistics.fmean(ordered), 2),
        "p50": round(1000 * at(0.5), 2),
        "p95": round(1000 * at(0.95), 2),
        "max": round(1000 * ordered[-1], 2),
    }


def refill_gaps(spans: Sequence[Span]) -> list[float]:
    """For each cell that started on a worker after an earlier cell there had finished: the
    time since that worker's latest finish. Mostly the worker's own hand-off from a finished
    task to the next queued one; large where the worker had nothing queued that fit."""
    gaps = []
    by_worker: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        by_worker[span.worker].append(span)
    for runs in by_worker.values():
        stops = sorted(s.task_stop for s in runs)
        for span in runs:
            before = [t for t in stops if t <= span.task_start]
            if before:
                gaps.append(span.task_start - before[-1])
    return gaps


def by_host_size(
    spans: Sequence[Span], hosts: Sequence[Host], t0: float, end: float
) -> dict[str, float]:
    """Share of the vCPUs busy over the makespan, per host size (all labels together): where
    memory runs out before vCPUs, a host cannot reach 1."""
    busy: dict[str, float] = defaultdict(float)
    offered: dict[str, float] = defaultdict(float)
    size = {h.name: f"{h.capacity.vcpus} vCPUs/{h.capacity.memory_mib // GIB} GiB" for h in hosts}
    for host in hosts:
        offered[size[host.name]] += host.capacity.vcpus * (end - t0)
    for span in spans:
        busy[size[span.worker]] += (span.vm_stop - span.vm_start) * span.needs.vcpus
    return {k: round(busy[k] / offered[k], 3) for k in sorted(offered, key=_size_order)}


def _size_order(size: str) -> tuple[int, int]:
    vcpus, memory = size.split("/")
    return (int(vcpus.split()[0]), int(memory.split()[0]))


def utilisation(spans: Sequence[Span], total_vcpus: int, t0: float, end: float) -> list[float]:
    """Share of the lab's vCPUs busy in each tenth of the makespan."""
    width = (end - t0) / 10
    busy = [0.0] * 10
    for span in spans:
        for b in range(10):
            lo, hi = t0 + b * width, t0 + (b + 1) * width
            overlap = min(hi, span.vm_stop) - max(lo, span.vm_start)
            if overlap > 0:
                busy[b] += overlap * span.needs.vcpus
    return [round(x / (total_vcpus * width), 3) for x in busy]


# -- the workers' process ------------------------------------------------------------------------


def _vm_stand_in(seconds: Mapping[str, float], scale: float, cell: Cell, lab: Any) -> CellResult:
    """Stands in for ``compatlab.scenario.run_cell``: the VM's life is a sleep."""
    from compatlab.engine import task

    name = getattr(task, "worker_name", None) or task._worker_name  # type: ignore[attr-defined]
    start = time.monotonic()
    time.sleep(seconds[cell.id] * scale)
    stop = time.monotonic()
    return CellResult(
        id=cell.id,
        build=cell.build,
        hardware=cell.hardware.name,
        products=cell.product_names,
        verdict=Verdict.PASS,
        seconds=stop - start,
        matrix=str(cell.matrix),
        events=[Event(0.0, "sim", "vm", name(), {"start": repr(start), "stop": repr(stop)})],
    )


def _timed(real: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(real)
    def run_cell_task(task: Any) -> Any:
        start = time.monotonic()
        outcome = real(task)
        stop = time.monotonic()
        if outcome.result is not None:
            span = {"start": repr(start), "stop": repr(stop)}
            outcome.result.events.append(Event(0.0, "sim", "task", outcome.worker, span))
        return outcome

    return run_cell_task


def serve_workers(scheduler: str, plan_file: Path, part: int, parts: int) -> None:
    """Hosts ``part``, ``part + parts``, ... of the plan as Dask workers in this process, until
    it is told to stop."""
    import compatlab.scenario
    from compatlab.engine import task
    from compatlab.scenario import LabContext

    plan = json.loads(plan_file.read_text())
    scratch = Path(plan["scratch"]) / f"part-{part}"
    lab = LabContext(
        hypervisor=None,  # type: ignore[arg-type]  # never touched: run_cell is the stand-in
        accel="sim",
        run_id=plan["run_id"],
        storage_root=scratch,
        template_dir=scratch,
        report_dir=scratch,
        iso_cache=scratch,
        controller=None,  # type: ignore[arg-type]
    )
    task.set_lab_factory(lambda run_id: lab)  # as compatlab worker does
    compatlab.scenario.run_cell = functools.partial(  # type: ignore[assignment]
        _vm_stand_in, plan["seconds"], plan["scale"]
    )
    task.run_cell_task = _timed(task.run_cell_task)  # type: ignore[assignment]

    async def main() -> None:
        from distributed import Worker

        workers = []
        for name, offer in list(plan["hosts"].items())[part::parts]:
            capacity = Capacity(offer["vcpus"], offer["memory_mib"], frozenset(offer["labels"]))
            workers.append(
                Worker(  # the arguments compatlab.engine.worker.serve gives its Worker
                    scheduler,
                    nthreads=capacity.vcpus,
                    resources=capacity.resources(),
                    host="127.0.0.1",
                    name=name,
                    dashboard_address="127.0.0.1:0",
                    local_directory=str(scratch / name / "dask"),
                )
            )
        await asyncio.gather(*workers)
        print("ready", flush=True)
        await asyncio.gather(*(w.finished() for w in workers))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


# -- the controller -----------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(procs: Sequence[subprocess.Popen[str]]) -> None:
    """SIGTERM (nothing of theirs outlives them but the scratch folder, removed after), then
    SIGKILL what is left after 10 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def lab_processes(
    folder: Path, plan: dict[str, Any], *, stealing: bool, parts: int
) -> Iterator[tuple[str, list[subprocess.Popen[str]]]]:
    """A ``dask scheduler`` (told never to rerun a task) and ``parts`` workers' processes;
    the scheduler's process first."""
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    if not stealing:
        env["DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING"] = "False"
    address_file = folder / "scheduler.json"
    scheduler = subprocess.Popen(
        [
            *(sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"),
            *("--port", "0", "--dashboard-address", "127.0.0.1:0", "--no-show"),
            *("--scheduler-file", str(address_file)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(folder / "scheduler.log").open("w"),
        text=True,
    )
    workers: list[subprocess.Popen[str]] = []
    try:
        deadline = time.monotonic() + 60
        while not address_file.exists() or not address_file.read_text().strip():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the scheduler did not start; see scheduler.log")
            time.sleep(0.1)
        address = str(json.loads(address_file.read_text())["address"])
        plan_file = folder / "plan.json"
        plan_file.write_text(json.dumps({**plan, "scratch": str(folder)}))
        for part in range(parts):
            command = [sys.executable, __file__, "--serve-workers", address]
            command += ["--plan", str(plan_file), "--part", f"{part}/{parts}"]
            workers.append(
                subprocess.Popen(
                    command,
                    env={**os.environ, "PYTHONPATH": f"{SOURCE}:{ROOT}", **WORKER_ENV},
                    stdout=subprocess.PIPE,
                    stderr=(folder / f"workers-{part}.log").open("w"),
                    text=True,
                )
            )
        for proc in workers:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"workers did not start; see {folder}/workers-*.log")
        yield address, [scheduler, *workers]
    finally:
        _stop([*workers, scheduler])


@contextlib.contextmanager
def kvm_from_the_lab(kvm_profiles: frozenset[str]) -> Iterator[None]:
    """The engine asks ``cell_needs(cell)``: add ``kvm`` for the profiles that need it, as a
    lab configuration would if compatlab had one (see the module's docstring)."""
    from compatlab.engine import cluster

    def needs(cell: Cell, *, labels: Sequence[str] = ()) -> Needs:
        extra = ("kvm",) if cell.hardware.name in kvm_profiles else ()
        return capacity_module.cell_needs(cell, labels=(*labels, *extra))

    cluster.cell_needs = needs  # type: ignore[assignment]
    try:
        yield
    finally:
        cluster.cell_needs = capacity_module.cell_needs


def _stealing_metrics(dask_scheduler: Any) -> dict[str, Any]:
    stealing = dask_scheduler.extensions.get("stealing")
    if stealing is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "requests": int(sum(stealing.metrics["request_count_total"].values())),
    }


@dataclass(frozen=True)
class Variant:
    """One run of the lab: the engine as built, at one time scale; ``stealing=False`` is a
    what-if with Dask's work stealing off."""

    scale: float  # seconds per demo second
    stealing: bool = True

    @property
    def name(self) -> str:
        what = [f"{self.scale * 1000:g} ms per demo second"]
        what += [] if self.stealing else ["work stealing off"]
        return ", ".join(what)


def earlier_runs(
    folder: Path, cells: Sequence[SimCell], rng: random.Random
) -> tuple[Path, dict[str, Any]]:
    """Earlier runs' results.json, as the plugin finds them beside a run's folder: each cell's
    time in each is its time here x a factor drawn in 1 +- :data:`EXPECT_NOISE`; a share
    :data:`UNSEEN` of the cells is new (in no earlier run). The folder of runs, and what the
    expectations are."""
    reports = folder / "reports"
    seen = [c for c in cells if rng.random() >= UNSEEN]
    for n in range(EARLIER_RUNS):
        results = [
            CellResult(
                id=c.cell.id,
                build=c.cell.build,
                hardware=c.cell.hardware.name,
                products=c.cell.product_names,
                verdict=Verdict.PASS,
                seconds=c.seconds * rng.uniform(1 - EXPECT_NOISE, 1 + EXPECT_NOISE),
                matrix=str(c.cell.matrix),
            )
            for c in seen
        ]
        run = reports / f"earlier-{n}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(
            json.dumps({"schema": 1, "cells": [r.as_json() for r in results]})
        )
    return reports, {
        "what": f"the median of each cell's time in {EARLIER_RUNS} earlier runs' results.json "
        f"(compatlab.engine.earlier, as the plugin reads them), each time the cell's own x a "
        f"factor drawn in 1 +- {EXPECT_NOISE:g}; {UNSEEN:.0%} of the cells in no earlier run, "
        "expected from similar cells (compatlab.engine.order)",
        "cells_in_earlier_runs": len(seen),
    }


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def expectation_quality(cells: Sequence[SimCell], expected: Sequence[float | None]) -> Any:
    """How well the expectations order the cells: rank correlation with the true times, and
    the mean error as a share of the true time."""
    pairs = [(e, c.seconds) for e, c in zip(expected, cells, strict=True) if e is not None]
    if len(pairs) < 2:
        return {"cells_with_an_expectation": len(pairs)}
    guess, true = [e for e, _ in pairs], [t for _, t in pairs]
    return {
        "cells_with_an_expectation": len(pairs),
        "rank_correlation_with_true_times": round(
            statistics.correlation(_ranks(guess), _ranks(true)), 3
        ),
        "mean_error_share": round(statistics.fmean(abs(e - t) / t for e, t in pairs), 3),
    }


def _progress(arrived: list[float], submitted: list[float]) -> threading.Event:
    """Every 15 s until the returned event is set, one line on stderr: how many cells were
    submitted, and how many came back."""
    done = threading.Event()

    def say() -> None:
        while not done.wait(15):
            sent, back = sum(1 for t in submitted if t), sum(1 for t in arrived if t)
            print(f"  {sent} submitted, {back} back", file=sys.stderr, flush=True)

    threading.Thread(target=say, daemon=True).start()
    return done


def _span(index: int, sim: SimCell, result: CellResult) -> Span | None:
    """The cell as it ran, from the stand-ins' marks; None if it never ran."""
    marks = {e.kind: e for e in result.events if e.source == "sim"}
    if "vm" not in marks or "task" not in marks:
        return None
    vm, task = marks["vm"], marks["task"]
    return Span(
        index,
        vm.detail,
        sim.needs,
        float(vm.data["start"]),
        float(vm.data["stop"]),
        float(task.data["start"]),
        float(task.data["stop"]),
    )


def _plan(
    run_id: str, scale: float, cells: Sequence[SimCell], hosts: Sequence[Host]
) -> dict[str, Any]:
    """What the workers' processes are told: the hosts, and each cell's seconds."""
    return {
        "run_id": run_id,
        "scale": scale,
        "seconds": {c.cell.id: c.seconds for c in cells},
        "hosts": {
            h.name: {
                "vcpus": h.capacity.vcpus,
                "memory_mib": h.capacity.memory_mib,
                "labels": sorted(h.capacity.labels),
            }
            for h in hosts
        },
    }


def dedicated_worker_probe(probes: Sequence[SimCell], scale: float) -> dict[str, Any]:
    """The idle-lab probe on a lab of one worker with a process of its own, as a lab host runs
    it: the engine's own cost per cell, without 50 workers sharing two cores."""
    from compatlab.engine import DaskEngine

    host = Host("solo", Capacity(8, 32 * GIB, frozenset({"kvm", "tpm"})))
    kvm = frozenset(c.cell.hardware.name for c in probes if "kvm" in c.needs.labels)
    with (
        tempfile.TemporaryDirectory(prefix="sim-lab-") as scratch,
        lab_processes(
            Path(scratch), _plan("sim-solo", scale, probes, [host]), stealing=True, parts=1
        ) as (address, _),
        kvm_from_the_lab(kvm),
    ):
        engine = DaskEngine(
            run_id="sim-solo",
            report_dir=Path(scratch) / "report",
            scheduler=address,
            capacity=Capacity(1, 1),
            attempts=1,
            stop=threading.Event(),
        )
        engine.start()
        try:
            engine.why_not(probes[0].needs)  # connections made before the clock runs
            figures = idle_lab_probe(engine, probes, scale)
        finally:
            engine.close()
    return {
        "what": "the probe cells one at a time on a scheduler and ONE worker (8 vCPUs, its own "
        "process), as a lab host runs it; same code path as the full runs",
        "ms_per_demo_second": round(scale * 1000, 1),
        **figures,
    }


def idle_lab_probe(engine: Any, probes: Sequence[SimCell], scale: float) -> dict[str, Any]:
    """Cells submitted one at a time to the idle lab, each waited for: the engine's own
    latency and cost per cell, without the queueing and CPU contention of the full run."""
    to_start, in_task, before, back, failed = [], [], [], [], []
    for index, sim in enumerate(probes):
        submitted = time.monotonic()
        result = engine.submit(sim.cell).wait(poll=0.05)
        returned = time.monotonic()
        span = _span(index, sim, result)
        if span is None:
            failed.append(f"{sim.cell.id}: {result.reason}")
            continue
        to_start.append(span.task_start - submitted)
        in_task.append(span.task_stop - span.task_start - sim.seconds * scale)
        before.append(span.vm_start - span.task_start)
        back.append(returned - span.task_stop)
    return {
        "cells": len(probes),
        "submit_to_start_ms": stats_ms(to_start),
        "in_task_overhead_ms": stats_ms(in_task),
        "before_the_vm_ms": stats_ms(before),
        "result_to_controller_ms": stats_ms(back),
        "failed": failed,
    }


def run_lab(
    cells: Sequence[SimCell],
    hosts: Sequence[Host],
    variant: Variant,
    *,
    parts: int,
    expected: Sequence[float | None],
    probes: Sequence[SimCell] = (),
) -> tuple[list[Span], dict[str, Any]]:
    """Run every cell on a fresh scheduler and workers, as ``CellQueue`` submits them (each with
    its expected seconds): the spans and the run's own figures."""
    from compatlab.engine import DaskEngine

    run_id = f"sim-{round(variant.scale * 1000)}ms"
    plan = _plan(run_id, variant.scale, [*cells, *probes], hosts)
    kvm = frozenset(c.cell.hardware.name for c in cells if "kvm" in c.needs.labels)
    with (
        tempfile.TemporaryDirectory(prefix="sim-lab-") as scratch,
        lab_processes(Path(scratch), plan, stealing=variant.stealing, parts=parts) as (
            address,
            procs,
        ),
        kvm_from_the_lab(kvm),
    ):
        engine = DaskEngine(
            run_id=run_id,
            report_dir=Path(scratch) / "report",
            scheduler=address,
            capacity=Capacity(1, 1),  # a lab's engine asks its workers
            attempts=1,
            stop=threading.Event(),
        )
        engine.start()
        probe = []  # what one DaskEngine.submit spends asking which workers could hold it
        for sim in cells[:50]:
            began = time.monotonic()
            engine.why_not(sim.needs)
            probe.append(time.monotonic() - began)
        idle_before, idle_at = [_cpu_seconds(p.pid) for p in procs], time.monotonic()
        time.sleep(IDLE_PROBE)  # the workers' and scheduler's upkeep with nothing to run
        idle = [_cpu_seconds(p.pid) - b for p, b in zip(procs, idle_before, strict=True)]
        idle_cores = [x / (time.monotonic() - idle_at) for x in (idle[0], sum(idle[1:]))]
        idle_lab = idle_lab_probe(engine, probes, variant.scale)
        cpu_before = [_cpu_seconds(p.pid) for p in procs]
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        arrived = [0.0] * len(cells)
        submitted = [0.0] * len(cells)
        position = {c.cell.id: i for i, c in enumerate(cells)}
        out = [0]
        reporter = _progress(arrived, submitted)
        send = engine._send

        def back(_future: Any, index: int) -> None:
            arrived[index] = time.monotonic()

        def handed(handle: Any) -> None:  # the engine hands a cell to Dask: when, how many out
            at = time.monotonic()
            send(handle)
            out[0] = max(out[0], engine._window.out)
            n = position.get(handle.cell.id)
            if n is not None:
                submitted[n] = at
                handle.future.add_done_callback(functools.partial(back, index=n))

        engine._send = handed  # type: ignore[method-assign]
        t0 = time.monotonic()
        handles = engine.submit_many(
            (sim.cell, 1, e) for sim, e in zip(cells, expected, strict=True)
        )
        submit_loop = time.monotonic() - t0
        results = [handle.wait() for handle in handles]
        deadline = time.monotonic() + 10  # the last done-callbacks, on Dask's callback thread
        while any(s and not a for s, a in zip(submitted, arrived, strict=True)):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        reporter.set()
        end = max(arrived)
        steals = engine._client.run_on_scheduler(_stealing_metrics)
        own_after = resource.getrusage(resource.RUSAGE_SELF)
        used = [_cpu_seconds(p.pid) - before for p, before in zip(procs, cpu_before, strict=True)]
        own = own_after.ru_utime + own_after.ru_stime - own_before.ru_utime - own_before.ru_stime
        cpu = {
            "scheduler": round(used[0], 1),
            "workers_processes": round(sum(used[1:]), 1),
            "controller": round(own, 1),
            "upkeep_cores_when_idle": {
                "scheduler": round(idle_cores[0], 3),
                "workers_processes": round(idle_cores[1], 3),
            },
            "workers_ms_per_cell_beyond_upkeep": round(
                1000 * (sum(used[1:]) - idle_cores[1] * (end - t0)) / len(cells), 1
            ),
            "scheduler_ms_per_cell_beyond_upkeep": round(
                1000 * (used[0] - idle_cores[0] * (end - t0)) / len(cells), 1
            ),
            "controller_ms_per_cell": round(1000 * own / len(cells), 1),
            "share_of_the_machine": round(
                (sum(used) + own) / ((end - t0) * (os.cpu_count() or 1)), 3
            ),
        }
        engine.close()
    spans, refused = [], []
    for index, (sim, result) in enumerate(zip(cells, results, strict=True)):
        span = _span(index, sim, result)
        if span is None:  # never ran: the engine said why
            refused.append(f"{sim.cell.id}: {result.verdict.value}: {result.reason}")
        else:
            spans.append(span)
    return spans, {
        "t0": t0,
        "end": end,
        "submitted": submitted,
        "arrived": arrived,
        "submit_loop_s": round(submit_loop, 2),
        "why_not_ms": stats_ms(probe),
        "idle_lab": idle_lab,
        "refused": refused,
        "stealing": steals,
        "cpu_seconds": cpu,
        "out_at_most": out[0],
        "attempts_beyond_one": sum(r.attempts - 1 for r in results),
        "window_limit": engine._window.limit,
    }


def figures(
    cells: Sequence[SimCell],
    hosts: Sequence[Host],
    scale: float,
    spans: Sequence[Span],
    run: dict[str, Any],
) -> dict[str, Any]:
    """The run's figures; its bound is over the cells that ran (see ``cells_refused``)."""
    offers = {h.name: h.capacity for h in hosts}
    t0, end = run["t0"], run["end"]
    makespan = end - t0
    ran = [(cells[s.index].needs, cells[s.index].seconds) for s in spans]
    bound_s = lower_bound(ran, list(offers.values()))["bound"] * scale
    first_stop = min(s.vm_stop for s in spans)
    slept = [cells[s.index].seconds * scale for s in spans]
    in_task = [(s.task_stop - s.task_start) - d for s, d in zip(spans, slept, strict=True)]
    wrapper = [(s.vm_start - s.task_start) + (s.task_stop - s.vm_stop) for s in spans]
    to_start = [s.task_start - run["submitted"][s.index] for s in spans]
    first_wave = [
        s.task_start - run["submitted"][s.index] for s in spans if s.task_start < first_stop
    ]
    back = [run["arrived"][s.index] - s.task_stop for s in spans]
    total_vcpus = sum(h.capacity.vcpus for h in hosts)
    return {
        "ms_per_demo_second": round(scale * 1000, 1),
        "makespan_s": round(makespan, 2),
        "bound_s": round(bound_s, 2),
        "ratio": round(makespan / bound_s, 4),
        "makespan_first_start_to_last_stop_s": round(
            max(s.vm_stop for s in spans) - min(s.vm_start for s in spans), 2
        ),
        "last_start_to_end_s": round(end - max(s.vm_start for s in spans), 2),
        "submit_loop_s": run["submit_loop_s"],
        "cells_submitted_and_not_back_at_most": run["out_at_most"],
        "window_limit_at_the_end": run["window_limit"],
        "why_not_per_submit_ms": run["why_not_ms"],
        "idle_lab_probe": run["idle_lab"],
        "overhead_per_cell_ms": {
            "in_task": stats_ms(in_task),
            "what": "run_cell_task's time minus the cell's sleep: claim lock on the "
            "scheduler, lab lookup, staging folder, release watcher, evidence, and the "
            "sleep's own lateness",
            "run_cell_task_around_the_vm": stats_ms(wrapper),
            "before_the_vm": stats_ms([s.vm_start - s.task_start for s in spans]),
            "after_the_vm": stats_ms([s.task_stop - s.vm_stop for s in spans]),
        },
        "submit_to_start_ms": {
            "all": stats_ms(to_start),
            "first_wave": stats_ms(first_wave),
            "what": "submit -> run_cell_task starts; 'all' is mostly waiting for room (the "
            "lab holds ~1/10 of the cells at once); 'first_wave' = cells that started before "
            "any cell finished, i.e. the engine's own latency plus the submit loop's pace",
        },
        "refill_gap_ms": stats_ms(refill_gaps(spans)),
        "result_to_controller_ms": stats_ms(back),
        "vcpu_utilisation_by_tenth": utilisation(spans, total_vcpus, t0, end),
        "vcpu_utilisation_by_host_size": by_host_size(spans, hosts, t0, end),
        "cells_ran": len(spans),
        "attempts_beyond_one": run["attempts_beyond_one"],
        "cells_refused": len(run["refused"]),
        "cells_refused_reasons": sorted({r.split(": ", 1)[1] for r in run["refused"]})[:5],
        "cells_on_a_worker_lacking_a_label": misplaced(spans, offers),
        **overcommits(spans, offers),
        "stealing": run["stealing"],
        "cpu_seconds": run["cpu_seconds"],
    }


def source_tree() -> dict[str, Any]:
    """What was measured: the commit, and the engine's files as they were (other sessions
    change the working tree while this runs)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    engine = sorted((SOURCE / "compatlab" / "engine").glob("*.py"))
    engine.append(SOURCE / "compatlab" / "capacity.py")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "src_files_uncommitted": len(git("status", "--porcelain", "--", "src").splitlines()),
        "measured": "a copy of src/compatlab taken when the run started, used by every process",
        "engine_sha1": {
            str(f.relative_to(SOURCE)): hashlib.sha1(f.read_bytes()).hexdigest()[:12]
            for f in engine
        },
    }


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split()
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1),
        "platform": platform.platform(),
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default="200,1000", help="ms per demo second, comma list")
    parser.add_argument(
        "--stealing-off", action="store_true", help="and a what-if with work stealing off"
    )
    parser.add_argument("--cells", type=int, default=CELLS)
    parser.add_argument("--hosts", type=int, default=HOSTS)
    parser.add_argument("--worker-processes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--targets-only",
        action="store_true",
        help="only judge the targets again from an existing results file (no measuring)",
    )
    parser.add_argument(
        "--references-only",
        action="store_true",
        help="only compute the references that need no engine again, into an existing results "
        "file, and judge the targets (no measuring)",
    )
    parser.add_argument(
        "--probe-only",
        action="store_true",
        help="only the dedicated-worker probe, merged into an existing results file",
    )
    parser.add_argument("--serve-workers", help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--part", default="0/1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_workers:
        part, parts = (int(n) for n in args.part.split("/"))
        serve_workers(args.serve_workers, args.plan, part, parts)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # children stopped on the way out

    probes = make_cells(random.Random(SEED + 1), PROBES, [PROBE_SECONDS], prefix="probe")
    scale = max(float(s) for s in args.scales.split(",") if s) / 1000
    if args.targets_only or args.references_only:
        out = args.out or RESULTS
        doc = json.loads(out.read_text())
        if args.references_only:
            plan_lab(doc, args.hosts, args.cells, args.worker_processes)
        doc["targets"] = targets(doc)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc["targets"], indent=2))
        return
    if args.probe_only:
        out = args.out or RESULTS
        doc = json.loads(out.read_text())
        doc["dedicated_worker_probe"] = dedicated_worker_probe(probes, scale)
        doc["dedicated_worker_probe"]["measured"] = datetime.now(UTC).isoformat(timespec="seconds")
        doc["dedicated_worker_probe"]["source"] = source_tree()
        doc["targets"] = targets(doc)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc["targets"], indent=2))
        return

    started = time.monotonic()
    doc: dict[str, Any] = {
        "schema": 1,
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": machine(),
        "versions": {p: md.version(p) for p in ("dask", "distributed", "tornado", "compatlab")},
        "source": source_tree(),
    }
    hosts, cells, expected = plan_lab(doc, args.hosts, args.cells, args.worker_processes)
    doc["dedicated_worker_probe"] = dedicated_worker_probe(probes, scale)
    doc["scale"] = {
        "ms_per_demo_second": [float(s) for s in args.scales.split(",") if s],
        "judged_at": max(float(s) for s in args.scales.split(",") if s),
        "why": "the demo's cells last 89-252 s; at 1000 ms per demo second they last as long "
        "here, so the engine's fixed costs per cell (claim, hand-over, result's way back, "
        "the first wave's submission) weigh what they would in a lab, and the 2 cores shared "
        "by 50 workers, the scheduler and the controller see 1/5 of the cells per second they "
        "see at 200 ms. The shorter scale is kept to compare with the figures before this "
        "engine (previous_runs) and to show how fixed costs grow as cells shrink",
    }
    variants = [Variant(float(s) / 1000) for s in args.scales.split(",") if s]
    if args.stealing_off:
        variants += [Variant(max(v.scale for v in variants), stealing=False)]
    runs = []
    for variant in variants:
        print(f"sim_lab: {len(cells)} cells, {variant.name}", flush=True)
        spans, run = run_lab(
            cells, hosts, variant, parts=args.worker_processes, expected=expected, probes=probes
        )
        figure = {"variant": variant.name, "engine_as_built": variant.stealing}
        figure |= figures(cells, hosts, variant.scale, spans, run)
        print(json.dumps({k: figure[k] for k in ("makespan_s", "bound_s", "ratio")}), flush=True)
        runs.append(figure)
    doc["runs"] = runs
    doc["previous_runs"] = previous_runs(args.out or RESULTS)
    doc["targets"] = targets(doc)
    doc["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["seconds"] = round(time.monotonic() - started, 1)
    out = args.out or (RESULTS if (args.cells, args.hosts) == (CELLS, HOSTS) else None)
    if out is not None:
        out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["targets"], indent=2))


def plan_lab(
    doc: dict[str, Any], host_count: int, cell_count: int, parts: int
) -> tuple[list[Host], list[SimCell], list[float | None]]:
    """The lab, its cells and their expectations (all from seeds), with what needs no engine
    put in ``doc``: the lab, the bound, and the two references."""
    rng = random.Random(SEED)
    durations = demo_seconds()
    hosts = make_hosts(rng, host_count)
    cells = make_cells(rng, cell_count, durations)
    work = [(c.needs, c.seconds) for c in cells]
    offers = [h.capacity for h in hosts]
    bound = lower_bound(work, offers)
    doc["lab"] = {
        "what": f"{len(hosts)} distributed.Worker objects in {parts} processes "
        "(several workers share an event loop and a GIL), a dask scheduler process, the "
        "controller's DaskEngine in this process; all on 127.0.0.1 of this 2-core machine",
        "hosts": len(hosts),
        "vcpus": sum(h.vcpus for h in offers),
        "memory_gib": round(sum(h.memory_mib for h in offers) / GIB),
        "host_sizes": sorted({f"{h.vcpus} vCPUs/{h.memory_mib // GIB} GiB" for h in offers}),
        "hosts_with": {
            label: sum(1 for h in offers if label in h.labels) for label in ("kvm", "tpm")
        },
        "cells": len(cells),
        "profiles": {
            p.name: sum(1 for c in cells if c.cell.hardware.name == p.name) for p in PROFILES
        },
        "durations": f"drawn (seed {SEED}) from the {len(durations)} cell times of "
        f"benchmarks/results/demo.json, {min(durations):.0f}-{max(durations):.0f} s",
        "demo_seconds_total": round(sum(d for _, d in work)),
        "seed": SEED,
    }
    doc["bound_demo_seconds"] = {
        "bound": round(bound["bound"], 1),
        "binding": bound["binding"],
        "parts": {k: round(v, 1) for k, v in bound["parts"].items()},
    }
    fifo = pull_schedule(work, offers)
    longest = pull_schedule(sorted(work, key=lambda w: -w[1]), offers)
    doc["pull_schedule_reference"] = {
        "what": "no engine, no overhead: a central scheduler where a host with room takes the "
        "oldest queued cell that fits it (backfilling); pure simulation, same cells and hosts",
        "in_submission_order": {
            "makespan_demo_seconds": round(fifo, 1),
            "ratio": round(fifo / bound["bound"], 4),
        },
        "longest_first": {
            "makespan_demo_seconds": round(longest, 1),
            "ratio": round(longest / bound["bound"], 4),
        },
    }
    with tempfile.TemporaryDirectory(prefix="sim-lab-earlier-") as folder:
        reports, doc["expectations"] = earlier_runs(Path(folder), cells, random.Random(SEED + 2))
        known = earlier_expectations([c.cell for c in cells], reports)
    expected = [known.get(cell_key(c.cell)) for c in cells]
    doc["expectations"] |= expectation_quality(cells, expected)
    doc["dask_rule_reference"] = {
        "what": "no engine, no overhead: the engine's policy (longest expected first, at most "
        f"{WINDOW:g} x what fits handed over) under Dask's rule for placing a resource-"
        "restricted task (see dask_rule_schedule); pure simulation, same cells, hosts and "
        "expectations. What placement by that rule costs, apart from any latency",
        "ratio_engine_policy": round(
            dask_rule_schedule(work, offers, expected, window=WINDOW) / bound["bound"], 4
        ),
        "ratio_all_at_once_in_item_order": round(
            dask_rule_schedule(work, offers, [None] * len(work), window=None) / bound["bound"], 4
        ),
    }
    doc["dask_rule_reference"]["other_labs"] = other_labs(host_count, cell_count)
    return hosts, cells, expected


def other_labs(host_count: int, cell_count: int, count: int = 8) -> dict[str, Any]:
    """The two references on other labs drawn the same way (seeds ``SEED + 100`` on, true
    times as expectations): how typical this lab is."""
    rule, pull = [], []
    for seed in range(SEED + 100, SEED + 100 + count):
        rng = random.Random(seed)
        hosts = [h.capacity for h in make_hosts(rng, host_count)]
        work = [(c.needs, c.seconds) for c in make_cells(rng, cell_count, demo_seconds())]
        bound = lower_bound(work, hosts)["bound"]
        seconds = [d for _, d in work]
        rule.append(dask_rule_schedule(work, hosts, seconds, window=WINDOW) / bound)
        pull.append(pull_schedule(sorted(work, key=lambda w: -w[1]), hosts) / bound)
    return {
        "what": f"{count} other labs drawn like this one (seeds {SEED + 100}-"
        f"{SEED + 99 + count}), the cells' true times as their expectations",
        "ratio_engine_policy": [round(r, 4) for r in rule],
        "ratio_pull_longest_first": [round(r, 4) for r in pull],
        "mean_engine_policy": round(statistics.fmean(rule), 4),
        "mean_pull_longest_first": round(statistics.fmean(pull), 4),
    }


def previous_runs(path: Path) -> list[dict[str, Any]]:
    """The runs of the results file this one replaces, in brief: what the engine measured
    before (its source named by commit)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    brief = []
    for run in old.get("runs", []):
        brief.append(
            {
                "variant": run.get("variant"),
                "engine": "as built then"
                if run.get("engine_as_is", run.get("engine_as_built"))
                else "what-if applied from outside",
                "ratio": run.get("ratio"),
                "makespan_s": run.get("makespan_s"),
                "submit_loop_s": run.get("submit_loop_s"),
                "measured": old.get("measured"),
                "commit": old.get("source", {}).get("commit"),
            }
        )
    if not brief:
        return []
    older = [r for r in old.get("previous_runs", []) if r.get("commit") != brief[0]["commit"]]
    return brief + older


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, judged on the engine as built at the largest scale; the overhead
    both under the full run's load and on a dedicated worker."""
    runs = doc["runs"]
    built = [r for r in runs if r["engine_as_built"]]
    main_run = max(built, key=lambda r: r["ms_per_demo_second"])
    loaded = main_run["overhead_per_cell_ms"]["in_task"]["mean"]
    out = {
        "makespan_within_of_bound": round(TARGET_RATIO - 1, 2),
        "ratio": main_run["ratio"],
        "at_ms_per_demo_second": main_run["ms_per_demo_second"],
        "makespan_met": main_run["ratio"] <= TARGET_RATIO,
        "short_of_the_target_by": round(max(0.0, main_run["ratio"] - TARGET_RATIO), 4),
        "ratio_at_each_scale": {str(r["ms_per_demo_second"]): r["ratio"] for r in built},
        "overhead_ms_per_cell": TARGET_OVERHEAD_MS,
        "overhead_mean_ms_full_run": loaded,
        "overhead_met_full_run": loaded < TARGET_OVERHEAD_MS,
    }
    solo = doc.get("dedicated_worker_probe")
    if solo:
        alone = solo["in_task_overhead_ms"]["mean"]
        out["overhead_mean_ms_dedicated_worker"] = alone
        out["overhead_met_dedicated_worker"] = alone < TARGET_OVERHEAD_MS
    out |= {
        "never_misplaced": all(r["cells_on_a_worker_lacking_a_label"] == 0 for r in runs),
        "never_overcommitted": all(r["overcommitted_starts"] == 0 for r in runs),
        "every_cell_ran": all(r["cells_refused"] == 0 for r in runs),
        "every_cell_ran_once": all(
            r["cells_refused"] == 0 and r["attempts_beyond_one"] == 0 for r in runs
        ),
    }
    if not out["makespan_met"]:
        out["why_not_met"] = why_short(doc, main_run)
    return out


def why_short(doc: dict[str, Any], judged: dict[str, Any]) -> str:
    """Why the makespan misses the target, in the run's own figures."""
    rule = doc.get("dask_rule_reference", {}).get("ratio_engine_policy")
    at_once = doc.get("dask_rule_reference", {}).get("ratio_all_at_once_in_item_order")
    pull = doc["pull_schedule_reference"]["longest_first"]["ratio"]
    sizes = judged["vcpu_utilisation_by_host_size"]
    poor = {k: v for k, v in sizes.items() if v < min(sizes.values()) + 0.15}
    rest = [v for k, v in sizes.items() if k not in poor]
    tenths = judged["vcpu_utilisation_by_tenth"]
    said = [
        f"{judged['ratio']:.3f}x the bound at {judged['ms_per_demo_second']:g} ms per demo "
        f"second, {judged['ratio'] - TARGET_RATIO:.3f} over the target."
    ]
    if rule is not None:
        said.append(
            f"The engine's policy (longest expected first, at most {WINDOW:g} x what fits "
            f"handed over) under Dask's rule for placing a resource-restricted task, simulated "
            f"with no overhead at all, gives {rule:.3f}x (all at once in item order: "
            f"{at_once:.3f}x); the engine measured {judged['ratio']:.3f}x, "
            f"{'above' if judged['ratio'] > rule else 'below'} it by "
            f"{abs(judged['ratio'] - rule):.3f}."
        )
        if judged["ratio"] <= rule + 0.02:
            said.append("So what is left is placement, not the engine's cost per cell:")
        else:
            said.append(
                f"So {max(0.0, rule - TARGET_RATIO):.3f} of the gap is placement and "
                f"{judged['ratio'] - rule:.3f} the engine's own cost here (latency, and the "
                "machine's load). The placement:"
            )
    said.append(
        "Dask puts each resource-restricted task, the moment it is handed over, on the valid "
        "worker with the fewest tasks per thread -- not where it fits now -- and a worker "
        "runs its queue in priority order, the first task that does not fit blocking the rest. "
        "Hosts whose memory runs out before their vCPUs look idle by that measure and collect "
        f"cells they cannot run yet: {', '.join(f'{k} {v:.2f}' for k, v in poor.items())} of "
        f"their vCPUs busy over the makespan, the others {min(rest):.2f}-{max(rest):.2f}. "
        f"A placement that looks at free room (the pull reference, longest first) reaches "
        f"{pull:.3f}x. Steady utilisation is {statistics.median(tenths[1:-1]):.2f}; the last "
        f"tenth of the makespan {tenths[-1]:.2f} (the last cells end one by one). The "
        "controller only decides how many cells Dask has and in what order; placing them by "
        "free room would be a scheduler written here, or a Dask scheduler plugin -- not done."
    )
    others = doc.get("dask_rule_reference", {}).get("other_labs")
    if others:
        mean = others["mean_engine_policy"]
        said.append(
            f"On {len(others['ratio_engine_policy'])} other labs drawn the same way the same "
            f"policy under Dask's rule gives "
            f"{min(others['ratio_engine_policy']):.3f}-{max(others['ratio_engine_policy']):.3f}x "
            f"(mean {mean:.3f}x), the pull reference "
            f"{others['mean_pull_longest_first']:.3f}x on average: this lab is "
            f"{'a kind' if rule is not None and rule < mean else 'not a kind'} draw."
        )
    return " ".join(said)


def frozen() -> None:
    """Run this script again on a copy of src/compatlab taken now, in every process it starts
    (scheduler, workers): other sessions edit the working tree, and a run of ~25 min must
    measure one version of the engine, the same in the controller and on the workers."""
    import atexit
    import shutil

    if "--serve-workers" in sys.argv:
        return  # the copy is the controller's: a workers' process that ends must not remove it
    if os.environ.get("SIM_LAB_SOURCE"):
        # Taken out of the environment before any process starts, so none of them sees it.
        taken = os.environ.pop("SIM_LAB_COPY", "")
        if taken:
            atexit.register(shutil.rmtree, taken, True)
        return
    copy = Path(tempfile.mkdtemp(prefix="sim-lab-src-"))
    shutil.copytree(
        ROOT / "src" / "compatlab", copy / "compatlab", ignore=shutil.ignore_patterns("__pycache__")
    )
    os.environ.update(SIM_LAB_SOURCE=str(copy), SIM_LAB_COPY=str(copy), PYTHONPATH=f"{copy}:{ROOT}")
    os.execv(sys.executable, [sys.executable, __file__, *sys.argv[1:]])


if __name__ == "__main__":
    frozen()
    main()
