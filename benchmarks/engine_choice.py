"""Engine choice for scale-out (issue 10): Dask distributed and Ray, side by side on this machine.

Both engines are measured in one run, their probes interleaved (the machine is shared with
running VMs, so a figure taken minutes apart from its rival's would compare two machines). Each
probe runs in a child process of its own, which is the controller ("client"/"driver"), so its
RSS is the engine's and nothing else's. Every process a probe starts carries an environment tag;
the probe finds its processes by that tag (and only those), and kills them when it is done.

Figures:

- versions; install size (the dependency closure of ``distributed`` and of ``ray`` /
  ``ray[default]``, from the installed files, and the part the project's ``.venv`` lacks);
- import time (fresh interpreter, median of ``--imports``);
- start and stop of a cluster on 127.0.0.1: embedded (Dask ``LocalCluster`` in-process and
  with 2 worker processes; Ray ``ray.init()``), and by command line (a scheduler / Ray head and
  2 workers: ``dask scheduler`` + ``dask worker --resources``; ``ray start --head`` +
  ``ray start --address --resources``);
- RSS (and USS) of the controller and of each process of the scheduler and the workers;
- submit -> result latency of a trivial task, the overhead per task of 500 tasks submitted at
  once with resources, a 4 MiB result's round trip, and progress events from a running task to
  the controller (Dask ``Worker.log_event`` -> ``Client.subscribe_topic``; Ray
  ``ray.util.queue.Queue``);
- placement by custom resources: worker A has ``vcpus=4 memory=4096 kvm=1000 one=1``, worker B
  ``vcpus=4 memory=4096``: tasks that need ``kvm`` only ever run on A, at most 2 at once at
  ``vcpus=2``; tasks that need ``one`` (a label given quantity 1) run one at a time; a task
  needing a resource no worker has (``tpm``);
- failure semantics: a 10 s task is hit 1 s into its run -- the process running it
  (``SIGKILL``), the whole worker node (``SIGKILL`` of all its processes), a node that stops
  answering (``SIGSTOP``), a node told to stop (``SIGTERM`` to ``dask worker`` / ``ray start``),
  and, Dask only, an operator's graceful drain (``Client.retire_workers``)
  -- with the engine's own retries left at their defaults and turned off (Dask
  ``distributed.scheduler.allowed-failures: 0``; Ray ``max_retries=0, retry_exceptions=False``).
  Reported: what the controller sees (exception type, message), how long after the blow, and how
  many times the engine started the task (each start writes a marker). The Dask task claims its
  attempt with a never-expiring ``distributed.Lock`` first, so a rerun the engine makes behind
  our back is counted and refused ("duplicate");
- listening sockets (``ss -ltnup``) of every process a probe started, flagged where not bound to
  loopback; Ray is also tried with its loopback-only switch (see ``ray_loopback``).

Run: ``python benchmarks/engine_choice.py`` with an interpreter that has ``distributed``,
``ray[default]`` and ``psutil`` (not the project's ``.venv``), e.g.::

    python3.11 -m venv /tmp/engines-venv
    /tmp/engines-venv/bin/pip install 'dask[distributed]' 'ray[default]' psutil
    /tmp/engines-venv/bin/python benchmarks/engine_choice.py

Writes ``benchmarks/results/engine_choice.json``. Measures; asserts nothing. Takes ~10-15 min
(most of it Ray's cluster starts and the two hung-node cases, which wait for detection). With
``ENGINE_BENCH_KEEP=1`` a probe keeps its scratch folder and Ray's session logs, for debugging.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import ipaddress
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "engine_choice.json"
PROJECT_VENV = ROOT / ".venv"

TAG = "ENGINE_BENCH_TAG"  # every process a probe starts carries it (children inherit it)
ROLE = "ENGINE_BENCH_ROLE"  # scheduler / A / B / head: which part of the cluster it is
# Both engines count every resource down as tasks take it: a label (kvm, tpm) is given a
# quantity no worker's cells can use up, so it gates placement without limiting concurrency.
# "one" is a label given with quantity 1, to show what that costs (one cell at a time).
LABEL = 1000
WORKER_A = {"vcpus": 4, "memory": 4096, "kvm": LABEL, "one": 1}
WORKER_B = {"vcpus": 4, "memory": 4096}
CELL_NEEDS = {"vcpus": 2, "memory": 2048}
FAILURE_TASK_SECONDS = 10.0
OUTCOME_TIMEOUT = 90.0
# Ray: "memory" is Ray's own resource (bytes); the cell's MiB go in a custom resource.
RAY_MEMORY = "memory_mib"


# -- shared helpers ------------------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = statistics.quantiles(ordered, n=100, method="inclusive")[94] if len(ordered) > 1 else 0
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


def mib(n: float) -> float:
    return round(n / 2**20, 1)


# Processes seen as ours, by (pid, start time), and their role. Ray renames its agents with
# setproctitle, which overwrites /proc/PID/environ, so a descendant of a tagged process counts
# as ours (and gets its ancestor's role) even when its tag can no longer be read; and it is
# remembered, since Ray's agents outlive a killed raylet as orphans.
_SEEN: dict[tuple[int, float], str] = {}


def tagged(tag: str) -> list[Any]:
    """The probe's processes: those tagged with ``tag``, and their descendants; nothing else."""
    import psutil

    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            env = proc.environ()
            if env.get(TAG) == tag and proc.pid not in mine:
                found[proc.pid] = proc
                _SEEN[(proc.pid, proc.create_time())] = env.get(ROLE, "?")
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            role = _SEEN.get((proc.pid, proc.create_time()), "?")
            for kid in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    found.setdefault(kid.pid, kid)
                    _SEEN.setdefault((kid.pid, kid.create_time()), role)
    for (pid, created), _ in list(_SEEN.items()):
        if pid in found:
            continue
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                found[pid] = proc
    return list(found.values())


def role_of(proc: Any) -> str:
    import psutil

    try:
        return _SEEN.get((proc.pid, proc.create_time())) or proc.environ().get(ROLE, "?")
    except psutil.Error:
        return "?"


