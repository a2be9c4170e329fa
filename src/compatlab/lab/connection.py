"""One libvirt connection per hypervisor host, and the one event loop every connection shares.

libvirt delivers domain events and keepalive replies through an event loop the *client* runs.
:func:`ensure_event_loop` starts libvirt's default loop in one daemon thread per process; it must
run before the first connection opens, so :class:`Hypervisor` calls it on open.

A :class:`Hypervisor` owns its ``virConnect``: keepalive so a dead daemon is noticed, a close
callback so a restarted ``libvirtd`` is reconnected to (bounded, with tenacity) in the background,
and listeners (the event hub) told when the connection is lost and when it is back. Every
``libvirt.libvirtError`` is mapped to :class:`~compatlab.errors.HypervisorError` here or in the
lab module that made the call, with ``raise ... from exc`` and the host in the error.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

import libvirt
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from compatlab.errors import HypervisorError

if TYPE_CHECKING:
    from compatlab.lab.events import EventHub

__all__ = [
    "DEFAULT_URI",
    "Accelerator",
    "ConnectionListener",
    "Hypervisor",
    "Keepalive",
    "ReconnectPolicy",
    "ensure_event_loop",
    "libvirt_errors",
]

DEFAULT_URI = "qemu:///system"

log = logging.getLogger("compatlab.lab")

# -- the event loop -------------------------------------------------------------------------------

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def _silence_default_error_handler(_ctx: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised and mapped instead."""


def _run_event_loop() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # the loop thread must outlive any one bad iteration
            log.exception("libvirt event loop iteration failed; continuing")


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it in one daemon thread. Idempotent.

    Must be called before any connection is opened: a connection opened earlier never gets
    events or keepalive replies.
    """
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        libvirt.registerErrorHandler(_silence_default_error_handler, None)
        libvirt.virEventRegisterDefaultImpl()
        _loop_thread = threading.Thread(
            target=_run_event_loop, name="compatlab-libvirt-events", daemon=True
        )
        _loop_thread.start()


# -- error mapping --------------------------------------------------------------------------------


@contextmanager
def libvirt_errors(what: str, *, host: str, domain: str | None = None) -> Iterator[None]:
    """Map a ``libvirtError`` raised inside the block to :class:`HypervisorError`."""
    try:
        yield
    except libvirt.libvirtError as exc:
        message = exc.get_error_message() or str(exc)
        raise HypervisorError(f"{what}: {message}", host=host, domain=domain) from exc


# -- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keepalive:
    """libvirt keepalive: a probe after ``interval`` s idle; dead after ``count`` unanswered."""

    interval: int = 5
    count: int = 3


@dataclass(frozen=True)
class ReconnectPolicy:
    """How long to keep trying to (re)open a connection before the lab gives up."""

    attempts: int = 8
    max_seconds: float = 60.0
    first_wait: float = 0.25
    max_wait: float = 5.0


@dataclass(frozen=True)
class Accelerator:
    """What a host can run guests with: libvirt domain type ``kvm`` or ``qemu`` (TCG)."""

    domain_type: Literal["kvm", "qemu"]
    reason: str

    @property
    def is_kvm(self) -> bool:
        return self.domain_type == "kvm"


class ConnectionListener(Protocol):
    """Told, on a libvirt thread, when a hypervisor connection drops and when it is back."""

    def connection_lost(self, reason: str) -> None: ...

    def connection_restored(self) -> None: ...


_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "client",
}

# Accelerator answers per host UUID: the probe runs once per host per process.
_accelerators: dict[str, Accelerator] = {}
_accelerators_lock = threading.Lock()


def _host_of(uri: str) -> str:
    """The host a URI points at; the local hostname for ``qemu:///system`` and ``test:///``."""
    return urlsplit(uri).hostname or socket.gethostname()


# -- the connection -------------------------------------------------------------------------------


