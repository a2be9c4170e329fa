"""A lab on 127.0.0.1 for tests: Dask's own scheduler and ``compatlab worker`` processes.

The scheduler, the workers, placement and the engine are real. The workers' guests are what the
test asks for: ``standins=True`` preloads tests/support/enginestandins.py (scripted guests on
libvirt's ``test:///default`` driver), ``standins=False`` drives this machine's libvirtd.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["ROOT", "scheduler", "stop", "wait_workers", "worker"]


def scheduler(
    folder: Path, *, allowed_failures: str | None = "0"
) -> tuple[subprocess.Popen[str], str]:
    """Dask's scheduler (told never to rerun a task by itself, unless ``allowed_failures``)."""
    file = folder / f"scheduler-{allowed_failures}.json"
    env = dict(os.environ)
    if allowed_failures is not None:
        env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = allowed_failures
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"),
            *("--port", "0", "--dashboard-address", "127.0.0.1:0", "--no-show"),
            *("--scheduler-file", str(file)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not file.exists() or not file.read_text().strip():
        assert proc.poll() is None and time.monotonic() < deadline, "the scheduler did not start"
        time.sleep(0.1)
    return proc, str(json.loads(file.read_text())["address"])


def worker(
    folder: Path,
    address: str,
    name: str,
    *,
    standins: bool = True,
    vcpus: int = 1,
    memory: int = 65536,
    boot: float = 3,
    env: Mapping[str, str] = (),  # type: ignore[assignment]
    log: Path | None = None,
    storage: Path | None = None,
) -> subprocess.Popen[str]:
    """``compatlab worker`` with its own capacity and storage folder (``folder/name`` unless
    ``storage``: real guests need one QEMU's user can reach, not under /tmp/pytest-of-root)."""
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
        "COMPATLAB_TEST_MARKS": str(folder / "marks"),
        "COMPATLAB_TEST_BOOT": str(boot),
        **dict(env),
    }
    (folder / "marks").mkdir(exist_ok=True)
    args = [
        *(sys.executable, "-m", "compatlab.cli", "worker", "--scheduler", address),
        *("--vcpus", str(vcpus), "--memory", str(memory)),
        *("--storage", str(storage or folder / name)),
        *("--name", name, "--project", str(ROOT)),
    ]
    if standins:
        args += ["--uri", "test:///default", "--preload", "tests.support.enginestandins"]
    if log is None:
        return subprocess.Popen(
            args, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
        )
    with log.open("a") as out:  # the worker has its own copy of the descriptor
        return subprocess.Popen(args, env=environ, stdout=out, stderr=out, text=True)


def wait_workers(client_or_engine: object, n: int, limit: float = 60) -> None:
    """Until ``n`` workers have joined (an engine's ``workers()`` or a Client)."""
    deadline = time.monotonic() + limit
    while True:
        workers = getattr(client_or_engine, "workers", None)
        joined = (
            workers() if callable(workers) else client_or_engine.scheduler_info()["workers"]  # type: ignore[attr-defined]
        )
        if len(joined) >= n:
            return
        assert time.monotonic() < deadline, f"only {len(joined)} of {n} workers joined"
        time.sleep(0.2)


def stop(*procs: subprocess.Popen[str]) -> None:
    """Ctrl-C each process, then kill what is still there after 15 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