def short_cmd(proc: Any) -> str:
    import psutil

    try:
        name = proc.name()
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    joined = " ".join(cmd)
    for key in (
        "gcs_server",
        "raylet",
        "dashboard.py",
        "agent.py",
        "log_monitor",
        "monitor.py",
        "ray.util.client.server",
        "runtime_env",
        "ray start",
        "dask scheduler",
        "dask worker",
        "forkserver",
        "resource_tracker",
        "multiprocessing.spawn",
        "default_worker.py",
    ):
        if key in joined:
            return key if not name.startswith("ray::") else name
    return name


def memory_of(procs: list[Any]) -> dict[str, Any]:
    """RSS per process (grouped by role) and USS totals (USS does not count shared pages twice)."""
    import psutil

    roles: dict[str, dict[str, Any]] = {}
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        role = role_of(proc)
        entry = roles.setdefault(role, {"processes": [], "rss_mib": 0.0, "uss_mib": 0.0})
        entry["processes"].append({"what": short_cmd(proc), "rss_mib": mib(info.rss)})
        entry["rss_mib"] = round(entry["rss_mib"] + mib(info.rss), 1)
        entry["uss_mib"] = round(entry["uss_mib"] + mib(info.uss), 1)
    for entry in roles.values():
        entry["count"] = len(entry["processes"])
    return roles


def self_memory() -> dict[str, float]:
    import psutil

    info = psutil.Process().memory_full_info()
    return {"rss_mib": mib(info.rss), "uss_mib": mib(info.uss)}


_SS_PID = re.compile(r"pid=(\d+)")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.startswith("::ffff:"):
        host = host[len("::ffff:") :]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", "0.0.0.0" parse; anything else (an interface name) is not loopback


def listening(pids: set[int]) -> list[dict[str, Any]]:
    """Listening TCP and UDP sockets of ``pids``, from ``ss``; each flagged loopback or not."""
    import psutil

    out = subprocess.run(
        ["ss", "-H", "-ltnup"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    found = []
    for line in out:
        owners = {int(p) for p in _SS_PID.findall(line)}
        if not owners & pids:
            continue
        fields = line.split()
        local = fields[4]
        host, _, port = local.rpartition(":")
        pid = min(owners & pids)
        try:
            proc = psutil.Process(pid)
            what, role = short_cmd(proc), role_of(proc)
        except psutil.Error:
            what, role = "?", "?"
        found.append(
            {
                "proto": fields[0],
                "address": host,
                "port": int(port) if port.isdigit() else port,
                "role": role,
                "process": what,
                "loopback": is_loopback(host),
            }
        )
    return sorted(found, key=lambda s: (s["role"], s["process"], str(s["port"])))


def socket_summary(sockets: list[dict[str, Any]]) -> dict[str, Any]:
    wide = [s for s in sockets if not s["loopback"]]
    return {
        "listening": len(sockets),
        "not_loopback": len(wide),
        "not_loopback_sockets": [
            f"{s['role']}/{s['process']} {s['proto']} {s['address']}:{s['port']}" for s in wide
        ],
        "all": sockets,
    }


class Processes:
    """The processes a probe starts: each in a session of its own, tagged, and killed at the end."""

    def __init__(self, tag: str, scratch: Path) -> None:
        self.tag = tag
        self.scratch = scratch
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        environ = {**os.environ, **(env or {}), TAG: self.tag, ROLE: name}
        log = (self.scratch / f"{name}.log").open("wb")
        self.started[name] = subprocess.Popen(
            argv, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def of_role(self, role: str) -> list[Any]:
        return [p for p in tagged(self.tag) if role_of(p) == role]

    def signal_role(self, role: str, signum: int) -> int:
        procs = self.of_role(role)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)
        return len(procs)

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for popen in self.started.values():
                popen.poll()
            if not tagged(self.tag):
                return True
            time.sleep(0.1)
        return False

    def kill_all(self) -> int:
        """SIGKILL (after SIGCONT) every tagged process left; returns how many there were."""
        left = tagged(self.tag)
        for proc in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGKILL)
        for popen in self.started.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=10)
        return len(left)

    def log(self, name: str) -> str:
        path = self.scratch / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout} s")


