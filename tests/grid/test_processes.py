"""Worker processes of ``sap-rl evaluate --workers`` (:mod:`sap_rl.grid.processes`).

Jobs are standard-library functions (and :func:`post_event` itself), so that the spawned workers
can unpickle them whatever way pytest imports this file.
"""

from __future__ import annotations

import math
import operator
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sap_rl.grid import processes as workers
from sap_rl.grid.processes import post_event, run_jobs


def test_results_pair_with_their_items() -> None:
    results = dict(run_jobs(operator.neg, range(5), workers=2))
    assert results == {i: -i for i in range(5)}


def test_events_reach_the_parent() -> None:
    events: list[str] = []
    done = [item for item, _ in run_jobs(post_event, ["a", "b", "c"], workers=2,
                                         on_event=events.append)]  # fmt: skip
    assert sorted(done) == ["a", "b", "c"] and sorted(events) == ["a", "b", "c"]


def test_may_start_stops_new_jobs() -> None:
    started: list[int] = []

    def may_start() -> bool:
        started.append(1)
        return len(started) <= 2  # the first two starts only

    assert sorted(run_jobs(abs, [-1, -2, -3, -4], workers=1, may_start=may_start)) == [
        (-2, 2),
        (-1, 1),
    ]


def test_a_failing_job_raises_in_the_parent() -> None:
    with pytest.raises(ValueError, match="math domain error"):
        list(run_jobs(math.sqrt, [4.0, -1.0, 9.0], workers=2))


def test_post_event_outside_a_worker_does_nothing() -> None:
    assert workers._events is None  # the parent has no queue to post into
    post_event("nobody listens")
    events: list[str] = []
    list(run_jobs(post_event, ["from a worker"], workers=1, on_event=events.append))
    assert events == ["from a worker"]  # the parent's own event went nowhere
    assert workers._events is None  # and running jobs gave the parent no queue either


# Jobs run by exec, as a unit of games is stopped: once SIGTERM asks, the job saves (slowly) and
# raises KeyboardInterrupt. Each tells the parent its pid once its handler is set.
_STOPPING_JOB = """
import os, time
from pathlib import Path
from sap_rl.grid.processes import post_event
from sap_rl.signals import stop_between_steps
with stop_between_steps() as stop_requested:
    post_event(os.getpid())
    deadline = time.monotonic() + 60  # if no stop comes: end, and fail the test's timing
    while not stop_requested() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep({save_s})
    Path({path!r}).write_text("saved")
    raise KeyboardInterrupt
"""
_STUCK_JOB = """
import os, signal, time
from sap_rl.grid.processes import post_event
signal.signal(signal.SIGTERM, signal.SIG_IGN)
post_event(os.getpid())
time.sleep(60)
"""


class _Stop(Exception):
    pass


def _stop_when_running(jobs: list[str], grace_s: float | None) -> tuple[list[int], float]:
    """Run ``jobs`` on one worker each, stop the parent once all run; the pids and stop seconds."""
    pids: list[int] = []
    stopped = 0.0

    def on_event(pid: int) -> None:
        nonlocal stopped
        pids.append(pid)
        if len(pids) == len(jobs):
            stopped = time.monotonic()
            raise _Stop  # the parent stops (as on Ctrl-C) while every job runs

    with pytest.raises(_Stop):
        list(run_jobs(exec, jobs, workers=len(jobs), on_event=on_event, stop_grace_s=grace_s))
    return pids, time.monotonic() - stopped


def test_stopped_jobs_save_and_their_workers_end(tmp_path: Path) -> None:
    # The first worker to end breaks the pool, whose thread then sends the other a second SIGTERM:
    # it must still finish saving.
    saved = [tmp_path / "a", tmp_path / "b"]
    delays = (0.2, 1.0)
    jobs = [_STOPPING_JOB.format(path=str(p), save_s=s) for p, s in zip(saved, delays, strict=True)]
    pids, seconds = _stop_when_running(jobs, grace_s=None)  # the default: no time limit
    assert [p.read_text() for p in saved] == ["saved", "saved"]
    assert not any(_running(pid) for pid in pids)
    assert seconds < 15  # the workers ended once saved, not with their 60 s jobs


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    pids, seconds = _stop_when_running([_STUCK_JOB], grace_s=1.0)
    assert not _running(pids[0])
    assert seconds < 15  # not at the end of its 60 s job


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        list(run_jobs(abs, [1], workers=0))


# A parent that starts long jobs and then waits, as `sap-rl evaluate --workers 2` does; each worker
# (or the plain child of the fallback) writes its pid into the file named by argv[1].
_PARENT = """
import multiprocessing as mp
import os
import sys
import time

from sap_rl.grid.processes import exit_with_parent, post_event, run_jobs


def long_job(seconds):
    post_event(os.getpid())
    time.sleep(seconds)


def polling_child(parent_pid, pid_file):
    exit_with_parent(parent_pid, use_prctl=False, poll_s=0.1)
    with open(pid_file, "a") as f:
        print(os.getpid(), file=f)
    time.sleep(600)


def record(pid):
    with open(sys.argv[1], "a") as f:
        print(pid, file=f)


if __name__ == "__main__":
    if sys.argv[2] == "pool":
        for _ in run_jobs(long_job, [600, 600], workers=2, on_event=record):
            pass
    else:
        child = mp.get_context("spawn").Process(
            target=polling_child, args=(os.getpid(), sys.argv[1])
        )
        child.start()
        time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("mode", "n_children"), [("pool", 2), ("poll", 1)])
def test_children_exit_when_the_parent_is_killed(
    tmp_path: Path, mode: str, n_children: int
) -> None:
    script, pid_file = tmp_path / "parent.py", tmp_path / "pids.txt"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file), mode])
    pids: list[int] = []
    try:
        assert _wait_for(
            lambda: pid_file.is_file() and len(pid_file.read_text().split()) == n_children, 60
        ), "the children did not start"
        pids = [int(p) for p in pid_file.read_text().split()]
        assert all(_running(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert _wait_for(lambda: not any(_running(pid) for pid in pids), 5), (
            f"children {[p for p in pids if _running(p)]} outlived their killed parent"
        )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in pids:  # only if the test failed: do not leave them sleeping
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
