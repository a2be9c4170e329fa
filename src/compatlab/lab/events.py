"""Domain events from libvirt, stamped on arrival and queued per domain.

One :class:`EventHub` per connection subscribes once, for every domain, to lifecycle (with the
CRASHED/PANICKED detail), REBOOT, WATCHDOG, guest-agent lifecycle and QEMU's raw
``GUEST_PANICKED`` monitor event (which carries the hyper-v crash registers of a Windows guest).
It hands each event to the :class:`DomainWatch` of that domain, by name; events of domains
nobody watches are dropped.

The callbacks run on the libvirt event-loop thread and never raise (xdist's receiver thread is
the model): they hand what libvirt said to :meth:`DomainWatch.record`, which stamps it with
``time.monotonic()`` and puts it on the queue and the timeline under one lock. A consumer blocks in
:meth:`DomainWatch.wait` and is woken by the event itself, so a verdict is reached within a
second of it, not at the next poll.

Event kinds: ``defined``, ``undefined``, ``started``, ``suspended``, ``resumed``, ``stopped``,
``shutdown``, ``pmsuspended``, ``crashed`` (detail ``panicked`` / ``crashloaded``), ``reboot``,
``watchdog`` (detail: the action), ``guest_panicked`` (data: the QMP payload, flattened),
``agent`` (detail ``connected`` / ``disconnected``), ``io_error`` (detail: the reason, e.g.
``enospc``; data: ``path``, ``device``, ``action``: QEMU could not read or write a disk image on
the host), and ``connection_lost`` /
``connection_restored`` (source ``lab``) when the hypervisor connection drops and comes back --
events in between are lost, so a consumer should look at the domain's state again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import libvirt

from compatlab.lab.connection import Hypervisor, libvirt_errors
from compatlab.model import Event, Timeline

__all__ = [
    "EVENT_KINDS",
    "DomainWatch",
    "EventHub",
    "flatten_guest_panicked",
]

log = logging.getLogger("compatlab.lab")


def _words(text: str) -> list[str]:
    """Space-separated names, listed in libvirt's numbering (one line beats one per line)."""
    return text.split()


# libvirt lifecycle event numbers -> (kind, detail words by detail number), libvirt-domain.h.
_LIFECYCLE: dict[int, tuple[str, list[str]]] = {
    0: ("defined", ["added", "updated", "renamed", "from_snapshot"]),
    1: ("undefined", ["removed", "renamed"]),
    2: ("started", ["booted", "migrated", "restored", "from_snapshot", "wakeup"]),
    3: (
        "suspended",
        _words(
            "paused migrated ioerror watchdog restored from_snapshot api_error postcopy "
            "postcopy_failed"
        ),
    ),
    4: ("resumed", ["unpaused", "migrated", "from_snapshot", "postcopy", "postcopy_failed"]),
    5: (
        "stopped",
        ["shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from_snapshot"],
    ),
    6: ("shutdown", ["finished", "guest", "host"]),
    7: ("pmsuspended", ["memory", "disk"]),
    8: ("crashed", ["panicked", "crashloaded"]),
}

_WATCHDOG_ACTIONS = {
    0: "none",
    1: "pause",
    2: "reset",
    3: "poweroff",
    4: "shutdown",
    5: "debug",
    6: "inject-nmi",
}

EVENT_KINDS: frozenset[str] = frozenset(
    {kind for kind, _ in _LIFECYCLE.values()}
    | {"reboot", "watchdog", "guest_panicked", "agent", "connection_lost", "connection_restored"}
)


# virDomainEventIOErrorAction: what QEMU did about the failed request.
_IO_ERROR_ACTIONS = {0: "none", 1: "pause", 2: "report"}


def _lifecycle_words(event: int, detail: int) -> tuple[str, str]:
    """libvirt's lifecycle (event, detail) numbers as our (kind, detail) words."""
    kind, details = _LIFECYCLE.get(event, (f"lifecycle-{event}", []))
    return kind, details[detail] if 0 <= detail < len(details) else str(detail)


