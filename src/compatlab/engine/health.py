"""Draining a host whose cells keep ending in lab failures, and its health check.

LAVA's rule, for hypervisor hosts: an infrastructure error sends a device to "Unknown", and a
health check must pass before it takes jobs again. Here a host whose last :data:`DRAIN_AFTER`
cells in a row ended in a lab failure (``infra_error``) is *drained*: its worker stops offering
:data:`~compatlab.capacity.IN_SERVICE`, so the engine places no new cell there (cells already
running finish). Then the host checks itself (:func:`compatlab.lab.health.check_host`); if the
check passes it is back in service, if not it checks again after :data:`RECHECK_AFTER` seconds,
up to :data:`CHECKS` times, and then stays out of service ("Bad") until its worker restarts.

The host judges itself, on its worker, before the cell's result leaves it: the engine cannot
place another cell there in between. The controller only asks (:func:`health_of`) when a cell
waits and every worker that could run it offers no service: if all of them are out of service,
the cell ends ``infra_error`` with their findings instead of waiting for ever.

:class:`HostHealth` is the decision, pure; :class:`WorkerHealth` carries it out on a worker.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from typing import Any

from compatlab.capacity import IN_SERVICE

__all__ = [
    "CHECKS",
    "DRAIN_AFTER",
    "RECHECK_AFTER",
    "HostHealth",
    "HostState",
    "WorkerHealth",
    "health_of",
    "worker_health",
]

log = logging.getLogger("compatlab.engine")

#: Consecutive cells ending in a lab failure on one host that drain it.
DRAIN_AFTER = 2
#: Seconds between a failed health check and the next one.
RECHECK_AFTER = 20.0
#: Health checks a drained host gets before it is out of service.
CHECKS = 3


class HostState(enum.Enum):
    IN_SERVICE = "in service"
    DRAINED = "drained"  # its health check is due or running
    BAD = "out of service"  # failed every health check since it was drained


class HostHealth:
    """One host's state, from the outcomes of its cells and of its health checks."""

    def __init__(self, *, drain_after: int = DRAIN_AFTER, checks: int = CHECKS) -> None:
        self.drain_after = drain_after
        self.checks = checks
        self.state = HostState.IN_SERVICE
        self.failures = 0  # consecutive cells ending in a lab failure
        self.checked_times = 0  # health checks since it was drained
        self.findings: list[str] = []

    def cell_ended(self, *, lab_failure: bool) -> bool:
        """A cell ended here; True when this drains the host (a health check is due)."""
        if not lab_failure:
            self.failures = 0
            return False
        self.failures += 1
        if self.state is HostState.IN_SERVICE and self.failures >= self.drain_after:
            self.state, self.checked_times, self.findings = HostState.DRAINED, 0, []
            return True
        return False

    def checked(self, problems: list[str]) -> bool:
        """A health check found ``problems``; True when another one is due."""
        self.checked_times += 1
        if not problems:
            self.state, self.failures, self.findings = HostState.IN_SERVICE, 0, []
            return False
        self.findings = list(problems)
        if self.checked_times >= self.checks:
            self.state = HostState.BAD
            return False
        return True

    def summary(self, name: str) -> str:
        said = "; ".join(self.findings) or "no finding"
        return f"{name} is {self.state.value} after {self.checked_times} health check(s): {said}"


class WorkerHealth:
    """:class:`HostHealth` on a Dask worker: drains it and runs its health checks."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.health = HostHealth()
        self._offered: float = worker.state.total_resources.get(IN_SERVICE, 1.0)
        self._lock = threading.Lock()

    def after_cell(self, *, lab_failure: bool, check: Callable[[], list[str]]) -> None:
        """Called by the cell's task before its result leaves the worker."""
        with self._lock:
            drained = self.health.cell_ended(lab_failure=lab_failure)
        if not drained:
            return
        log.warning(
            "compatlab: %s: %d cells in a row ended in a lab failure; drained for a health check",
            self.worker.name,
            self.health.drain_after,
        )
        self._offer(0.0)
        threading.Thread(
            target=self._check_until_decided, args=(check,), name="health-check", daemon=True
        ).start()

    def _check_until_decided(self, check: Callable[[], list[str]]) -> None:
        again = True
        while again:
            try:
                problems = check()
            except Exception as exc:  # a check that breaks is a failed check
                problems = [f"the health check failed: {type(exc).__name__}: {exc}"]
            with self._lock:
                again = self.health.checked(problems)
                state = self.health.state
            if state is HostState.IN_SERVICE:
                log.warning(
                    "compatlab: %s passed its health check; back in service", self.worker.name
                )
                self._offer(self._offered)
                return
            if again:
                log.warning("compatlab: %s failed a health check: %s", self.worker.name, problems)
                threading.Event().wait(RECHECK_AFTER)
                if self._closing():
                    return
        log.error("compatlab: %s", self.health.summary(str(self.worker.name)))

    def _closing(self) -> bool:
        from distributed.core import Status

        return self.worker.status not in (Status.running, Status.paused)

    def _offer(self, value: float) -> None:
        """Set this worker's IN_SERVICE, on the worker and the scheduler, before returning.

        A worker that is closing has nothing left to offer: a check that ends while its run
        closes (the scheduler gone, the worker's connections closed) stops there quietly.
        """
        from distributed.utils import sync

        if self._closing():
            log.info("compatlab: %s is closing; its health check ends", self.worker.name)
            return
        try:
            sync(self.worker.loop, self._set_in_service, value)
        except Exception:
            if not self._closing():
                raise
            log.info("compatlab: %s closed during its health check", self.worker.name)

    async def _set_in_service(self, value: float) -> None:
        import time

        from distributed.worker_state_machine import UnpauseEvent

        await self.worker.set_resources(**{IN_SERVICE: value})
        if value > 0 and self.worker.state.running:
            # set_resources does not wake the cells already queued here for resources; the
            # state machine looks at them again on its next event. Unpausing a worker that is
            # not paused does only that.
            self.worker.handle_stimulus(UnpauseEvent(stimulus_id=f"in-service-{time.time()}"))

    def describe(self) -> tuple[str, str]:
        with self._lock:
            return self.health.state.name, self.health.summary(str(self.worker.name))


_made = threading.Lock()


def worker_health(worker: Any) -> WorkerHealth:
    """The worker's health (made on first use; it lives as long as the worker process)."""
    with _made:
        health = getattr(worker, "_compatlab_health", None)
        if health is None:
            health = worker._compatlab_health = WorkerHealth(worker)
    return health


def health_of(dask_worker: Any) -> tuple[str, str]:
    """For ``Client.run``: this worker's state name and its summary."""
    return worker_health(dask_worker).describe()
