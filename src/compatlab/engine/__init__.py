"""Where cells run side by side: an existing distributed engine (Dask distributed).

* :mod:`compatlab.engine.task` -- the task a worker runs for one cell, and its evidence bundle;
* :mod:`compatlab.engine.cluster` -- the controller's side: the embedded cluster or a lab's
  scheduler, placement by resources, lost workers as lab failures;
* :mod:`compatlab.engine.handle` -- one cell handed to the engine: its attempts, one result;
* :mod:`compatlab.engine.order` -- longest expected first, and how many cells at once (pure);
  :mod:`compatlab.engine.earlier` reads the expected times from earlier runs;
* :mod:`compatlab.engine.worker` -- ``compatlab worker``: a Dask worker that drives its host's
  libvirt.
"""

from compatlab.engine.cluster import CellHandle, DaskEngine
from compatlab.engine.task import CellTask, EvidenceBundle, TaskOutcome, run_cell_task

__all__ = ["CellHandle", "CellTask", "DaskEngine", "EvidenceBundle", "TaskOutcome", "run_cell_task"]