class DomainWatch:
    """Events of one domain: a queue to wait on and a timeline that keeps them all.

    ``epoch`` is the ``time.monotonic()`` that is t=0 for this watch's events (the cell's start);
    an event's arrival on the monotonic clock is ``epoch + event.t``. ``epoch_wall`` is
    ``time.time()`` at the same moment, to compare with QEMU's own wall-clock timestamps.
    """

    def __init__(self, name: str, *, epoch: float | None = None) -> None:
        self.name = name
        self.epoch = time.monotonic() if epoch is None else epoch
        self.epoch_wall = time.time() - (time.monotonic() - self.epoch)
        self.timeline = Timeline()
        self._queue: queue.Queue[Event] = queue.Queue()
        # Stamp, keep and queue under one lock: two producers (libvirt's event thread, the
        # readiness probe, the runner) can then never put events on the timeline out of order.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DomainWatch({self.name!r}, {len(self.timeline)} events)"

    def record(self, source: str, kind: str, detail: str = "", **data: str) -> Event:
        """Stamp (now, on the monotonic clock), keep and queue one event, all under one lock."""
        with self._lock:
            arrived = time.monotonic()
            event = Event(
                t=arrived - self.epoch, source=source, kind=kind, detail=detail, data=data
            )
            self.timeline.append(event)
            self._queue.put(event)
        return event

    def wait(
        self,
        kinds: Collection[str] | None = None,
        timeout: float | None = None,
        *,
        detail: str | None = None,
    ) -> Event | None:
        """The next event of one of ``kinds`` (any kind if None), or None after ``timeout`` s.

        Events of other kinds that come first are consumed from the queue (they stay on the
        timeline). Returns as soon as a matching event is put, not at a polling interval.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    # Out of time: still hand out what is already queued (timeout=0 = poll).
                    event = self._queue.get_nowait()
                else:
                    event = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if (kinds is None or event.kind in kinds) and (
                detail is None or event.detail == detail
            ):
                return event

    def drain(self) -> list[Event]:
        """Every event queued and not yet waited for, oldest first."""
        events: list[Event] = []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                return events

    def count(self, kind: str, detail: str | None = None) -> int:
        """How many events of ``kind`` (and ``detail``) the timeline holds so far."""
        return sum(
            1
            for e in self.timeline.snapshot()
            if e.kind == kind and (detail is None or e.detail == detail)
        )

    def arrival(self, event: Event) -> float:
        """When ``event`` arrived, on the ``time.monotonic()`` clock."""
        return self.epoch + event.t


class EventHub:
    """Connection-wide subscriptions, dispatched to per-domain :class:`DomainWatch` queues.

    Get it from :attr:`Hypervisor.events`; it re-subscribes when the connection is restored.
    """

    def __init__(self, hypervisor: Hypervisor) -> None:
        self._hv = hypervisor
        self._watches: dict[str, DomainWatch] = {}
        self._lock = threading.Lock()
        self._conn: Any = None
        self._callback_ids: list[int] = []
        self._qemu_callback_ids: list[int] = []
        self.qmp_available = False

    # subscription ---------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe on the hypervisor's current connection and follow it across reconnects."""
        self._subscribe(self._hv.connection)
        self._hv.add_listener(self)

    def close(self) -> None:
        """Unsubscribe; watches keep what they have recorded."""
        self._hv.remove_listener(self)
        self._unsubscribe()

    def _subscribe(self, conn: Any) -> None:
        handlers: list[tuple[int, Callable[..., None]]] = [
            (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle),
            (libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._on_reboot),
            (libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG, self._on_watchdog),
            (libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, self._on_agent),
            (libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, self._on_io_error),
        ]
        ids: list[int] = []
        with libvirt_errors("subscribing to domain events", host=self._hv.host):
            for event_id, handler in handlers:
                ids.append(conn.domainEventRegisterAny(None, event_id, handler, None))
        qemu_ids: list[int] = []
        try:
            import libvirt_qemu

            qemu_ids.append(
                libvirt_qemu.qemuMonitorEventRegister(
                    conn, None, "GUEST_PANICKED", self._on_qmp, None, 0
                )
            )
        except (ImportError, libvirt.libvirtError) as exc:
            # test:/// and non-QEMU drivers have no monitor; lifecycle CRASHED still arrives.
            log.debug("no QMP GUEST_PANICKED subscription on %s: %s", self._hv.uri, exc)
        with self._lock:
            self._conn = conn
            self._callback_ids = ids
            self._qemu_callback_ids = qemu_ids
            self.qmp_available = bool(qemu_ids)

    def _unsubscribe(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            ids, self._callback_ids = self._callback_ids, []
            qemu_ids, self._qemu_callback_ids = self._qemu_callback_ids, []
        if conn is None:
            return
        for callback_id in ids:
            # A failure means the connection died, and its subscriptions with it.
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(callback_id)
        if qemu_ids:
            import libvirt_qemu

            for callback_id in qemu_ids:
                with contextlib.suppress(libvirt.libvirtError):
                    libvirt_qemu.qemuMonitorEventDeregister(conn, callback_id)

    # ConnectionListener: run on libvirt threads, never raise -----------------------------------

    def connection_lost(self, reason: str) -> None:
        with self._lock:
            # The old connection's callbacks are gone with it; forget their ids.
            self._conn, self._callback_ids, self._qemu_callback_ids = None, [], []
            watches = list(self._watches.values())
        for watch in watches:
            watch.record("lab", "connection_lost", reason)

    def connection_restored(self) -> None:
        try:
            self._subscribe(self._hv.connection)
        except Exception:
            log.exception("re-subscribing to domain events failed")
            return
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            watch.record("lab", "connection_restored")

    # watches --------------------------------------------------------------------------------

    def watch(self, name: str, *, epoch: float | None = None) -> DomainWatch:
        """Start collecting the events of the domain called ``name`` (one watch per name)."""
        with self._lock:
            existing = self._watches.get(name)
            if existing is not None:
                return existing
            watch = DomainWatch(name, epoch=epoch)
            self._watches[name] = watch
            return watch

    def unwatch(self, name: str) -> None:
        with self._lock:
            self._watches.pop(name, None)

    def _watch_for(self, dom: Any) -> DomainWatch | None:
        with self._lock:
            return self._watches.get(dom.name()) if self._watches else None

    # libvirt callbacks ----------------------------------------------------------------------

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: object) -> None:
        try:
            watch = self._watch_for(dom)
            if watch is not None:
                kind, word = _lifecycle_words(event, detail)
                watch.record("libvirt", kind, word)
        except Exception:
            log.exception("lifecycle event callback failed")

    def _on_reboot(self, _conn: Any, dom: Any, _opaque: object) -> None:
        try:
            watch = self._watch_for(dom)
            if watch is not None:
                watch.record("libvirt", "reboot")
        except Exception:
            log.exception("reboot event callback failed")

    def _on_watchdog(self, _conn: Any, dom: Any, action: int, _opaque: object) -> None:
        try:
            watch = self._watch_for(dom)
            if watch is not None:
                watch.record("libvirt", "watchdog", _WATCHDOG_ACTIONS.get(action, str(action)))
        except Exception:
            log.exception("watchdog event callback failed")

    def _on_agent(self, _conn: Any, dom: Any, state: int, reason: int, _opaque: object) -> None:
        try:
            watch = self._watch_for(dom)
            if watch is not None:
                word = {1: "connected", 2: "disconnected"}.get(state, str(state))
                cause = {0: "unknown", 1: "domain_started", 2: "channel"}.get(reason, str(reason))
                watch.record("libvirt", "agent", word, reason=cause)
        except Exception:
            log.exception("agent event callback failed")

    def _on_io_error(
        self,
        _conn: Any,
        dom: Any,
        path: str,
        device: str,
        action: int,
        reason: str,
        _opaque: object,
    ) -> None:
        try:
            watch = self._watch_for(dom)
            if watch is not None:
                what = _IO_ERROR_ACTIONS.get(action, str(action))
                watch.record(
                    "libvirt", "io_error", reason or "error", path=path, device=device, action=what
                )
        except Exception:
            log.exception("I/O error event callback failed")

    def _on_qmp(
        self,
        _conn: Any,
        dom: Any,
        event: str,
        seconds: int,
        micros: int,
        details: object,
        _opaque: object,
    ) -> None:
        try:
            watch = self._watch_for(dom)
            if watch is not None and event == "GUEST_PANICKED":
                data = flatten_guest_panicked(details)
                data["qemu_time"] = f"{seconds}.{micros:06d}"
                watch.record("qmp", "guest_panicked", data.get("type", ""), **data)
        except Exception:
            log.exception("QMP event callback failed")


def flatten_guest_panicked(details: object) -> dict[str, str]:
    """QMP ``GUEST_PANICKED`` data as flat strings: action, type, argN (hex), payload (JSON).

    Never raises: an unreadable payload is kept as ``payload`` only.
    """
    raw = details if isinstance(details, str) else json.dumps(details)
    out: dict[str, str] = {"payload": raw}
    try:
        payload = json.loads(raw) if isinstance(details, str) else details
    except ValueError:
        return out
    if not isinstance(payload, Mapping):
        return out
    out["action"] = str(payload.get("action", ""))
    info = payload.get("info")
    if isinstance(info, Mapping):
        for key, value in info.items():
            text = f"0x{value:x}" if isinstance(value, int) and key.startswith("arg") else value
            out[str(key)] = str(text)
    return out
