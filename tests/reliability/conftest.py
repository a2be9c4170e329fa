"""The fault campaign (real VMs, several scenarios at a time) and the reliability counts.

Two things live here:

* :func:`campaign` -- a session fixture that runs the fault scenarios the selected tests need
  (``@pytest.mark.scenario("name")``, registered by the test modules with
  :func:`tests.support.faultrun.scenario`), side by side within a budget of guests
  (``COMPATLAB_RELIABILITY_GUESTS``, default 4 on these 2-core TCG machines: a guest that
  waits out a timeout or bakes costs no CPU), longest first; one that needs more guests than
  the budget allows for now lets the next ones pass it
  (:class:`~tests.support.faultrun.GuestBudget`).
  Each test module's tests wait only for their own scenario. Every scenario has its own private
  lab (libvirtd + virtlogd in their own namespaces, its own storage root), so what one fault
  does, or leaves, is never another's, and nothing on the system daemon is touched.
  It starts when the session's tests start, not when its first test runs: while the other
  real-VM tests (tests/lab, on the system daemon) run, it runs what they leave of
  :data:`SHARED_GUESTS` -- one guest beside a test that runs two, two beside one that runs one
  (``@pytest.mark.guests(1)``; tests/lab/conftest.py puts those last); from its own first test
  on, the whole budget.
* :class:`ReliabilityLedger` -- a plugin that counts, over the whole session: faults injected
  (tests marked ``fault``) and how many ended with the right verdict (passed; an ``xfail`` is a
  known bug, counted as wrong), what the scenarios left behind (domains, disks, folders, QEMU
  processes, ports: 0), and hostile inputs tried and handled (the hostile-input test files
  below; a test may record how many inputs it tried with
  ``record_property("hostile_inputs", N)``, else it counts as one). It writes
  ``reports/reliability.json`` and prints one line at the end of the session.

Registered from ``pytest_configure`` here as a plugin, not as conftest hooks, so that it sees the
reports of tests outside this folder (tests/unit's hostile inputs) too: conftest hooks only see
their own folder's items. It is active whenever this folder is collected (``make test`` runs
``pytest tests``).
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

from tests.support.faultrun import SCENARIOS, GuestBudget, Outcome
from tests.support.lab import DEFAULT_GUESTS, guests_of

GUEST_BUDGET = int(os.environ.get("COMPATLAB_RELIABILITY_GUESTS", "4"))
#: Guests on this host at once while the campaign shares it with the other real-VM tests: the
#: campaign gets what their test of the moment leaves (``guests`` mark, tests/lab/conftest.py),
#: at least one. Four were measured too many: with tests/lab's two beside two of the campaign's,
#: demo-agent-dead's guest got 40% of a vCPU over its 60 s boot timeout and the lab rightly
#: called it starved (infra_error), failing the test.
SHARED_GUESTS = 3
#: The campaign's budget from the session's start until the first test says what it leaves.
SHARED_BUDGET = SHARED_GUESTS - DEFAULT_GUESTS
STAGGER = 4.0  # seconds between two scenario starts: first boots do not all collide

#: Files whose tests are the hostile inputs of issue 8 (its classes: inputs that crash the
#: loader, values that misbehave later, shell quoting, report rendering, unbounded guest text).
#: Each test counts as one input tried unless it records how many it tried
#: (``record_property("hostile_inputs", N)``, e.g. a fuzzer's examples); handled if it passed.
HOSTILE_INPUT_FILES = (
    "tests/unit/test_hostile_files.py",
    "tests/unit/test_hostile_values.py",
    "tests/unit/test_fuzz_loaders.py",
    "tests/unit/test_quoting.py",
    "tests/unit/test_report_hostile.py",
    "tests/unit/test_results_writer.py",
    "tests/unit/test_guest_text.py",
    "tests/unit/test_command_output.py",
)

_NEEDED = pytest.StashKey[list[str]]()
_LEDGER = pytest.StashKey["ReliabilityLedger"]()
_CAMPAIGN = pytest.StashKey["Campaign | BaseException"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "scenario(name): the fault scenario (tests/reliability) this test reads"
    )
    config.addinivalue_line(
        "markers", "fault(name): this test judges the verdict after the fault `name` (counted)"
    )
    if _LEDGER not in config.stash:
        ledger = ReliabilityLedger(config)
        config.stash[_LEDGER] = ledger
        config.pluginmanager.register(ledger, "compatlab-reliability-ledger")


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needed: list[str] = []
    for item in items:
        for mark in item.iter_markers("scenario"):
            if mark.args[0] not in needed:
                needed.append(mark.args[0])
    config.stash[_NEEDED] = needed


# -- the campaign -----------------------------------------------------------------------------


class Campaign:
    """Runs scenarios in background threads within a guest budget; :meth:`get` waits for one."""

    def __init__(self, names: list[str], root: Path, budget: int = GUEST_BUDGET) -> None:
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            raise pytest.UsageError(f"unknown fault scenarios: {unknown}")
        self.root = root
        self.pending = sorted((SCENARIOS[n] for n in names), key=lambda s: (s.order, s.name))
        self.done: dict[str, Outcome | BaseException] = {}
        self.started: dict[str, float] = {}
        self.guests = GuestBudget(cap=GUEST_BUDGET, size=budget)
        self.cancelled = False
        self.lock = threading.Condition()
        self.began = time.monotonic()
        self.scheduler = threading.Thread(target=self._schedule, name="fault-campaign")
        self.scheduler.start()

    def _schedule(self) -> None:
        waiting = list(self.pending)
        while waiting:
            with self.lock:
                self.lock.wait_for(lambda: self.cancelled or self.guests.next(waiting) is not None)
                if self.cancelled:
                    for left in waiting:
                        self.done[left.name] = pytest.skip.Exception("the campaign was cancelled")
                    self.lock.notify_all()
                    return
                item = self.guests.next(waiting)
                assert item is not None
                waiting.remove(item)
                need = self.guests.need(item)
                self.guests.free -= need
                self.started[item.name] = time.monotonic() - self.began
            threading.Thread(
                target=self._one, args=(item.name, need), name=f"fault-{item.name}"
            ).start()
            time.sleep(STAGGER)

    def _one(self, name: str, need: int) -> None:
        started = time.monotonic()
        try:
            outcome: Outcome | BaseException = SCENARIOS[name].run(self.root / name)
            assert isinstance(outcome, Outcome)
            outcome.seconds = round(time.monotonic() - started, 1)
        except BaseException as exc:  # handed to the tests that read this scenario
            exc.add_note(f"fault scenario {name!r}:\n{traceback.format_exc()}")
            outcome = exc
        with self.lock:
            self.done[name] = outcome
            self.guests.free += need
            self.lock.notify_all()

    def share(self, size: int) -> None:
        """From now on, up to ``size`` guests at once: what the test running beside it leaves
        (GuestBudget.share)."""
        with self.lock:
            self.guests.share(size)
            self.lock.notify_all()

    def widen(self) -> None:
        """Its whole budget, for good: the tests it shared the host with are done."""
        with self.lock:
            self.guests.widen()
            self.lock.notify_all()

    def get(self, name: str) -> Outcome:
        with self.lock:
            self.lock.wait_for(lambda: name in self.done)
        outcome = self.done[name]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def cancel(self) -> None:
        """Start nothing more (an interrupted or stopped session); running scenarios finish."""
        with self.lock:
            self.cancelled = True
            self.lock.notify_all()

    def join(self) -> None:
        self.scheduler.join()
        with self.lock:
            self.lock.wait_for(lambda: len(self.done) == len(self.pending))


def _start(config: pytest.Config, budget: int) -> Campaign | BaseException:
    """The campaign of the selected tests' scenarios, or why it cannot run (a skip or a
    failure from require_fault_lab, raised by the first test that reads it)."""
    from tests.support.faultrun import require_fault_lab

    try:
        require_fault_lab()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pytest's skip and fail outcomes are BaseExceptions
        return exc
    root = config._tmp_path_factory.mktemp("faults")  # type: ignore[attr-defined]
    return Campaign(config.stash.get(_NEEDED, []), root, budget)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the campaign with the session's first test (see the module's docstring). Not in
    an xdist worker, which would start one per worker: there the first test that reads it
    starts it, with the whole budget."""
    config = session.config
    if not config.stash.get(_NEEDED, []) or config.option.collectonly:
        return
    if hasattr(config, "workerinput"):
        return
    here = Path(__file__).parent
    sharing = any(
        item.get_closest_marker("slow") and here not in item.path.parents for item in session.items
    )
    config.stash[_CAMPAIGN] = _start(config, SHARED_BUDGET if sharing else GUEST_BUDGET)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> None:
    """Before each real-VM test outside this folder (pytest calls this for every item, not
    only this folder's), the campaign gets the guests that test leaves free."""
    running = item.config.stash.get(_CAMPAIGN, None)
    if not isinstance(running, Campaign) or not item.get_closest_marker("slow"):
        return
    if Path(__file__).parent not in item.path.parents:
        running.share(max(1, SHARED_GUESTS - guests_of(item)))


