"""Worker processes of ``sap-rl evaluate --workers`` (:mod:`sap_rl.rl.workers`).

Jobs are standard-library functions (and :func:`post_event` itself), so that the spawned workers
can unpickle them whatever way pytest imports this file.
"""

from __future__ import annotations

import math
import operator

import pytest

from sap_rl.rl.workers import post_event, run_jobs


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
    post_event("nobody listens")


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        list(run_jobs(abs, [1], workers=0))
