"""How a runner stops: SIGINT (Ctrl-C) and SIGTERM, and the cleanup they must not cut short.

Python turns SIGINT into :class:`KeyboardInterrupt`, which pytest turns into an orderly stop:
each cell's ``with`` blocks tear its VM down, the report keeps what finished, and the run exits
with status 2 (interrupted). SIGTERM -- what a CI runner cancelling a job, ``timeout`` and
``systemctl stop`` send -- would by default end the process at once and leave the running VM,
its folder and overlay for ``compatlab gc``. During a ``--matrix`` session the plugin installs
:class:`SigtermInterrupts`, which makes SIGTERM a :class:`Terminated` (a ``KeyboardInterrupt``),
so the same orderly stop follows. Only the first SIGTERM is raised: later ones find the run
stopping already and are ignored, so a second ``kill`` cannot abort the teardown half-way (a
SIGKILL still ends the process, and ``compatlab gc`` removes what it left).

:func:`stop_signals_deferred` holds both signals back while the body runs -- removing a VM,
whose half-done removal would leave more behind than none -- and delivers them after it, to the
handler that was in place: Ctrl-C becomes ``KeyboardInterrupt``, a SIGTERM ``Terminated`` (or,
with no handler of ours, the default action: the process ends, cleanup done).

Signal handlers belong to the main thread: elsewhere nothing is installed or held back.

A handler's exception can be lost: raised while the main thread runs a weakref callback, a
``__del__`` or the garbage collector, it is "unraisable" and Python drops it. The runner's wait
for a cell calls :meth:`SigtermInterrupts.check` between its polls, which raises a lost SIGTERM
again. A SIGTERM lost anywhere else (collection, between two cells, writing the report) is not
raised again: the run finishes with exit status 0 and later SIGTERMs ignored. Python's own
Ctrl-C handler has the same gap; a second Ctrl-C gets through.

A signal's exception is raised wherever the main thread is, and on Python 3.11 that can be an
instruction without a line number (its traceback entry's ``tb_lineno`` is None). pytest cannot
render such an entry: its report of the interrupt fails with a ``TypeError`` and the run exits
1, not 2 (pytest-dev/pytest-xdist#1196 shows the same). :func:`renderable` drops those entries
before pytest renders the interrupt (the plugin's ``pytest_keyboard_interrupt``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

__all__ = [
    "STOP_SIGNALS",
    "SigtermInterrupts",
    "Terminated",
    "renderable",
    "stop_signals_deferred",
]

#: The signals that ask a runner to stop and clean up after itself.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, FrameType | None], Any] | int | None


class Terminated(KeyboardInterrupt):
    """The runner received SIGTERM. A ``KeyboardInterrupt``, so everything that cleans up
    after Ctrl-C -- and pytest's "interrupted" exit status -- applies to it unchanged."""

    def __init__(self) -> None:
        super().__init__("SIGTERM: the runner was asked to stop")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class SigtermInterrupts:
    """SIGTERM raises :class:`Terminated` in the main thread while installed.

    ``install()`` then ``restore()``: the handler in place before comes back, unless another
    one has replaced ours meanwhile (that one is left alone).
    """

    def __init__(self) -> None:
        self._previous: _Handler = None
        self._installed = False
        self.stopping = False
        self._through = False  # the stop reached the wait for a cell (raised there or left it)

    def install(self) -> bool:
        """Install the handler; False (and nothing done) outside the main thread."""
        if self._installed or not _in_main_thread():
            return False
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True
        return True

    def restore(self) -> None:
        if not self._installed or not _in_main_thread():
            return
        self._installed = False
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return  # the run is stopping already: let its cleanup finish
        self.stopping = True
        raise Terminated

    def check(self) -> None:
        """Raise :class:`Terminated` here if a SIGTERM came and its exception was lost.

        A handler runs between two instructions of the main thread, wherever that is. In a
        weakref callback, a ``__del__`` or the garbage collector, an exception is
        "unraisable": Python prints it and drops it, and the run went on with its stop ignored
        (later SIGTERMs too, since the run is "stopping"). The runner's wait for a cell calls
        this between its polls (:meth:`checking`), so a lost stop is raised again within one
        poll -- once: not after :meth:`reached`, so never in the cleanup after the stop."""
        if self.stopping and not self._through:
            self._through = True
            raise Terminated

    def reached(self) -> None:
        """A stop left the runner's wait for a cell: it got through, nothing to raise again."""
        self._through = True

    def checking(self, tick: Callable[[], None]) -> Callable[[], None]:
        """``tick`` after :meth:`check`: what the wait for a cell calls between its polls."""

        def checked() -> None:
            self.check()
            tick()

        return checked


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the body runs (main thread only), then deliver them,
    in the order they came, to the handlers in place before."""
    if not _in_main_thread():
        yield
        return
    received: list[int] = []

    def remember(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous: dict[int, _Handler] = {}
    try:
        for stop in STOP_SIGNALS:
            if signal.getsignal(stop) is None:
                continue  # set outside Python: it could not be put back, so it stays
            previous[stop] = signal.signal(stop, remember)
        yield
    finally:
        # Blocked meanwhile: one that came between two of these calls would find the first
        # handler put back and raise, leaving ``remember`` in place of the second for good.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for number, handler in previous.items():
                signal.signal(number, handler)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for number in received:
        _deliver(number, previous[number])


def _deliver(signum: int, handler: _Handler) -> None:
    if handler == signal.SIG_IGN:
        return
    if handler == signal.SIG_DFL:
        signal.raise_signal(signum)  # the default action, now that the cleanup is done
    elif callable(handler):
        handler(signum, None)


def renderable(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Leave out of ``excinfo``'s traceback the entries that point at no line (see the module
    doc), so that pytest can render the interrupt and the run exits as interrupted."""

    def has_a_line(entry: Any) -> bool:
        try:
            entry.lineno  # noqa: B018 -- the property pytest's rendering fails in
        except TypeError:
            return False
        return True

    excinfo.traceback = excinfo.traceback.filter(has_a_line)
