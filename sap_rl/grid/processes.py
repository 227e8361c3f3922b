"""Independent jobs in worker processes, a few at a time (the ``local`` backend, ``--workers N``).

The units of a grid are independent: each plays its own seeded games (or classifies its own
images) with its own seeded draws. :func:`run_jobs` runs them in ``N`` spawned processes instead
of one after the other, so a machine with ``N`` free cores finishes a grid up to ``N`` times
sooner and every unit's results are exactly those one process gets. Workers report progress (a
game finished) through :func:`post_event`; the parent receives the events in its own thread,
between results.

Workers are started with ``spawn`` (not ``fork``): the parent's torch and numba OpenMP thread
pools are not safe to fork. Each worker therefore imports the package afresh (a few seconds), and
jobs and their arguments must be picklable module-level functions and values.

Workers end with their parent, however it ends: a ``kill -9`` of ``sap-rl evaluate`` must not leave
workers computing for hours and then holding their memory. On Linux the kernel kills them
(``PR_SET_PDEATHSIG``); elsewhere a thread in each worker polls its parent
(:func:`exit_with_parent`).

Example:
    >>> from operator import neg
    >>> sorted(run_jobs(neg, [1, 2, 3], workers=2))
    [(1, -1), (2, -2), (3, -3)]
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

__all__ = ["exit_with_parent", "post_event", "run_jobs"]

T = TypeVar("T")
R = TypeVar("R")

_events: Any = None  # the parent's event queue, in a worker process


_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def exit_with_parent(parent_pid: int, *, poll_s: float = 0.5, use_prctl: bool = True) -> str:
    """Make this process end as soon as ``parent_pid``, its parent, ends; returns the way used.

    On Linux (``use_prctl``) the kernel sends this process ``SIGKILL`` when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``): ``"prctl"``. Otherwise a daemon thread checks
    ``os.getppid()`` every ``poll_s`` seconds and exits the process once it changed (the process
    was handed to another parent): ``"poll"``. Either way, if ``parent_pid`` is no longer the
    parent when this is called, the process exits at once (code 1).

    Example:
        >>> import subprocess, sys
        >>> code = ("import os; from sap_rl.grid.processes import exit_with_parent as e; "
        ...         "e(os.getpid())")
        >>> subprocess.run([sys.executable, "-c", code]).returncode  # not its own parent: gone
        1
    """
    armed = False
    if use_prctl and sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
            armed = prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    # A parent that died before this call sends no signal: check once, after arming.
    if os.getppid() != parent_pid:
        os._exit(1)
    if armed:
        return "prctl"
    threading.Thread(
        target=_watch_parent, args=(parent_pid, poll_s), name="exit-with-parent", daemon=True
    ).start()
    return "poll"


def _watch_parent(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(1)  # no cleanup: the results have no one to go to


def _start_worker(
    parent_pid: int,
    events: Any,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> None:
    global _events
    # First, before the (slow) initializer: an orphan must not build models nor play games.
    # The kernel's parent-death signal follows the parent *thread* that started the worker:
    # run_jobs starts its workers from the thread that iterates it, which outlives them.
    exit_with_parent(parent_pid)
    _events = events
    # Ctrl-C reaches the whole process group: the parent stops the workers, so they ignore it
    # (no traceback from every worker).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


def _run_job(job: Callable[[T], R], item: T) -> R:
    try:
        return job(item)
    except KeyboardInterrupt:
        # Workers ignore SIGINT, so the job stopped on a SIGTERM after saving its state
        # (sap_rl.signals.stop_between_steps): end the worker as SIGTERM asks, at once. The pool
        # would catch SystemExit and wait for the next job.
        os._exit(128 + signal.SIGTERM)


def post_event(event: Any) -> None:
    """Send ``event`` (picklable) to the parent's ``on_event``; does nothing outside a worker."""
    if _events is not None:
        _events.put(event)


def _drain(events: Any, on_event: Callable[[Any], None] | None) -> None:
    while True:
        try:
            event = events.get_nowait()
        except queue.Empty:
            return
        if on_event is not None:
            on_event(event)


def _stop_processes(processes: list[Any], grace_s: float | None) -> None:
    """SIGTERM to each process, wait for them to end, and SIGKILL those still running
    ``grace_s`` seconds later (``None``: wait as long as they take)."""
    for process in processes:
        process.terminate()
    # Sentinels, not join(): the pool's own thread reaps these processes.
    waiting = {process.sentinel: process for process in processes}
    deadline = None if grace_s is None else time.monotonic() + grace_s
    while waiting:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        for sentinel in mp_connection.wait(list(waiting), timeout=left):
            del waiting[sentinel]
    for process in waiting.values():
        process.kill()


def run_jobs(
    job: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    may_start: Callable[[], bool] = lambda: True,
    on_event: Callable[[Any], None] | None = None,
    poll_s: float = 0.25,
    stop_grace_s: float | None = None,
) -> Iterator[tuple[T, R]]:
    """Run ``job(item)`` for each item in ``workers`` processes; yield ``(item, result)`` as done.

    Items start in the order given, at most ``workers`` at a time. Before each start
    ``may_start()`` is asked; once it says no, no further item starts, the running ones finish
    and the rest are left unrun (a time limit).

    Args:
        job: picklable (module-level) function run in a worker.
        items: the jobs' arguments, picklable.
        workers: processes (>= 1).
        initializer: run once in each worker with ``initargs`` (e.g. build the model and envs).
        initargs: picklable arguments of ``initializer``.
        may_start: asked before each start; ``False`` stops starting new items.
        on_event: called in the parent with each :func:`post_event` of a worker.
        poll_s: how often events are handed to ``on_event`` while jobs run.
        stop_grace_s: when the iteration stops early, how long workers may take to end after
            their SIGTERM (a job saving its state) before they are killed; ``None`` (the
            default): as long as they take, since a training checkpoint of gigabytes may take
            minutes to write (a second Ctrl-C in the parent stops at once).

    Raises:
        Whatever a job raised (the other workers are stopped first). Stopping the iteration early
        (an exception in the consumer, Ctrl-C) stops the workers without waiting for their jobs:
        each gets SIGTERM, ends once it saved what it keeps (a job that handles SIGTERM), and
        gets ``SIGKILL`` if it still runs ``stop_grace_s`` seconds later.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    context = mp.get_context("spawn")
    events = context.Queue()
    pending = list(items)[::-1]
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker,
        initargs=(os.getpid(), events, initializer, initargs),
    )  # fmt: skip
    running: dict[Future[R], T] = {}
    clean_exit = False
    try:
        while pending or running:
            while pending and len(running) < workers and may_start():
                item = pending.pop()
                running[pool.submit(_run_job, job, item)] = item
            if not running:
                break
            finished, _ = wait(running, timeout=poll_s, return_when=FIRST_COMPLETED)
            _drain(events, on_event)
            for future in [f for f in running if f in finished]:  # in start order
                item = running.pop(future)
                yield item, future.result()
        clean_exit = True
    finally:
        if not clean_exit:
            # Jobs still running may take hours: stop their processes instead of waiting for
            # them. SIGTERM lets a job save its state first (sap_rl.signals.stop_between_steps).
            _stop_processes(list(getattr(pool, "_processes", {}).values()), stop_grace_s)
        pool.shutdown(wait=True, cancel_futures=True)
        _drain(events, on_event if clean_exit else None)
        events.close()
        events.join_thread()