def concurrency(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = peak = 0
    for _, step in points:
        now += step
        peak = max(peak, now)
    return peak


def placement_summary(runs: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    by_node: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        by_node.setdefault(run["node"], []).append((run["start"], run["end"]))
    return {
        "tasks_per_node": {node: len(v) for node, v in sorted(by_node.items())},
        "max_concurrent_per_node": {node: concurrency(v) for node, v in sorted(by_node.items())},
        "wall_s": round(seconds, 2),
    }


# -- task bodies (shipped by value: the probe is __main__) ------------------------------------


def trivial(x: int) -> int:
    return x + 1


def sleeper(seconds: float) -> dict[str, Any]:
    import os
    import time

    start = time.time()
    time.sleep(seconds)
    return {"node": os.environ.get("ENGINE_BENCH_ROLE", "?"), "start": start, "end": time.time()}


def blob(n: int) -> bytes:
    return b"\0" * n


def mark(markers: str, token: str, what: str) -> None:
    import json
    import os
    import time

    line = {"what": what, "node": os.environ.get("ENGINE_BENCH_ROLE", "?"), "pid": os.getpid()}
    with open(os.path.join(markers, token), "a") as f:
        f.write(json.dumps({**line, "t": time.time()}) + "\n")


def dask_cell(markers: str, token: str, seconds: float) -> str:
    """A cell attempt on Dask: marks its start, claims the attempt once, then runs."""
    import time

    import dask
    from distributed import Lock

    mark(markers, token, "start")
    # A lease that never expires: a rerun the engine makes, even after this worker died,
    # cannot take the claim (distributed/semaphore.py Semaphore._register reads the config).
    with dask.config.set({"distributed.scheduler.locks.lease-timeout": "inf"}):
        if not Lock(f"claim-{token}").acquire(blocking=False):
            mark(markers, token, "duplicate")
            return "duplicate"
    mark(markers, token, "claimed")
    time.sleep(seconds)
    return "done"


def ray_cell(markers: str, token: str, seconds: float) -> str:
    import time

    mark(markers, token, "start")
    time.sleep(seconds)
    return "done"


def dask_progress(n: int) -> int:
    import time

    from distributed import get_worker

    worker = get_worker()
    for i in range(n):
        worker.log_event("bench-progress", {"i": i, "t": time.time()})
        time.sleep(0.02)
    return n


def ray_progress(queue: Any, n: int) -> int:
    import time

    for i in range(n):
        queue.put({"i": i, "t": time.time()})
        time.sleep(0.02)
    return n


def read_markers(markers: Path, token: str) -> list[dict[str, Any]]:
    path = markers / token
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- Dask ----------------------------------------------------------------------------------


def dask_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def dask_resources(resources: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in resources.items())


# Without it the scheduler's HTTP server (health, metrics: started even with --no-dashboard)
# listens on 0.0.0.0:8787 and each worker's on 0.0.0.0:<random> -- distributed/node.py
# ServerNode.start_http_server turns an empty host into "0.0.0.0".
HTTP_LOOPBACK = ["--dashboard-address", "127.0.0.1:0"]


def dask_start_cli(
    procs: Processes,
    scratch: Path,
    scheduler_env: dict[str, str] | None = None,
    *,
    http: list[str] = HTTP_LOOPBACK,
    workers: tuple[str, ...] = ("A", "B"),
) -> tuple[Any, float]:
    """``dask scheduler`` + ``dask worker`` x 2 on 127.0.0.1; returns the client, seconds taken."""
    from distributed import Client

    sched_file = scratch / "scheduler.json"
    t0 = time.perf_counter()
    procs.start(
        "scheduler",
        [
            dask_bin("dask"),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            *http,
            "--scheduler-file",
            str(sched_file),
        ],
        env=scheduler_env,
    )
    for name in workers:
        res = WORKER_A if name == "A" else WORKER_B
        folder = scratch / f"worker-{name}"
        folder.mkdir()
        procs.start(
            name,
            [
                dask_bin("dask"),
                "worker",
                "--scheduler-file",
                str(sched_file),
                "--host",
                "127.0.0.1",
                "--nthreads",
                "4",
                "--nworkers",
                "1",
                "--no-dashboard",
                *http,
                "--name",
                name,
                "--resources",
                dask_resources(res),
                "--local-directory",
                str(folder),
            ],
        )
    wait_for(sched_file.exists, 60, "dask scheduler file")
    client = Client(scheduler_file=str(sched_file), timeout=60)
    client.wait_for_workers(len(workers), timeout=60)
    return client, time.perf_counter() - t0


def dask_stop_cli(client: Any, procs: Processes) -> dict[str, Any]:
    t0 = time.perf_counter()
    with contextlib.suppress(Exception):
        client.shutdown()  # closes the scheduler, which closes the workers and their nannies
    gone = procs.wait_gone(30)
    return {"stop_s": round(time.perf_counter() - t0, 2), "clean": gone}


def dask_measure(client: Any, n_latency: int, n_burst: int) -> dict[str, Any]:
    from distributed import wait

    out: dict[str, Any] = {}
    for _ in range(5):
        client.submit(trivial, 0, pure=False).result()
    lat = []
    for i in range(n_latency):
        t = time.perf_counter()
        client.submit(trivial, i, pure=False).result()
        lat.append((time.perf_counter() - t) * 1000)
    out["latency_ms"] = stats(lat)
    lat = []
    for i in range(n_latency):
        t = time.perf_counter()
        client.submit(trivial, i, pure=False, resources=CELL_NEEDS).result()
        lat.append((time.perf_counter() - t) * 1000)
    out["latency_with_resources_ms"] = stats(lat)
    t = time.perf_counter()
    futures = [
        client.submit(trivial, i, pure=False, resources={"vcpus": 1}) for i in range(n_burst)
    ]
    wait(futures)
    client.gather(futures)
    burst = time.perf_counter() - t
    del futures
    out["burst"] = {
        "tasks": n_burst,
        "wall_s": round(burst, 3),
        "per_task_ms": round(burst / n_burst * 1000, 3),
    }
    sizes = []
    for _ in range(3):
        t = time.perf_counter()
        client.submit(blob, 4 * 2**20, pure=False).result()
        sizes.append((time.perf_counter() - t) * 1000)
    out["result_4mib_ms"] = stats(sizes)
    # Progress: worker -> scheduler event log -> client handler.
    arrivals: list[float] = []
    client.subscribe_topic("bench-progress", lambda ev: arrivals.append(time.time() - ev[1]["t"]))
    client.submit(dask_progress, 20, pure=False).result()
    wait_for(lambda: len(arrivals) >= 20, 10, "dask progress events")
    client.unsubscribe_topic("bench-progress")
    out["progress_event_ms"] = stats([a * 1000 for a in arrivals])
    return out


def dask_placement(client: Any) -> dict[str, Any]:
    t = time.perf_counter()
    kvm = [
        client.submit(sleeper, 0.5, pure=False, resources={**CELL_NEEDS, "kvm": 1})
        for _ in range(8)
    ]
    kvm_runs = client.gather(kvm)
    kvm_s = time.perf_counter() - t
    t = time.perf_counter()
    any_ = [client.submit(sleeper, 0.5, pure=False, resources=CELL_NEEDS) for _ in range(8)]
    any_runs = client.gather(any_)
    any_s = time.perf_counter() - t
    t = time.perf_counter()
    one = [
        client.submit(sleeper, 0.5, pure=False, resources={**CELL_NEEDS, "one": 1})
        for _ in range(4)
    ]
    one_runs = client.gather(one)
    one_s = time.perf_counter() - t
    tpm = client.submit(trivial, 1, pure=False, resources={**CELL_NEEDS, "tpm": 1})
    time.sleep(3)
    infeasible = {
        "status_after_3s": tpm.status,
        "scheduler_says": "no error: it waits for a worker with tpm",
    }
    tpm.cancel()
    return {
        "needs_kvm": placement_summary(kvm_runs, kvm_s),
        "needs_no_label": placement_summary(any_runs, any_s),
        "needs_label_of_quantity_1": placement_summary(one_runs, one_s),
        "needs_tpm_which_no_worker_has": infeasible,
    }


def probe_dask_default_binding(scratch: Path, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    """``dask scheduler`` + ``dask worker`` given only ``--host 127.0.0.1``: what listens wide."""
    procs = Processes(tag, scratch)
    out: dict[str, Any] = {
        "what": "dask scheduler + dask worker, --host 127.0.0.1, "
        "--no-dashboard, no --dashboard-address"
    }
    try:
        client, _ = dask_start_cli(procs, scratch, http=[], workers=("A",))
        out["sockets"] = socket_summary(listening({p.pid for p in tagged(tag)}))
        out.update(dask_stop_cli(client, procs))
    finally:
        out["killed_left_over"] = procs.kill_all()
    return out


def probe_dask_cli(scratch: Path, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    procs = Processes(tag, scratch)
    out: dict[str, Any] = {"what": "dask scheduler + 2 x dask worker (nanny), 127.0.0.1"}
    client = None
    try:
        client, start_s = dask_start_cli(procs, scratch)
        out["start_s"] = round(start_s, 2)
        out["controller_after_connect"] = self_memory()
        out["sockets"] = socket_summary(listening({p.pid for p in tagged(tag)} | {os.getpid()}))
        out.update(dask_measure(client, args.latency, args.burst))
        out["placement"] = dask_placement(client)
        out["controller"] = self_memory()
        out["cluster_memory"] = memory_of(tagged(tag))
        out.update(dask_stop_cli(client, procs))
    finally:
        out["killed_left_over"] = procs.kill_all()
    return out


def probe_dask_embedded(scratch: Path, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    out: dict[str, Any] = {}
    before = self_memory()
    # In-process: scheduler and worker on this process's event loop thread, inproc:// comms.
    t = time.perf_counter()
    cluster = LocalCluster(
        processes=False,
        n_workers=1,
        threads_per_worker=4,
        resources=WORKER_A,
        dashboard_address="127.0.0.1:0",
        worker_dashboard_address="127.0.0.1:0",
    )
    client = Client(cluster)
    out["in_process"] = {
        "start_s": round(time.perf_counter() - t, 3),
        "scheduler_address": cluster.scheduler_address,
        "note": "dashboard_address=None still listens on 0.0.0.0:8787 "
        "(LocalCluster default ':8787'); the HTTP servers are "
        "put on 127.0.0.1:0 here",
    }
    out["in_process"]["sockets"] = socket_summary(listening({os.getpid()}))
    out["in_process"].update(dask_measure(client, args.latency, args.burst))
    out["in_process"]["controller_before"] = before
    out["in_process"]["controller"] = self_memory()
    t = time.perf_counter()
    client.close()
    cluster.close()
    out["in_process"]["stop_s"] = round(time.perf_counter() - t, 3)
    # Two worker processes (nannies) on 127.0.0.1, scheduler in this process.
    t = time.perf_counter()
    cluster = LocalCluster(
        processes=True,
        n_workers=2,
        threads_per_worker=4,
        resources=WORKER_A,
        dashboard_address="127.0.0.1:0",
        host="127.0.0.1",
    )
    client = Client(cluster)
    client.wait_for_workers(2)
    out["two_processes"] = {"start_s": round(time.perf_counter() - t, 3)}
    children = [p for p in tagged(tag)]
    out["two_processes"]["sockets"] = socket_summary(
        listening({p.pid for p in children} | {os.getpid()})
    )
    out["two_processes"]["controller"] = self_memory()
    out["two_processes"]["worker_processes"] = memory_of(children)
    t = time.perf_counter()
    client.close()
    cluster.close()
    out["two_processes"]["stop_s"] = round(time.perf_counter() - t, 3)
    return out


def probe_dask_failure(scratch: Path, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    """One blow to the worker running a cell; what the controller sees."""
    action, retries = args.action, args.retries
    env = {"DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "20s"}
    if retries == "off":
        env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "0"
    procs = Processes(tag, scratch)
    markers = scratch / "markers"
    markers.mkdir()
    out: dict[str, Any] = {
        "engine": "dask",
        "action": action,
        "retries": retries,
        "config": {
            "distributed.scheduler.allowed-failures": 0 if retries == "off" else "default (3)",
            "distributed.scheduler.worker-ttl": "20s (default 5 minutes)",
            "task": "Client.submit(..., retries=0 (default), resources=vcpus 2)",
        },
    }
    try:
        client, start_s = dask_start_cli(procs, scratch, scheduler_env=env)
        out["start_s"] = round(start_s, 2)
        token = secrets.token_hex(4)
        fut = client.submit(
            dask_cell,
            str(markers),
            token,
            FAILURE_TASK_SECONDS,
            key=f"cell-{token}",
            resources=CELL_NEEDS,
        )
        first = wait_for(lambda: read_markers(markers, token), 30, "task start")[0]
        wait_for(lambda: len(read_markers(markers, token)) >= 2, 10, "claim")
        time.sleep(1)
        out["blow_at_s_into_task"] = round(time.time() - first["t"], 2)
        blown = first["node"]
        t0 = time.perf_counter()
        if action == "kill-task-process":
            os.kill(first["pid"], signal.SIGKILL)
        elif action == "kill-node":
            procs.signal_role(blown, signal.SIGKILL)
        elif action == "stop-node":
            procs.signal_role(blown, signal.SIGSTOP)
        elif action == "term-node":
            os.kill(procs.started[blown].pid, signal.SIGTERM)
        elif action == "retire-node":  # an operator's graceful drain (Client.retire_workers)
            workers = client.scheduler_info()["workers"]
            address = next(a for a, w in workers.items() if w["name"] == blown)
            client.retire_workers(workers=[address], close_workers=True)
        try:
            value = fut.result(timeout=OUTCOME_TIMEOUT)
            out["outcome"] = {"result": value}
        except Exception as exc:
            out["outcome"] = {
                "exception": f"{type(exc).__module__}.{type(exc).__name__}",
                "message": str(exc)[:300],
            }
        out["outcome"]["seconds_after_blow"] = round(time.perf_counter() - t0, 2)
        time.sleep(1)
        runs = read_markers(markers, token)
        out["engine_started_task"] = sum(1 for r in runs if r["what"] == "start")
        out["claimed"] = sum(1 for r in runs if r["what"] == "claimed")
        out["duplicates_refused"] = sum(1 for r in runs if r["what"] == "duplicate")
        out["ran_on"] = [f"{r['node']}:{r['what']}" for r in runs]
        with contextlib.suppress(Exception):
            client.close(timeout=5)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        out["killed_left_over"] = procs.kill_all()
    return out


# -- Ray -----------------------------------------------------------------------------------


# RAY_AUTH_MODE explicit: otherwise a local ray.init() turns token auth on and writes a token
# to ~/.ray/auth_token, which every later `ray start` on this host then picks up
# (ray/_private/authentication/authentication_token_setup.py enable_token_auth_by_default).
RAY_QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**RAY_QUIET, **(extra or {})}


def ray_node_args(res: dict[str, int]) -> list[str]:
    custom = {
        ("vcpus" if k == "vcpus" else RAY_MEMORY if k == "memory" else k): v for k, v in res.items()
    }
    return [
        "--num-cpus",
        "4",
        "--resources",
        json.dumps(custom),
        "--object-store-memory",
        str(100 * 2**20),
        "--disable-usage-stats",
        "--dashboard-agent-listen-port",
        "0",
        "--node-ip-address",
        "127.0.0.1",
    ]


def ray_needs(res: dict[str, int]) -> dict[str, Any]:
    custom = {
        ("vcpus" if k == "vcpus" else RAY_MEMORY if k == "memory" else k): v for k, v in res.items()
    }
    return {"num_cpus": 0, "resources": custom}


def ray_start_cli(
    procs: Processes, scratch: Path, head_env: dict[str, str] | None = None
) -> tuple[str, float]:
    import ray

    temp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # short: unix socket paths
    procs.scratch_dirs = [temp]  # type: ignore[attr-defined]
    ray_bin = str(Path(sys.executable).with_name("ray"))
    t0 = time.perf_counter()
    procs.start(
        "head",
        [
            ray_bin,
            "start",
            "--head",
            "--block",
            "--port",
            "0",
            "--num-cpus",
            "0",
            "--include-dashboard",
            "false",
            "--dashboard-host",
            "127.0.0.1",
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            str(temp),
            "--object-store-memory",
            str(100 * 2**20),
            "--disable-usage-stats",
        ],
        env=ray_env(head_env),
    )
    address = wait_for(lambda: ray_address(procs.log("head")), 90, "ray head")
    # The driver attaches to the head's raylet (all three share this host's address).
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    # One node after the other: two raylets started at once on one host race for ports
    # ("bind: Address already in use" in raylet.out, then the node times out).
    for n, (name, res) in enumerate((("A", WORKER_A), ("B", WORKER_B)), start=2):
        procs.start(
            name,
            [ray_bin, "start", "--block", "--address", address, *ray_node_args(res)],
            env=ray_env(head_env),
        )
        wait_for(lambda n=n: sum(1 for x in ray.nodes() if x["Alive"]) >= n, 90, f"node {name}")
    return address, time.perf_counter() - t0


_RAY_ADDRESS = re.compile(r"ray start --address='([^']+)'")


def ray_address(log: str) -> str | None:
    m = _RAY_ADDRESS.search(re.sub(r"\x1b\[[0-9;]*m", "", log))
    return m.group(1) if m else None


def ray_stop_cli(procs: Processes) -> dict[str, Any]:
    import ray

    t0 = time.perf_counter()
    ray.shutdown()
    for name in ("A", "B", "head"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(procs.started[name].pid, signal.SIGTERM)
    gone = procs.wait_gone(30)
    return {"stop_s": round(time.perf_counter() - t0, 2), "clean": gone}


def ray_measure(n_latency: int, n_burst: int) -> dict[str, Any]:
    import ray
    from ray.util.queue import Queue

    out: dict[str, Any] = {}
    f_trivial = ray.remote(max_retries=0)(trivial)
    f_blob = ray.remote(max_retries=0)(blob)
    for _ in range(5):
        ray.get(f_trivial.remote(0))
    lat = []
    for i in range(n_latency):
        t = time.perf_counter()
        ray.get(f_trivial.remote(i))
        lat.append((time.perf_counter() - t) * 1000)
    out["latency_ms"] = stats(lat)
    with_res = f_trivial.options(**ray_needs(CELL_NEEDS))
    lat = []
    for i in range(n_latency):
        t = time.perf_counter()
        ray.get(with_res.remote(i))
        lat.append((time.perf_counter() - t) * 1000)
    out["latency_with_resources_ms"] = stats(lat)
    burst_f = f_trivial.options(**ray_needs({"vcpus": 1}))
    t = time.perf_counter()
    ray.get([burst_f.remote(i) for i in range(n_burst)])
    burst = time.perf_counter() - t
    out["burst"] = {
        "tasks": n_burst,
        "wall_s": round(burst, 3),
        "per_task_ms": round(burst / n_burst * 1000, 3),
    }
    sizes = []
    for _ in range(3):
        t = time.perf_counter()
        ray.get(f_blob.remote(4 * 2**20))
        sizes.append((time.perf_counter() - t) * 1000)
    out["result_4mib_ms"] = stats(sizes)
    queue = Queue()
    ref = ray.remote(max_retries=0)(ray_progress).remote(queue, 20)
    arrivals = []
    for _ in range(20):
        event = queue.get(timeout=30)
        arrivals.append((time.time() - event["t"]) * 1000)
    ray.get(ref)
    out["progress_event_ms"] = stats(arrivals)
    queue.shutdown()
    return out


def ray_placement() -> dict[str, Any]:
    import ray

    f = ray.remote(max_retries=0)(sleeper)
    t = time.perf_counter()
    kvm_runs = ray.get(
        [f.options(**ray_needs({**CELL_NEEDS, "kvm": 1})).remote(0.5) for _ in range(8)]
    )
    kvm_s = time.perf_counter() - t
    t = time.perf_counter()
    any_runs = ray.get([f.options(**ray_needs(CELL_NEEDS)).remote(0.5) for _ in range(8)])
    any_s = time.perf_counter() - t
    t = time.perf_counter()
    one_runs = ray.get(
        [f.options(**ray_needs({**CELL_NEEDS, "one": 1})).remote(0.5) for _ in range(4)]
    )
    one_s = time.perf_counter() - t
    tpm = ray.remote(max_retries=0)(trivial).options(**ray_needs({**CELL_NEEDS, "tpm": 1}))
    ref = tpm.remote(1)
    ready, _ = ray.wait([ref], timeout=3)
    infeasible = {
        "status_after_3s": "finished" if ready else "pending",
        "scheduler_says": "infeasible-task warning in the driver's log; "
        "the task waits (an autoscaler could add a node)",
    }
    ray.cancel(ref, force=True)
    return {
        "needs_kvm": placement_summary(kvm_runs, kvm_s),
        "needs_no_label": placement_summary(any_runs, any_s),
        "needs_label_of_quantity_1": placement_summary(one_runs, one_s),
        "needs_tpm_which_no_worker_has": infeasible,
    }


def probe_ray_cli(scratch: Path, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    procs = Processes(tag, scratch)
    out: dict[str, Any] = {
        "what": "ray start --head (num-cpus 0, no dashboard) + 2 x ray start --address, "
        "--node-ip-address 127.0.0.1"
    }
    try:
        address, start_s = ray_start_cli(procs, scratch)
        out["start_s"] = round(start_s, 2)
        out["head_address"] = address
        out["controller_after_connect"] = self_memory()
        out["sockets"] = socket_summary(listening({p.pid for p in tagged(tag)} | {os.getpid()}))
        out.update(ray_measure(args.latency, args.burst))
        out["placement"] = ray_placement()
        out["controller"] = self_memory()
        out["cluster_memory"] = memory_of(tagged(tag))
        out.update(ray_stop_cli(procs))
    finally:
        out["killed_left_over"] = procs.kill_all()
        for folder in getattr(procs, "scratch_dirs", []):
            if not os.environ.get("ENGINE_BENCH_KEEP"):
                shutil.rmtree(folder, ignore_errors=True)
    return out


def probe_ray_embedded(scratch: Path, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    import ray

    temp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    out: dict[str, Any] = {"what": "ray.init(): a one-node cluster started by the driver"}
    before = self_memory()
    t = time.perf_counter()
    ray.init(
        num_cpus=2,
        resources={"vcpus": 4, RAY_MEMORY: 4096, "kvm": LABEL},
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(temp),
        object_store_memory=100 * 2**20,
        log_to_driver=False,
        logging_level="ERROR",
    )
    out["start_s"] = round(time.perf_counter() - t, 2)
    out["node_ip"] = ray.util.get_node_ip_address()
    children = tagged(tag)
    out["sockets"] = socket_summary(listening({p.pid for p in children} | {os.getpid()}))
    out.update(ray_measure(args.latency, args.burst))
    out["controller_before"] = before
    out["controller"] = self_memory()
    out["cluster_memory"] = memory_of(tagged(tag))
    t = time.perf_counter()
    ray.shutdown()
    deadline = time.monotonic() + 30
    while tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    out["stop_s"] = round(time.perf_counter() - t, 2)
    left = tagged(tag)
    out["killed_left_over"] = len(left)
    for proc in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)
    return out


def probe_ray_loopback(scratch: Path, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    """Ray's one switch that keeps a node on 127.0.0.1, and what it costs."""
    # Read when ray is imported (ray_constants.ENABLE_RAY_CLUSTER): the driver needs it too,
    # or it resolves 127.0.0.1 to this host's address (services.resolve_ip_for_localhost).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    out: dict[str, Any] = {}
    env = ray_env({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    ray_bin = str(Path(sys.executable).with_name("ray"))
    procs = Processes(tag, scratch)
    temp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    try:
        # With clusters switched off, ``ray start`` prints no join address: choose the port.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs.start(
            "head",
            [
                ray_bin,
                "start",
                "--head",
                "--block",
                "--port",
                str(port),
                "--num-cpus",
                "0",
                "--include-dashboard",
                "true",
                "--dashboard-host",
                "127.0.0.1",
                "--node-ip-address",
                "127.0.0.1",
                "--temp-dir",
                str(temp),
                "--object-store-memory",
                str(100 * 2**20),
                "--disable-usage-stats",
            ],
            env=env,
        )
        wait_for(lambda: "Ray runtime started" in procs.log("head"), 90, "ray head")
        address = f"127.0.0.1:{port}"
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        time.sleep(5)  # let the agents and the dashboard's modules open their ports
        out["head_address"] = address
        out["env"] = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
        out["head_with_dashboard"] = {
            "sockets": socket_summary(listening({p.pid for p in tagged(tag)})),
            "memory": memory_of(tagged(tag)),
        }
        joined = subprocess.run(
            [ray_bin, "start", "--address", address, *ray_node_args(WORKER_A)],
            env={**os.environ, **env, TAG: tag, ROLE: "A"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        text = re.sub(r"\x1b\[[0-9;]*m", "", joined.stdout + joined.stderr)
        out["worker_node_joins"] = {
            "exit_code": joined.returncode,
            "says": [ln for ln in text.splitlines() if "not supported" in ln][:1],
        }
        ray.shutdown()
    finally:
        out["killed_left_over"] = procs.kill_all()
        shutil.rmtree(temp, ignore_errors=True)
    return out


def probe_ray_failure(scratch: Path, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    import ray

    action, retries = args.action, args.retries
    # Health check made comparable with Dask's worker-ttl of 20 s (defaults:
    # period 3000 ms, timeout 10000 ms, threshold 5 -- ray_config_def.h).
    head_env = {
        "RAY_health_check_period_ms": "2000",
        "RAY_health_check_timeout_ms": "2000",
        "RAY_health_check_failure_threshold": "5",
    }
    procs = Processes(tag, scratch)
    markers = scratch / "markers"
    markers.mkdir()
    options: dict[str, Any] = ray_needs(CELL_NEEDS)
    if retries == "off":
        options.update(max_retries=0, retry_exceptions=False)
    out: dict[str, Any] = {
        "engine": "ray",
        "action": action,
        "retries": retries,
        "config": {
            "task": "max_retries=0, retry_exceptions=False"
            if retries == "off"
            else "defaults (max_retries=3 for system failures)",
            "health_check": "period 2000 ms, timeout 2000 ms, threshold 5 (default 3000/10000/5)",
        },
    }
    try:
        _, start_s = ray_start_cli(procs, scratch, head_env=head_env)
        out["start_s"] = round(start_s, 2)
        token = secrets.token_hex(4)
        ref = (
            ray.remote(ray_cell)
            .options(**options)
            .remote(str(markers), token, FAILURE_TASK_SECONDS)
        )
        first = wait_for(lambda: read_markers(markers, token), 60, "task start")[0]
        time.sleep(1)
        out["blow_at_s_into_task"] = round(time.time() - first["t"], 2)
        blown = first["node"]
        t0 = time.perf_counter()
        if action == "kill-task-process":
            os.kill(first["pid"], signal.SIGKILL)
        elif action == "kill-node":
            procs.signal_role(blown, signal.SIGKILL)
        elif action == "stop-node":
            procs.signal_role(blown, signal.SIGSTOP)
        elif action == "term-node":
            os.kill(procs.started[blown].pid, signal.SIGTERM)
        try:
            value = ray.get(ref, timeout=OUTCOME_TIMEOUT)
            out["outcome"] = {"result": value}
        except Exception as exc:
            out["outcome"] = {
                "exception": f"{type(exc).__module__}.{type(exc).__name__}",
                "message": str(exc)[:300],
            }
        out["outcome"]["seconds_after_blow"] = round(time.perf_counter() - t0, 2)
        time.sleep(1)
        runs = read_markers(markers, token)
        out["engine_started_task"] = len(runs)
        out["ran_on"] = [r["node"] for r in runs]
        ray.shutdown()
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        out["killed_left_over"] = procs.kill_all()
        for folder in getattr(procs, "scratch_dirs", []):
            if not os.environ.get("ENGINE_BENCH_KEEP"):
                shutil.rmtree(folder, ignore_errors=True)
    return out


PROBES: dict[str, Callable[[Path, str, argparse.Namespace], dict[str, Any]]] = {
    "dask-embedded": probe_dask_embedded,
    "ray-embedded": probe_ray_embedded,
    "dask-cli": probe_dask_cli,
    "dask-default-binding": probe_dask_default_binding,
    "ray-cli": probe_ray_cli,
    "ray-loopback": probe_ray_loopback,
    "dask-failure": probe_dask_failure,
    "ray-failure": probe_ray_failure,
}


def run_probe(args: argparse.Namespace) -> None:
    tag = os.environ[TAG]
    scratch = Path(tempfile.mkdtemp(prefix=f"engine-{args.probe}-"))
    try:
        result = PROBES[args.probe](scratch, tag, args)
    finally:
        if not os.environ.get("ENGINE_BENCH_KEEP"):
            shutil.rmtree(scratch, ignore_errors=True)
    print("PROBE-RESULT " + json.dumps(result))


# -- the orchestrator ------------------------------------------------------------------------


def child(probe: str, extra: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Run one probe in a fresh interpreter; clean up whatever carries its tag afterwards."""
    tag = secrets.token_hex(6)
    argv = [
        sys.executable,
        __file__,
        "--probe",
        probe,
        "--latency",
        str(args.latency),
        "--burst",
        str(args.burst),
        *extra,
    ]
    t0 = time.perf_counter()
    env = {**os.environ, TAG: tag, ROLE: "controller", **RAY_QUIET}
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        popen = subprocess.Popen(argv, env=env, stdout=out_f, stderr=err_f)
        deadline = time.monotonic() + 600
        while popen.poll() is None and time.monotonic() < deadline:
            tagged(tag)  # remembers the probe's processes, in case it dies without cleaning up
            time.sleep(1)
        if popen.poll() is None:
            popen.kill()
        code = popen.wait()
        out_f.seek(0)
        err_f.seek(0)
        stdout = out_f.read().decode(errors="replace")
        stderr = err_f.read().decode(errors="replace")
    left = tagged(tag)
    for proc in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGKILL)
    for line in stdout.splitlines():
        if line.startswith("PROBE-RESULT "):
            result: dict[str, Any] = json.loads(line[len("PROBE-RESULT ") :])
            break
    else:
        result = {"error": f"exit {code}", "stderr_tail": stderr[-2000:]}
    result["probe_wall_s"] = round(time.perf_counter() - t0, 1)
    if left:
        result["orchestrator_killed"] = len(left)
    print(f"  {probe} {' '.join(extra)}: {result['probe_wall_s']} s", file=sys.stderr)
    return result


def versions() -> dict[str, str]:
    names = [
        "dask",
        "distributed",
        "tornado",
        "msgpack",
        "cloudpickle",
        "ray",
        "grpcio",
        "aiohttp",
        "psutil",
        "rich",
    ]
    found = {}
    for name in names:
        with contextlib.suppress(md.PackageNotFoundError):
            found[name] = md.version(name)
    return found


def closure(requirement: str) -> dict[str, md.Distribution]:
    """The installed distributions ``requirement`` pulls in, extras and markers honoured."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, md.Distribution] = {}
    todo = [Requirement(requirement)]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        extras = set(req.extras)
        key = name
        if key in seen and not extras:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None:
                todo.append(sub)
                continue
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return seen


def dist_bytes(dist: md.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file)))
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def install_sizes() -> dict[str, Any]:
    from packaging.utils import canonicalize_name

    site = next(PROJECT_VENV.glob("lib/python*/site-packages"), None)
    project = (
        {canonicalize_name(d.metadata["Name"]) for d in md.distributions(path=[str(site)])}
        if site
        else set()
    )
    out = {}
    for req in ("distributed", "ray", "ray[default]"):
        dists = closure(req)
        sizes = {name: dist_bytes(d) for name, d in dists.items()}
        new = {n: s for n, s in sizes.items() if n not in project}
        largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
        out[req] = {
            "packages": len(sizes),
            "mib": mib(sum(sizes.values())),
            "new_to_project_venv": {"packages": len(new), "mib": mib(sum(new.values()))},
            "largest": {n: mib(s) for n, s in largest},
        }
    return out


def import_times(n: int) -> dict[str, Any]:
    code = "import time; t = time.perf_counter(); import {m}; print(time.perf_counter() - t)"
    samples: dict[str, list[float]] = {"distributed": [], "ray": []}
    for _ in range(n):
        for module in samples:  # interleaved, so both see the same machine
            done = subprocess.run(
                [sys.executable, "-c", code.format(m=module)],
                capture_output=True,
                text=True,
                check=True,
            )
            samples[module].append(float(done.stdout.strip()) * 1000)
    return {module: stats(values) for module, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", choices=sorted(PROBES), help=argparse.SUPPRESS)
    parser.add_argument("--action", help=argparse.SUPPRESS)
    parser.add_argument("--retries", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the cluster probes")
    parser.add_argument("--imports", type=int, default=5, help="fresh imports per engine")
    parser.add_argument("--latency", type=int, default=100, help="sequential trivial tasks")
    parser.add_argument("--burst", type=int, default=500, help="tasks submitted at once")
    parser.add_argument("--skip-failures", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.probe:
        run_probe(args)
        return

    import psutil

    started = datetime.now(UTC)
    print("install sizes, import times", file=sys.stderr)
    result: dict[str, Any] = {
        "schema": 1,
        "measured": started.isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_at_start": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
        },
        "versions": versions(),
        "install": install_sizes(),
        "import_ms": import_times(args.imports),
    }
    rounds: dict[str, list[dict[str, Any]]] = {}
    for n in range(args.rounds):
        print(f"round {n + 1}", file=sys.stderr)
        for probe in ("dask-embedded", "ray-embedded", "dask-cli", "ray-cli"):
            rounds.setdefault(probe, []).append(child(probe, [], args))
    result["embedded"] = {"dask": rounds["dask-embedded"], "ray": rounds["ray-embedded"]}
    result["cli_cluster"] = {"dask": rounds["dask-cli"], "ray": rounds["ray-cli"]}
    result["dask_default_binding"] = child("dask-default-binding", [], args)
    result["ray_loopback"] = child("ray-loopback", [], args)
    failures: list[dict[str, Any]] = []
    if not args.skip_failures:
        plan = [
            ("kill-task-process", "default"),
            ("kill-task-process", "off"),
            ("kill-node", "default"),
            ("kill-node", "off"),
            ("term-node", "off"),
            ("stop-node", "off"),
        ]
        for action, retries in plan:
            for engine in ("dask", "ray"):
                failures.append(
                    child(f"{engine}-failure", ["--action", action, "--retries", retries], args)
                )
        # Dask only: a graceful drain reschedules running tasks whatever allowed-failures says.
        failures.append(
            child("dask-failure", ["--action", "retire-node", "--retries", "off"], args)
        )
    result["failures"] = failures
    result["summary"] = summarize(result)
    result["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The side-by-side table: medians over rounds where there are several."""

    def med(rows: list[dict[str, Any]], *path: str) -> float | None:
        values = []
        for row in rows:
            value: Any = row
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, (int, float)):
                values.append(float(value))
        return round(statistics.median(values), 3) if values else None

    table: dict[str, Any] = {}
    for engine in ("dask", "ray"):
        cli = result["cli_cluster"][engine]
        emb = result["embedded"][engine]
        req = "distributed" if engine == "dask" else "ray[default]"
        mem = cli[-1].get("cluster_memory", {}) if cli else {}
        fails = [f for f in result["failures"] if f.get("engine") == engine]
        table[engine] = {
            "install_mib": result["install"][req]["mib"],
            "install_packages": result["install"][req]["packages"],
            "import_ms": result["import_ms"]["distributed" if engine == "dask" else "ray"][
                "median"
            ],
            "cli_start_s": med(cli + fails, "start_s"),
            "cli_stop_s": med(cli, "stop_s"),
            "embedded_start_s": med(emb, "in_process", "start_s")
            if engine == "dask"
            else med(emb, "start_s"),
            "embedded_stop_s": med(emb, "in_process", "stop_s")
            if engine == "dask"
            else med(emb, "stop_s"),
            "controller_rss_mib": med(cli, "controller", "rss_mib"),
            "scheduler_rss_mib": (mem.get("scheduler") or mem.get("head") or {}).get("rss_mib"),
            "scheduler_processes": (mem.get("scheduler") or mem.get("head") or {}).get("count"),
            "worker_rss_mib": [mem.get(w, {}).get("rss_mib") for w in ("A", "B")],
            "worker_uss_mib": [mem.get(w, {}).get("uss_mib") for w in ("A", "B")],
            "worker_processes": [mem.get(w, {}).get("count") for w in ("A", "B")],
            "latency_ms_median": med(cli, "latency_ms", "median"),
            "latency_with_resources_ms_median": med(cli, "latency_with_resources_ms", "median"),
            "burst_per_task_ms": med(cli, "burst", "per_task_ms"),
            "result_4mib_ms": med(cli, "result_4mib_ms", "median"),
            "progress_event_ms": med(cli, "progress_event_ms", "median"),
            "cli_sockets_not_loopback": med(cli, "sockets", "not_loopback"),
            "kvm_tasks_on": cli[-1].get("placement", {}).get("needs_kvm", {}).get("tasks_per_node")
            if cli
            else None,
            "failures": {
                f"{f['action']}/{f['retries']}": {
                    "sees": (f.get("outcome") or {}).get("exception")
                    or (f.get("outcome") or {}).get("result")
                    or f.get("error"),
                    "after_s": (f.get("outcome") or {}).get("seconds_after_blow"),
                    "engine_started_task": f.get("engine_started_task"),
                }
                for f in fails
            },
        }
    return table


if __name__ == "__main__":
    main()
