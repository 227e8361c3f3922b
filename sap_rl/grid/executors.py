"""Where units run: this process, N local processes (``--backend local``) or Ray (``ray``).

An executor takes a :class:`Work` (how to build a unit runner in a worker: a picklable
module-level ``factory`` and its ``args``, e.g. a model's weights) and a list of
:class:`~sap_rl.grid.units.Unit` s, and yields ``(unit, result, seconds)`` as units finish.
Every worker builds its runner once (package import, model load) and then runs many units.
Executors change only where and when units run, never a result: a unit's seeds come from the
unit itself (:mod:`sap_rl.grid.units`).

Example:
    >>> with make_executor("local", 1) as executor:
    ...     done = list(executor.run(Work(_Echo, ()), split_cell("c", 3, 1)))
    >>> [(unit.index, result) for unit, result, _ in done]
    [(0, 0), (1, 1), (2, 2)]
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from sap_rl.errors import UserError
from sap_rl.grid.processes import post_event, run_jobs
from sap_rl.grid.units import Unit, split_cell  # noqa: F401  (split_cell: the example)

__all__ = [
    "BACKENDS",
    "Backend",
    "Executor",
    "LocalExecutor",
    "Runner",
    "Work",
    "make_executor",
]

logger = logging.getLogger(__name__)

Backend = Literal["local", "ray"]
BACKENDS: tuple[str, ...] = get_args(Backend)

#: Called by a runner with a number of items (games) just finished, for the progress bar.
Report = Callable[[int], None]


class Runner(Protocol):
    """Runs one unit in a worker and returns its (picklable) result."""

    def __call__(self, unit: Unit, report: Report) -> Any: ...


@dataclass(frozen=True)
class Work:
    """How a worker builds its :class:`Runner`: ``factory(*args)``, once per worker.

    Attributes:
        factory: a picklable module-level callable (a class or function).
        args: its arguments, sent to each worker once (with Ray: put in the object store once).
        threads: CPU threads of torch and numba in a worker process (``None``: 1); the
            in-process runner leaves the caller's setting alone.
    """

    factory: Callable[..., Runner]
    args: tuple[Any, ...]
    threads: int | None = None


class Executor(Protocol):
    """Runs units; a context manager that starts its workers' runtime and shuts it down."""

    workers: int

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...

    def run(
        self,
        work: Work,
        units: Sequence[Unit],
        *,
        may_start: Callable[[], bool] = ...,
        on_report: Callable[[Unit, int], None] | None = ...,
    ) -> Iterator[tuple[Unit, Any, float]]:
        """Yield ``(unit, result, seconds)`` as units end; none starts once ``may_start`` is no."""
        ...


class _Echo:
    """A runner that returns its unit's first item (for examples and tests)."""

    def __call__(self, unit: Unit, report: Report) -> int:
        report(unit.size)
        return unit.start


def _always() -> bool:
    return True


def _ignore(items: int) -> None:
    del items


class LocalExecutor:
    """Units in this process (``workers == 1``) or in ``workers`` spawned processes.

    Example:
        >>> LocalExecutor(2).workers
        2
    """

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise UserError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(
        self,
        work: Work,
        units: Sequence[Unit],
        *,
        may_start: Callable[[], bool] = _always,
        on_report: Callable[[Unit, int], None] | None = None,
    ) -> Iterator[tuple[Unit, Any, float]]:
        """Run ``units`` here one after the other, or in worker processes (see class docs)."""
        if not units:
            return
        if self.workers == 1 or len(units) == 1:
            yield from self._here(work, units, may_start, on_report)
            return
        cores = os.cpu_count() or 1
        if self.workers > cores:
            logger.warning("%d workers on %d CPU cores: they will share cores (slower per unit)",
                           self.workers, cores)  # fmt: skip
        by_key = {unit.key: unit for unit in units}

        def on_event(event: Any) -> None:
            key, items = event
            if on_report is not None:
                on_report(by_key[key], items)

        for unit, (result, seconds) in run_jobs(
            _process_unit, units, workers=min(self.workers, len(units)),
            initializer=_process_setup, initargs=(work,), may_start=may_start, on_event=on_event,
        ):  # fmt: skip
            yield unit, result, seconds

    @staticmethod
    def _here(
        work: Work,
        units: Sequence[Unit],
        may_start: Callable[[], bool],
        on_report: Callable[[Unit, int], None] | None,
    ) -> Iterator[tuple[Unit, Any, float]]:
        runner = work.factory(*work.args)
        try:
            for unit in units:
                if not may_start():
                    return
                report = functools.partial(on_report, unit) if on_report else _ignore
                start = time.perf_counter()
                result = runner(unit, report)
                yield unit, result, time.perf_counter() - start
        finally:
            with contextlib.suppress(Exception):
                close = getattr(runner, "close", None)
                if close is not None:
                    close()


_runner: dict[str, Runner] = {}  # a worker process's runner (_process_setup)


def prepare_worker(threads: int | None) -> None:
    """Settings of a process of our own that runs units: memory reuse and CPU threads."""
    from sap_rl.grid.threads import set_threads
    from sap_rl.memory import keep_freed_memory

    keep_freed_memory()  # a process of our own: the setting of the sap-rl command line
    set_threads(threads or 1)


def _process_setup(work: Work) -> None:
    prepare_worker(work.threads)
    _runner["runner"] = work.factory(*work.args)


def _process_unit(unit: Unit) -> tuple[Any, float]:
    start = time.perf_counter()
    result = _runner["runner"](unit, lambda n: post_event((unit.key, n)))
    return result, time.perf_counter() - start


def make_executor(backend: str, workers: int | None = None) -> Executor:
    """The executor of ``--backend`` with ``--workers`` (``None``: 1 locally, all CPUs on Ray).

    Raises:
        UserError: an unknown backend, ``workers`` < 1, or ``ray`` without Ray installed.

    Example:
        >>> make_executor("local").workers
        1
        >>> make_executor("dask")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sap_rl.errors.UserError: unknown backend 'dask'; use local or ray
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise UserError(f"workers must be an integer >= 1, got {workers!r}")
    if backend == "ray":
        from sap_rl.grid.ray_backend import RayExecutor

        return RayExecutor(workers)
    return LocalExecutor(workers or 1)
