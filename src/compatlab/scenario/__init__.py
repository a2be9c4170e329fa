"""The life of one cell: its VMs, their phases, and the one result it gets.

- :mod:`~compatlab.scenario.cell`: :func:`run_cell` -- attempts, reruns without the candidate,
  the verdict, exactly one result per cell;
- :mod:`~compatlab.scenario.runbook`: the phases of one VM in order, read like a runbook;
- :mod:`~compatlab.scenario.session`: one VM, watched by the hypervisor in every phase;
- :mod:`~compatlab.scenario.steps`: guest commands and payload installs;
- :mod:`~compatlab.scenario.checks`: health, crash evidence, boot time, custom checks;
- :mod:`~compatlab.scenario.context`: what a run hands every cell, and the seams.
"""

from compatlab.scenario.cell import infra_error_result, run_cell
from compatlab.scenario.context import CheckOutcome, LabContext

__all__ = ["CheckOutcome", "LabContext", "infra_error_result", "run_cell"]
