"""Observations -> verdict + attribution. Pure: no clock, no I/O, no libvirt.

- :mod:`compatlab.verdict.watcher`: :class:`BootWatcher`, a VM's events in, boots, crashes,
  boot loops, hangs and dead channels out, each labelled with the phase it happened in;
- :mod:`compatlab.verdict.decide`: :func:`decide`, a cell's phases and reruns in, one
  :class:`Decision` out, by the one severity table (:data:`compatlab.model.SEVERITY`).
"""

from compatlab.verdict.decide import Decision, Observations, RunObservations, decide, judge
from compatlab.verdict.watcher import BootPolicy, BootWatcher, Finding, FindingKind, bugcheck_of

__all__ = [
    "BootPolicy",
    "BootWatcher",
    "Decision",
    "Finding",
    "FindingKind",
    "Observations",
    "RunObservations",
    "bugcheck_of",
    "decide",
    "judge",
]
