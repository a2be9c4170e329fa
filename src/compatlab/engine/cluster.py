"""Cells side by side on Dask distributed: embedded in the pytest process, or on a lab's workers.

Why Dask (measured side by side with Ray here, ``benchmarks/results/engine_choice.json``): it
places tasks by *resources* (a cell asks for its vCPUs, memory and labels; a worker offers its
host's), every socket it opens can be held to 127.0.0.1, its embedded form is a thread of this
process with in-process comms (no extra process, results passed without pickling), and it is
39 MiB of pure Python where Ray is 242 MiB with a dozen daemons.

* **Embedded** (no scheduler address): a ``LocalCluster(processes=False)`` whose one worker
  offers this machine's :class:`~compatlab.capacity.Capacity` (``configs/lab.yaml`` may set
  it). The engine's resource accounting is what keeps the host from being overcommitted.
* **A lab** (``scheduler: tcp://...`` in ``configs/lab.yaml`` or ``--matrix-scheduler``): each
  hypervisor host runs ``compatlab worker``, which drives its own libvirt; overlays, ISOs and
  logs stay there and evidence comes back with the result (:mod:`compatlab.engine.task`).

Failure semantics: one task per attempt, ``retries=0``, and ``allowed-failures: 0`` on the
embedded scheduler; a remote scheduler that would rerun a task by itself is refused when the
controller connects. A worker lost mid-cell (``KilledWorker``, a closed connection, a rerun the
claim refused) is a lab failure: the cell is submitted again, to another worker where one fits,
within the lab's ``attempts``; past them it is ``infra_error`` with the reasons. Never a verdict
on the candidate, never two results for one cell.

Order and flow (:mod:`compatlab.engine.order`): each cell goes to Dask with ``priority=`` its
expected seconds, longest first, and the controller hands over at most a window of cells at a
time -- :data:`~compatlab.engine.order.WINDOW` times what fits the lab now -- holding the rest in
priority order and handing over the next as each attempt ends. Dask places every cell. Whether
any worker could ever hold a cell is asked once per distinct :class:`~compatlab.capacity.Needs`,
again only when the set of workers or what they offer has changed.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compatlab.capacity import IN_SERVICE, Capacity, Needs, cell_needs
from compatlab.engine.handle import CellHandle
from compatlab.engine.health import HostState, health_of
from compatlab.engine.order import WINDOW, Window, in_flight_limit, priority
from compatlab.engine.task import CellTask, register_lab, unregister_lab
from compatlab.errors import LabError

if TYPE_CHECKING:
    from compatlab.matrix import Cell
    from compatlab.scenario import LabContext

__all__ = ["CellHandle", "DaskEngine"]

log = logging.getLogger("compatlab.engine")

#: How long the controller waits for cells to tear their VMs down when the run stops.
STOP_WAIT = 120.0
#: How often the controller looks for cells waiting on a worker that went out of service.
TEND_EVERY = 1.0
#: How long closing the engine may take.
CLOSE_WAIT = 10.0
#: How long the controller's view of the workers (for placeability and the window) is reused.
OFFERS_FOR = 1.0
# A task is never run again by the scheduler after its worker died: compatlab decides.
_SETTINGS = {"distributed.scheduler.allowed-failures": 0}


class DaskEngine:
    """Runs cells as Dask tasks. ``scheduler=None`` embeds a cluster in this process."""

    def __init__(
        self,
        *,
        run_id: str,
        report_dir: Path,
        scheduler: str | None,
        capacity: Capacity,
        attempts: int,
        lab: Callable[[], LabContext] | None = None,
        stop: threading.Event | None = None,
        progress: Callable[..., None] | None = None,
        window: float = WINDOW,
    ) -> None:
        self.run_id = run_id
        self._progress = progress  # where a lab's workers' cell phases go (task.follow_phases)
        self.report_dir = report_dir
        self.scheduler = scheduler
        self.capacity = capacity
        self.attempts = attempts
        self.stopping = False
        self._lab = lab
        self._stop = stop or threading.Event()
        self._cluster: Any = None
        self._client: Any = None
        self._keys = itertools.count(1)
        self._handles: list[CellHandle] = []
        self._next_tend = 0.0
        self._window: Window[CellHandle] = Window()
        self._window_factor = window
        self._sizes = [0, 0, 0]  # the cells' vCPUs and MiB summed, and how many: the mean cell
        self._offers: dict[str, dict[str, float]] = {}
        self._offers_until = 0.0
        self._placeable: dict[Needs, str | None] = {}
        self._placeable_for: frozenset[tuple[str, frozenset[tuple[str, float]]]] = frozenset()

    # -- the cluster ----------------------------------------------------------------------

    def start(self) -> None:
        import dask
        from distributed import Client, LocalCluster

        with dask.config.set(_SETTINGS):
            if self.scheduler is None:
                if self._lab is None:
                    raise LabError("the embedded engine needs the run's lab")
                register_lab(self.run_id, self._lab)
                self._cluster = LocalCluster(
                    n_workers=1,
                    processes=False,
                    threads_per_worker=self.capacity.vcpus,
                    resources=self.capacity.resources(),
                    dashboard_address="127.0.0.1:0",
                    worker_dashboard_address="127.0.0.1:0",
                    silence_logs=logging.ERROR,
                )
                self._client = Client(self._cluster, set_as_default=False)
            else:
                try:
                    self._client = Client(self.scheduler, set_as_default=False, timeout=30)
                except OSError as exc:
                    raise LabError(f"cannot reach the scheduler {self.scheduler}: {exc}") from exc
                self._refuse_rerunning_scheduler()
                if self._progress is not None:
                    from compatlab.engine.task import follow_phases

                    follow_phases(self._client, self.run_id, self._progress)

    def _refuse_rerunning_scheduler(self) -> None:
        allowed = self._client.run_on_scheduler(_allowed_failures)
        if allowed != 0:
            self.close()
            raise LabError(
                f"the scheduler at {self.scheduler} reruns a task whose worker died "
                f"(allowed-failures: {allowed}): start it with "
                "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0 so a cell never runs twice"
            )

    def workers(self) -> dict[str, dict[str, float]]:
        """Each worker's address and the resources it offers, asked of the scheduler now.

        Not ``Client.scheduler_info()``: it returns the client's cache, which the client's own
        periodic refresh rewrites with no workers at all -- read in between, a lab looked empty
        and cells were refused (benchmarks/sim_lab.py: 7 of 5,000)."""
        identity = self._client.sync(self._client.scheduler.identity, n_workers=-1)
        return {addr: dict(w.get("resources", {})) for addr, w in identity["workers"].items()}

    def offers(self) -> dict[str, dict[str, float]]:
        """:meth:`workers`, asked again at most every :data:`OFFERS_FOR` seconds: what the
        controller's hot path (every submit, every hand-over) looks at."""
        now = time.monotonic()
        if now >= self._offers_until:
            if self.scheduler is None:
                self._offers = {"embedded": self.capacity.resources()}
            else:
                self._offers = self.workers()
            self._offers_until = time.monotonic() + OFFERS_FOR
        return self._offers

    def why_not(self, needs: Needs) -> str | None:
        """Why no worker of the engine can ever run a VM with these needs, or None.

        Asked once per distinct needs; the answers are dropped when the workers, or what they
        offer (in service or not aside), have changed."""
        if self.scheduler is None:
            return self.capacity.why_not(needs)
        offers = self.offers()
        sized = frozenset((a, frozenset(_sized_offer(o).items())) for a, o in offers.items())
        if sized != self._placeable_for:
            self._placeable, self._placeable_for = {}, sized
        if needs not in self._placeable:
            self._placeable[needs] = self._why_not(needs, offers)
        return self._placeable[needs]

    def _why_not(self, needs: Needs, offers: dict[str, dict[str, float]]) -> str | None:
        if not offers:
            return f"no worker is connected to the scheduler {self.scheduler}"
        if self._fitting(needs, offers):
            return None
        return f"no worker of {self.scheduler} offers {_describe(_sized(needs))}"

    def _fitting(self, needs: Needs, offers: dict[str, dict[str, float]]) -> list[str]:
        """The workers whose host could hold such a VM, in service or not."""
        wanted = _sized(needs)
        return [
            addr
            for addr, offer in offers.items()
            if all(offer.get(k, 0) >= v for k, v in wanted.items())
        ]

    # -- hosts: drained after lab failures, back after a health check (health.py) ---------

    def _in_service(self, offers: dict[str, dict[str, float]]) -> set[str]:
        return {addr for addr, offer in offers.items() if offer.get(IN_SERVICE, 0) > 0}

    def another_host_for(self, needs: Needs, avoid: set[str]) -> bool:
        """Whether a worker in service, not in ``avoid``, could run such a cell."""
        offers = self.workers()
        serving = self._in_service(offers)
        return any(a not in avoid and a in serving for a in self._fitting(needs, offers))

    def tend(self) -> None:
        """Cells waiting on a worker that went out of service (the main thread, at most once
        a second): placed again on one in service, or, when every worker that could run them
        failed its health checks, ended ``infra_error`` instead of waiting for ever. A cell
        already running on a drained worker finishes there. Cells handed over while no worker
        for them was in service are placed once one is. And held cells the window has room for
        are handed over (as when an attempt ends)."""
        self.hand_over()
        now = time.monotonic()
        if now < self._next_tend:
            return
        self._next_tend = now + TEND_EVERY
        waiting = [h for h in self._handles if h.result is None and h.future is not None]
        if not waiting:
            return
        offers = self.workers()
        serving = self._in_service(offers)
        unplaced = set(self._client.run_on_scheduler(_unplaced))
        for handle in waiting:
            fitting = self._fitting(handle.needs, offers)
            if handle.future.key in unplaced and set(fitting) & serving - handle.avoid:
                handle.place_again()
        out = [addr for addr in offers if addr not in serving]
        if not out:
            return
        placed = {k: addr for addr, keys in self._client.processing().items() for k in keys}
        executing = set().union(*self._client.run(_executing, workers=out).values())
        states: dict[str, tuple[str, str]] = self._client.run(health_of, workers=out)
        for handle in waiting:
            key = handle.future.key
            where = placed.get(key)
            if handle.future.done() or key in executing or (where is not None and where in serving):
                continue  # (its result is in: the next wait() takes it)
            fitting = self._fitting(handle.needs, offers)
            if where is not None and any(
                a in serving and a not in handle.avoid | {where} for a in fitting
            ):
                handle.move(away_from=where)
                continue
            # A next attempt goes only where the lab has not failed it: when all of those
            # failed their checks, so did the cell's last chance.
            left = [a for a in fitting if a not in handle.avoid] or fitting
            if left and all(states.get(a, ("", ""))[0] == HostState.BAD.name for a in left):
                handle.give_up("; ".join(states[a][1] for a in left))

    # -- cells ----------------------------------------------------------------------------

    def submit(self, cell: Cell, repeat: int = 1, *, expected: float | None = None) -> CellHandle:
        """One cell (its ``repeat``-th run), expected to take ``expected`` seconds (None: not
        known). Handed to the engine at once if the window has room, else held."""
        handle = self._hold(cell, repeat, expected)
        self.hand_over()
        return handle

    def submit_many(self, cells: Iterable[tuple[Cell, int, float | None]]) -> list[CellHandle]:
        """Cells as ``(cell, repeat, expected seconds)``: all held first, so the first ones
        handed over are the longest expected of them all, not the first given."""
        handles = [self._hold(cell, repeat, expected) for cell, repeat, expected in cells]
        self.hand_over()
        return handles

    def _hold(self, cell: Cell, repeat: int, expected: float | None) -> CellHandle:
        needs = cell_needs(cell)
        handle = CellHandle(cell, self, needs, repeat=repeat, priority=priority(expected))
        self._handles.append(handle)
        why = self.why_not(handle.needs)
        if why is not None:
            handle.give_up(why)
            return handle
        self._sizes[0] += needs.vcpus
        self._sizes[1] += needs.memory_mib
        self._sizes[2] += 1
        self._window.hold(handle, handle.priority)
        return handle

    def hand_over(self) -> None:
        """Hand held cells to the engine while the window has room, longest expected first."""
        if self.stopping or self._client is None:
            return
        vcpus, memory, count = self._sizes
        if count:
            self._window.limit = in_flight_limit(
                self.offers().values(), vcpus / count, memory / count, self._window_factor
            )
        for handle in self._window.due():
            self._send(handle)

    def submit_attempt(self, handle: CellHandle) -> None:
        """Another attempt of a cell handed over already (its worker was lost, or went out
        of service): at once, counted in the window."""
        self._window.add()
        self._send(handle)

    def _send(self, handle: CellHandle) -> None:
        from compatlab.engine.task import run_cell_task

        key = f"compatlab-{self.run_id}-{handle.cell.id}-{next(self._keys)}"
        elsewhere = [a for a in self.workers() if a not in handle.avoid] if handle.avoid else None
        try:
            future = self._client.submit(
                run_cell_task,
                CellTask(handle.cell, self.run_id, key, repeat=handle.repeat),
                key=key,
                pure=False,
                retries=0,
                priority=handle.priority,
                resources=handle.needs.resources(),
                workers=elsewhere,
                allow_other_workers=False,
            )
        except BaseException:
            self._window.done()
            raise
        handle.future = future
        handle.handed.set()
        future.add_done_callback(self._ended)

    def _ended(self, _future: Any) -> None:
        """An attempt ended (Dask's callback thread): its place in the window is free."""
        self._window.done()
        try:
            self.hand_over()
        except Exception as exc:  # the main thread's next tend() tries again
            log.warning("compatlab: handing over the next cells: %s", exc)

    def close(self, *, stop: bool = False) -> None:
        """Stop: running cells tear their VMs down (bounded wait), queued ones never start."""
        self.stopping = True
        running = [h.future for h in self._handles if h.result is None and h.future is not None]
        if self._client is not None:
            for future in running:
                future.cancel()  # queued ones; a running thread sees the stop event instead
        if stop:
            self._stop.set()
        if self.scheduler is None and running:
            _wait_threads_idle(self._cluster, STOP_WAIT)
        unregister_lab(self.run_id)
        # Bounded: an engine that does not shut down must not hold the runner (the cells'
        # VMs are gone by now; the engine's threads are daemons).
        for what, part in (("client", self._client), ("cluster", self._cluster)):
            if part is None:
                continue
            try:
                part.close(timeout=CLOSE_WAIT)
            except Exception as exc:
                log.warning("compatlab: closing the engine's %s: %s", what, exc)
        self._client = self._cluster = None


