"""``compatlab worker``: one hypervisor host of a lab, as a Dask worker.

It connects to the lab's scheduler, offers its host's capacity as Dask *resources* (``vcpus``,
``memory`` in MiB, one ``label-<name>`` per label: ``kvm``, ``tpm``, ...), and runs the cells
the scheduler places on it against its local libvirt (``--uri``), with cells' disks under
``--storage``. Evidence goes back with each result; the whole files stay here until the cell is
removed. The worker has no nanny: a service manager restarts it, and the reaper of its next
start removes what a dead one left (``compatlab gc`` does too).

Start the scheduler with Dask's own command, told never to rerun a task whose worker died::

    DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0 dask scheduler --host 127.0.0.1
    compatlab worker --scheduler tcp://127.0.0.1:8786 --vcpus 8 --memory 16384 \\
        --storage /var/lib/compatlab --labels kvm,tpm
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

from compatlab.capacity import Capacity
from compatlab.engine.task import set_lab_factory

__all__ = ["serve"]

log = logging.getLogger("compatlab.engine")


def serve(
    *,
    scheduler: str,
    capacity: Capacity,
    storage: Path,
    uri: str,
    project: Path,
    host: str = "127.0.0.1",
    name: str | None = None,
    preload: Sequence[str] = (),
    attempts: int = 2,
) -> int:
    """Run the worker until the scheduler goes away or the process is told to stop."""
    from distributed import Worker

    from compatlab.lab.domain import find_template_dir
    from compatlab.matrix import find_project_root
    from compatlab.run import LabRun, LabSettings

    worker_name = name or f"{socket.gethostname()}-{os.getpid()}"
    settings = LabSettings(uri=uri, storage_root=storage, attempts=attempts)
    template_dir = find_template_dir(find_project_root(project))
    runs: dict[str, LabRun] = {}
    lock = threading.Lock()

    def lab_for(run_id: str):  # type: ignore[no-untyped-def]
        with lock:
            run = runs.get(run_id)
            if run is None:
                run = runs[run_id] = LabRun(
                    run_id=run_id,
                    worker=worker_name,
                    report_dir=storage / "reports",  # replaced per cell by a staging folder
                    template_dir=template_dir,
                    settings=settings,
                )
        return run.lab()

    set_lab_factory(lab_for)

    async def main() -> None:
        async with Worker(
            scheduler,
            nthreads=capacity.vcpus,
            resources=capacity.resources(),
            host=host,
            name=worker_name,
            dashboard_address=f"{host}:0",
            # Dask's scratch space with the cells' disks, not in /tmp: a killed worker's is
            # purged by the next worker that starts there (Dask's WorkSpace locks).
            local_directory=str(storage / "dask"),
            preload=list(preload),
        ) as worker:
            print(
                f"compatlab worker {worker_name}: {worker.address} offers {capacity.vcpus} vCPUs, "
                f"{capacity.memory_mib} MiB, labels {sorted(capacity.labels) or 'none'} "
                f"to {scheduler}",
                flush=True,
            )
            await worker.finished()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        set_lab_factory(None)
        for run in runs.values():
            run.close()
    return 0