@pytest.fixture(scope="session")
def campaign(request: pytest.FixtureRequest) -> Campaign:
    """The selected tests' fault scenarios: from here on with the whole guest budget."""
    config = request.config
    if _CAMPAIGN not in config.stash:
        config.stash[_CAMPAIGN] = _start(config, GUEST_BUDGET)
    running = config.stash[_CAMPAIGN]
    if isinstance(running, BaseException):
        raise running
    running.widen()
    return running


def _finish(config: pytest.Config) -> Campaign | None:
    """Every test has run (or the session was interrupted, or stopped at a failure): scenarios
    not started by now are read by no one; the running ones finish. The campaign, if any."""
    running = config.stash.get(_CAMPAIGN, None)
    if not isinstance(running, Campaign):
        return None
    running.cancel()
    running.join()
    return running


# -- the counts -------------------------------------------------------------------------------


class ReliabilityLedger:
    """Counts faults, verdicts, leftovers and hostile inputs; writes reports/reliability.json."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.faults: list[dict[str, Any]] = []
        self.hostile: dict[str, dict[str, int]] = {}
        self.scenarios: dict[str, Outcome] = {}
        self.campaign_seconds: float | None = None
        self.path: Path | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        root = self.config.rootpath
        for item in items:
            mark = item.get_closest_marker("fault")
            if mark is not None:
                item.user_properties.append(("reliability_fault", mark.args[0]))
            try:
                relative = item.path.relative_to(root).as_posix()
            except ValueError:
                continue
            if relative in HOSTILE_INPUT_FILES:
                item.user_properties.append(("reliability_hostile", relative))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if report.when == "setup" and report.outcome == "passed":
            return
        if report.when == "teardown" and report.outcome == "passed":
            return
        if report.when == "setup" and report.skipped and not hasattr(report, "wasxfail"):
            return  # not run here (no lab): neither injected nor judged
        if "reliability_fault" in props:
            xfail = hasattr(report, "wasxfail")
            self.faults.append(
                {
                    "fault": props["reliability_fault"],
                    "test": report.nodeid,
                    "outcome": "xfail" if xfail else report.outcome,
                    "right_verdict": report.passed and not xfail and report.when == "call",
                    "known_bug": getattr(report, "wasxfail", None),
                }
            )
        if "reliability_hostile" in props:
            if report.skipped and not hasattr(report, "wasxfail"):
                return
            tried = int(str(props.get("hostile_inputs", 1)))
            counts = self.hostile.setdefault(
                str(props["reliability_hostile"]), {"tried": 0, "handled": 0}
            )
            counts["tried"] += tried
            counts["handled"] += tried if report.passed and report.when == "call" else 0

    def summary(self) -> dict[str, Any]:
        leaks = {"domains": 0, "disks": 0, "folders": 0, "qemu_processes": 0, "ports": 0}
        for outcome in self.scenarios.values():
            for key, values in outcome.leftovers.as_json().items():
                leaks[key] += len(values)
        right = sum(1 for f in self.faults if f["right_verdict"])
        return {
            "faults": {
                "injected": len(self.faults),
                "right_verdicts": right,
                "known_bugs": [
                    {"test": f["test"], "reason": f["known_bug"]}
                    for f in self.faults
                    if f["known_bug"]
                ],
                "tests": self.faults,
            },
            "leaks": {**leaks, "scenarios_checked": len(self.scenarios)},
            "hostile_inputs": {
                "tried": sum(c["tried"] for c in self.hostile.values()),
                "handled": sum(c["handled"] for c in self.hostile.values()),
                "by_file": self.hostile,
            },
            "campaign_seconds": self.campaign_seconds,
            "scenarios": {n: o.as_json() for n, o in sorted(self.scenarios.items())},
        }

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        running = _finish(self.config)
        if running is not None:
            self.scenarios = {n: o for n, o in running.done.items() if isinstance(o, Outcome)}
            self.campaign_seconds = round(time.monotonic() - running.began, 1)
        if hasattr(self.config, "workerinput") or not (self.faults or self.hostile):
            return
        folder = self.config.rootpath / "reports"
        folder.mkdir(exist_ok=True)
        self.path = folder / "reliability.json"
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.summary(), indent=1, default=str) + "\n")
        tmp.replace(self.path)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.path is None:
            return
        s = self.summary()
        f, leaks, hostile = s["faults"], s["leaks"], s["hostile_inputs"]
        bugs = len(f["known_bugs"])
        line = (
            f"compatlab reliability: {f['injected']} faults injected, "
            f"{f['right_verdicts']} right verdicts"
            + (f" ({bugs} known bugs, xfail)" if bugs else "")
            + f"; leaked {leaks['domains']} domains, {leaks['disks']} disks, "
            f"{leaks['folders']} folders, {leaks['ports']} ports, "
            f"{leaks['qemu_processes']} QEMUs ({leaks['scenarios_checked']} scenarios checked); "
            f"hostile inputs: {hostile['tried']} tried, {hostile['handled']} handled "
            f"-> {self.path}"
        )
        terminalreporter.write_sep("-", "compatlab reliability")
        terminalreporter.write_line(line)
