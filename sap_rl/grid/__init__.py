"""The grid engine: cells of independent units, run on an executor, kept in an output folder.

Domain-free (it imports neither :mod:`sap_rl.rl` nor :mod:`sap_rl.vision`): RL evaluation
(``sap-rl evaluate``), vision evaluation (``sap-rl vision evaluate``) and training sweeps describe
their work as cells and units and hand it to :func:`run_grid`; where units run is an executor's
business (``--backend local|ray``, ``--workers N``), and never changes a result.

- :mod:`sap_rl.grid.units`: units and their stable seeds;
- :mod:`sap_rl.grid.store`: the output folder (fingerprint, unit files, timings);
- :mod:`sap_rl.grid.engine`: resume, run, write cells, progress, version stamps;
- :mod:`sap_rl.grid.executors`: ``local`` (this process or N processes) and the factory;
- :mod:`sap_rl.grid.processes`: worker processes that die with their parent;
- :mod:`sap_rl.grid.ray_backend`: ``ray`` (optional: ``pip install "sap-rl[ray]"``).

Example:
    >>> from sap_rl.grid import split_cell, stable_seed
    >>> len(split_cell("dense__clean", 10, 4)), stable_seed(0) == stable_seed(0)
    (3, True)
"""

from __future__ import annotations

from sap_rl.grid.engine import CellFiles, GridRun, JsonCells, progress_bar, run_grid, versions
from sap_rl.grid.executors import BACKENDS, Executor, LocalExecutor, Runner, Work, make_executor
from sap_rl.grid.store import check_run_file, write_run_file
from sap_rl.grid.threads import set_threads
from sap_rl.grid.units import Unit, split_cell, stable_seed

__all__ = [
    "BACKENDS",
    "CellFiles",
    "Executor",
    "GridRun",
    "JsonCells",
    "LocalExecutor",
    "Runner",
    "Unit",
    "Work",
    "check_run_file",
    "make_executor",
    "progress_bar",
    "run_grid",
    "set_threads",
    "split_cell",
    "stable_seed",
    "versions",
    "write_run_file",
]