def _executing(dask_worker: Any) -> list[str]:
    """For ``Client.run``: the keys this worker runs or has run (not those still waiting for
    resources): a task whose result is on its way to the controller is not waiting either."""
    waiting = ("waiting", "ready", "constrained", "fetch", "flight", "missing")
    return [k for k, ts in dask_worker.state.tasks.items() if ts.state not in waiting]


def _unplaced(dask_scheduler: Any) -> list[str]:
    """For ``run_on_scheduler``: the tasks no worker could take when they came ("no-worker")."""
    return [str(ts.key) for ts in dask_scheduler.unrunnable]


def _sized_offer(offer: dict[str, float]) -> dict[str, float]:
    """What a worker offers, in service or not."""
    return {k: v for k, v in offer.items() if k != IN_SERVICE}


def _sized(needs: Needs) -> dict[str, float]:
    """What a host must have to hold such a VM at all (not whether it is in service now)."""
    return {k: v for k, v in needs.resources().items() if k != IN_SERVICE}


def _allowed_failures(dask_scheduler: Any) -> int:
    return int(dask_scheduler.allowed_failures)


def _describe(wanted: dict[str, float]) -> str:
    return ", ".join(f"{k.removeprefix('label-')}={v:g}" for k, v in sorted(wanted.items()))


def _wait_threads_idle(cluster: Any, limit: float) -> None:
    """Wait until the embedded worker runs no task (each tears its VM down on the stop)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        workers = list(getattr(cluster, "workers", {}).values())
        if not any(getattr(w, "state", None) and w.state.executing_count for w in workers):
            return
        time.sleep(0.25)
    log.error("compatlab: cells still running %g s after the stop", limit)
