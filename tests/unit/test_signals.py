"""compatlab.signals: SIGTERM handled like Ctrl-C during a run, and both held back while a VM is
torn down. Signals are per process and only the main thread handles them, so the tests that
deliver one run it in a child Python process; the ones that only install and restore handlers
run here, in the main thread."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from compatlab.signals import SigtermInterrupts, Terminated, stop_signals_deferred
from tests.support.faultrun import default_sigint

ROOT = Path(__file__).resolve().parents[2]


def child(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python (compatlab importable); its output and exit status."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=ROOT,
        preexec_fn=default_sigint,  # not ignored, even when the suite runs in the background
    )


main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers can only be set from the main thread",
)


def test_sigterm_raises_terminated_a_keyboard_interrupt_once() -> None:
    result = child(
        """
        import os, signal, time
        from compatlab.signals import SigtermInterrupts, Terminated
        handler = SigtermInterrupts()
        assert handler.install()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt as exc:
            assert isinstance(exc, Terminated), type(exc)
            print("stopping:", exc, flush=True)
            # The run is stopping: a second SIGTERM must not cut its cleanup short.
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            print("cleaned up", flush=True)
        handler.restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "stopping: SIGTERM: the runner was asked to stop",
        "cleaned up",
    ]


def test_a_sigterm_lost_in_a_weakref_callback_is_raised_again_once_at_the_next_check() -> None:
    result = child(
        """
        import os, signal, sys, weakref
        from compatlab.signals import SigtermInterrupts, Terminated
        sys.unraisablehook = lambda u: print("dropped:", type(u.exc_value).__name__, flush=True)
        handler = SigtermInterrupts()
        assert handler.install()
        class Gone: pass
        gone = Gone()
        ref = weakref.ref(gone, lambda _: os.kill(os.getpid(), signal.SIGTERM))
        del gone  # the callback runs now; the handler raises in it; Python drops that
        print("went on", flush=True)
        try:
            handler.check()
        except Terminated:
            print("raised again", flush=True)
        handler.check()  # once only
        print("quiet", flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["dropped: Terminated", "went on", "raised again", "quiet"]


def test_a_sigterm_that_got_through_is_not_raised_again() -> None:
    result = child(
        """
        import os, signal, time
        from compatlab.signals import SigtermInterrupts, Terminated
        handler = SigtermInterrupts()
        assert handler.install()
        ticks = []
        tick = handler.checking(lambda: ticks.append(1))
        tick()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Terminated:
            handler.reached()  # as the runner's wait does when the stop leaves it
        tick()  # a wait in the cleanup after the stop: not cut short
        print(len(ticks), flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["2"]


def test_stop_signals_are_held_back_until_the_cleanup_is_done() -> None:
    result = child(
        """
        import os, signal, time
        from compatlab.signals import SigtermInterrupts, stop_signals_deferred
        SigtermInterrupts().install()
        try:
            with stop_signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
                print("cleanup done", flush=True)
        except KeyboardInterrupt as exc:
            print("then", type(exc).__name__, flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["cleanup done", "then Terminated"]


def test_without_the_runners_handler_a_held_back_sigterm_still_ends_the_process() -> None:
    """Outside a --matrix session SIGTERM keeps its default action -- after the cleanup."""
    result = child(
        """
        import os, signal, time
        from compatlab.signals import stop_signals_deferred
        with stop_signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            print("cleanup done", flush=True)
        print("never here", flush=True)
        """
    )
    assert result.returncode == -signal.SIGTERM
    assert result.stdout.splitlines() == ["cleanup done"]


def test_a_held_back_ctrl_c_is_a_keyboard_interrupt_after_the_cleanup() -> None:
    result = child(
        """
        import os, signal, time
        from compatlab.signals import stop_signals_deferred
        try:
            with stop_signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
                print("cleanup done", flush=True)
        except KeyboardInterrupt as exc:
            print("then", type(exc).__name__, flush=True)
        with stop_signals_deferred():
            pass
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["cleanup done", "then KeyboardInterrupt"]


def test_an_ignored_signal_stays_ignored() -> None:
    result = child(
        """
        import os, signal, time
        from compatlab.signals import stop_signals_deferred
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with stop_signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        print("still here", flush=True)
        """
    )
    assert (result.returncode, result.stdout) == (0, "still here\n"), result.stderr


@main_thread_only
def test_restore_puts_back_the_previous_handler_but_not_over_a_newer_one() -> None:
    def theirs(signum: int, frame: object) -> None:
        pass

    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, theirs)
        handler = SigtermInterrupts()
        assert handler.install()
        assert signal.getsignal(signal.SIGTERM) is not theirs
        handler.restore()
        assert signal.getsignal(signal.SIGTERM) is theirs

        handler = SigtermInterrupts()
        handler.install()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # someone else's, installed after ours
        handler.restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def test_nothing_is_installed_from_another_thread() -> None:
    outcome: list[object] = []

    def elsewhere() -> None:
        handler = SigtermInterrupts()
        outcome.append(handler.install())
        handler.restore()
        with stop_signals_deferred():
            outcome.append("body ran")

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert outcome == [False, "body ran"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_terminated_is_what_pytest_treats_as_an_interrupt() -> None:
    assert issubclass(Terminated, KeyboardInterrupt)