class Hypervisor:
    """A libvirt connection to one hypervisor host, reconnected when ``libvirtd`` restarts.

    ``uri`` may be local (``qemu:///system``), remote (``qemu+ssh://host/system``,
    ``qemu+tcp://host/system``) or libvirt's in-process ``test:///default`` driver. Use as a
    context manager, or call :meth:`open` and :meth:`close`.
    """

    def __init__(
        self,
        uri: str = DEFAULT_URI,
        *,
        keepalive: Keepalive | None = Keepalive(),
        reconnect: ReconnectPolicy = ReconnectPolicy(),
        auto_reconnect: bool = True,
    ) -> None:
        self.uri = uri
        self.host = _host_of(uri)
        self.keepalive = keepalive
        self.reconnect_policy = reconnect
        self.auto_reconnect = auto_reconnect
        self._conn: Any = None
        self._lost = False
        self._closing = False
        self._lock = threading.RLock()
        self._listeners: list[ConnectionListener] = []
        self._hub: EventHub | None = None
        self._reconnect_thread: threading.Thread | None = None
        self.reconnects = 0

    # context manager ------------------------------------------------------------------------

    def __enter__(self) -> Hypervisor:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Hypervisor({self.uri!r})"

    # lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the connection (retried under the reconnect policy). Idempotent."""
        with self._lock:
            self._closing = False
            if self._conn is not None and not self._lost and self._is_alive():
                return
            self._connect()

    @property
    def connection(self) -> Any:
        """The live ``virConnect``; reopened first if the daemon went away since."""
        with self._lock:
            if self._conn is None or self._lost or not self._is_alive():
                if self._closing:
                    raise HypervisorError("connection is closed", host=self.host)
                self._connect()
            return self._conn

    @property
    def is_local(self) -> bool:
        """True when the hypervisor runs on this machine (its files are our files)."""
        return urlsplit(self.uri).hostname in (None, "", "localhost")

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._conn is not None and not self._lost

    def alive(self) -> bool:
        """The connection is open and libvirtd answers on it now; never reconnects (unlike
        :attr:`connection`), so a caller can tell a daemon that went away from one that
        refused a call."""
        with self._lock:
            return self._conn is not None and not self._lost and self._is_alive()

    def close(self) -> None:
        """Stop the event hub, drop the close callback and close the connection."""
        with self._lock:
            self._closing = True
            hub, self._hub = self._hub, None
        if hub is not None:
            hub.close()
        with self._lock:
            conn, self._conn = self._conn, None
            self._listeners.clear()
        if conn is None:
            return
        # Not registered, or the connection is already dead: nothing to undo.
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        try:
            conn.close()
        except libvirt.libvirtError as exc:
            log.debug("closing %s: %s", self.uri, exc)

    def add_listener(self, listener: ConnectionListener) -> None:
        """Be told when the connection drops and when it is back (e.g. to re-subscribe)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: ConnectionListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    @property
    def events(self) -> EventHub:
        """The connection's event hub, subscribed on first use (one per connection)."""
        from compatlab.lab.events import EventHub  # events imports this module

        with self._lock:
            if self._hub is None:
                self._hub = EventHub(self)
                self._hub.start()
            return self._hub

    # queries --------------------------------------------------------------------------------

    def lookup(self, name: str) -> Any | None:
        """The domain called ``name``, or None when there is none."""
        try:
            return self.connection.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise HypervisorError(
                f"looking up domain: {exc.get_error_message()}", host=self.host, domain=name
            ) from exc

    def domains(self) -> list[Any]:
        """Every domain on the host, running or only defined."""
        with libvirt_errors("listing domains", host=self.host):
            return list(self.connection.listAllDomains(0))

    def hostname(self) -> str:
        """The hypervisor's own idea of its hostname."""
        with libvirt_errors("asking the hostname", host=self.host):
            return str(self.connection.getHostname())

    def accelerator(self) -> Accelerator:
        """``kvm`` only where hardware virtualization is really there, else ``qemu`` (TCG).

        ``/dev/kvm`` existing is not enough (LAB-NOTES: without vmx/svm a KVM guest spins and
        never boots), and libvirt's domain capabilities still offer ``kvm`` there. So the probe
        asks for the host CPU's vmx/svm feature in the capabilities XML (works on remote hosts
        too) and, for a local host, ``/proc/cpuinfo``; then that libvirt offers ``kvm``. Cached
        per host UUID; the TCG fallback is logged once per host.
        """
        with libvirt_errors("reading host capabilities", host=self.host):
            caps = ET.fromstring(self.connection.getCapabilities())
        uuid = caps.findtext("host/uuid") or self.uri
        with _accelerators_lock:
            cached = _accelerators.get(uuid)
        if cached is not None:
            return cached
        answer = self._probe_accelerator(caps)
        with _accelerators_lock:
            if uuid in _accelerators:
                return _accelerators[uuid]
            _accelerators[uuid] = answer
        if answer.is_kvm:
            log.info("host %s: guests run under KVM (%s)", self.host, answer.reason)
        else:
            log.warning(
                "host %s: KVM is not usable (%s); guests run under TCG (domain type 'qemu'), "
                "several times slower",
                self.host,
                answer.reason,
            )
        return answer

    def _probe_accelerator(self, caps: ET.Element) -> Accelerator:
        features = {f.get("name") for f in caps.iterfind("host/cpu/feature")}
        flag: str | None = next((f for f in ("vmx", "svm") if f in features), None)
        if flag is None and urlsplit(self.uri).hostname is None:
            flag = _local_cpuinfo_flag()
        if flag is None:
            return Accelerator("qemu", "the host CPU has no vmx/svm flag")
        try:
            domcaps = ET.fromstring(
                self.connection.getDomainCapabilities(None, None, None, "kvm", 0)
            )
        except libvirt.libvirtError as exc:
            return Accelerator("qemu", f"libvirt offers no kvm domains: {exc.get_error_message()}")
        if domcaps.findtext("domain") != "kvm":
            return Accelerator("qemu", "libvirt offers no kvm domains")
        return Accelerator("kvm", f"host CPU has {flag} and libvirt offers kvm domains")

    # internals ------------------------------------------------------------------------------

    def _is_alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _connect(self) -> None:
        """Open (or reopen) under the reconnect policy; on success tell listeners if reopened."""
        ensure_event_loop()
        policy = self.reconnect_policy
        reopening = self._conn is not None
        old, self._conn = self._conn, None
        if old is not None:
            try:
                old.unregisterCloseCallback()
                old.close()
            except libvirt.libvirtError:
                pass  # the old connection is dead; closing it is only tidiness

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "cannot reach %s (attempt %d): %s; retrying",
                self.uri,
                state.attempt_number,
                exc,
            )

        retrying = Retrying(
            stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_seconds),
            wait=wait_exponential(multiplier=policy.first_wait, max=policy.max_wait),
            retry=retry_if_exception_type(libvirt.libvirtError),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            conn = retrying(libvirt.open, self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(
                f"cannot connect to {self.uri} after {policy.attempts} attempts / "
                f"{policy.max_seconds:g} s: {exc.get_error_message()}",
                host=self.host,
            ) from exc
        if self.keepalive is not None:
            try:
                conn.setKeepAlive(self.keepalive.interval, self.keepalive.count)
            except libvirt.libvirtError as exc:
                # In-process drivers (test:///) have no socket to keep alive.
                log.debug("no keepalive on %s: %s", self.uri, exc.get_error_message())
        try:
            conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError as exc:
            log.debug("no close callback on %s: %s", self.uri, exc.get_error_message())
        self._conn = conn
        self._lost = False
        if reopening:
            self.reconnects += 1
            log.warning("reconnected to %s", self.uri)
            for listener in list(self._listeners):
                try:
                    listener.connection_restored()
                except Exception:  # one listener's failure must not stop the others
                    log.exception("connection listener failed on restore")

    def _on_close(self, _conn: Any, reason: int, _opaque: object) -> None:
        """Runs on the event loop thread: never raises, never blocks (reconnects elsewhere)."""
        try:
            why = _CLOSE_REASONS.get(reason, str(reason))
            if self._closing or reason == libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT:
                return
            log.warning("connection to %s lost (%s)", self.uri, why)
            self._lost = True
            for listener in list(self._listeners):
                try:
                    listener.connection_lost(why)
                except Exception:
                    log.exception("connection listener failed on loss")
            if self.auto_reconnect:
                thread = threading.Thread(
                    target=self._reconnect_in_background,
                    name="compatlab-libvirt-reconnect",
                    daemon=True,
                )
                self._reconnect_thread = thread
                thread.start()
        except Exception:
            log.exception("close callback failed")

    def _reconnect_in_background(self) -> None:
        try:
            with self._lock:
                if self._closing or not self._lost:
                    return
                self._connect()
        except HypervisorError as exc:
            # Left lost: the next use of .connection tries again and raises to its caller.
            log.error("giving up reconnecting in the background: %s", exc)
        except Exception:
            log.exception("background reconnect failed")

    def wait_reconnected(self, timeout: float) -> bool:
        """Wait for a background reconnect in progress; True when the connection is open."""
        thread = self._reconnect_thread
        if thread is not None:
            thread.join(timeout)
        return self.is_open


def _local_cpuinfo_flag() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            for flag in ("vmx", "svm"):
                if flag in flags:
                    return flag
    return None
