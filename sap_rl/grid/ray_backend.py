"""The ``ray`` backend: units on the actors of a Ray cluster (``--backend ray``).

Ray is optional (``pip install "sap-rl[ray]"``). Following Ray's own convention, ``ray.init()``
joins the cluster named by ``RAY_ADDRESS`` if it is set and otherwise starts a local one that
ends with the command; inside a process that already called ``ray.init`` (a notebook, a test),
that runtime is used and left running.

How the work travels:

- the runner's arguments (a model's weights, its settings) go to the object store once
  (``ray.put``); each actor fetches them once when it starts;
- actors are long-lived: one per worker, each builds its runner once (package import, model
  load) and then runs unit after unit;
- finished units stream back to the driver as they end (``ray.wait``); the driver writes the
  files, so nodes need no shared file system;
- a unit whose actor dies (a killed process, a lost node) is run again on a fresh actor, up to
  :data:`MAX_RETRIES` times; a unit's result is taken once, from the attempt that finished, so
  nothing is lost or counted twice. An exception raised by a unit is raised in the driver.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sap_rl.errors import UserError
from sap_rl.grid.executors import Work, prepare_worker
from sap_rl.grid.units import Unit

__all__ = ["CONNECT_TIMEOUT_S", "MAX_RETRIES", "RayExecutor", "check_address"]

logger = logging.getLogger(__name__)

MAX_RETRIES = 3
CONNECT_TIMEOUT_S = 10.0
INSTALL_HINT = 'pip install "sap-rl[ray]"'


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}") from (
            None
        )
    return ray


def check_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast if ``address`` (``host:port``, ``ray://host:port``) does not accept connections.

    ``auto`` and ``local`` are Ray's own words and are left to it.

    Raises:
        UserError: nothing answers there within ``timeout_s`` seconds.

    Example:
        >>> check_address("127.0.0.1:1", timeout_s=1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sap_rl.errors.UserError: RAY_ADDRESS=127.0.0.1:1: no Ray cluster answers there ...
    """
    if address in ("auto", "local", ""):
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as err:
        raise UserError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({err}); start one with "
            "`ray start --head` or unset RAY_ADDRESS to run on a local one"
        ) from None


class _UnitWorker:
    """A Ray actor: builds the runner once, then runs units (see the module docs)."""

    def __init__(self, factory: Callable[..., Any], args: tuple[Any, ...], threads: int | None):
        prepare_worker(threads)
        self.runner = factory(*args)

    def run(self, unit: Unit) -> tuple[Any, float]:
        start = time.perf_counter()
        result = self.runner(unit, lambda n: None)
        return result, time.perf_counter() - start

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """Units on Ray actors; ``workers`` actors (``None``: one per CPU of the cluster)."""

    def __init__(self, workers: int | None = None, *, poll_s: float = 0.25) -> None:
        self._ray = _import_ray()
        self.requested = workers
        self.workers = workers or 1
        self.poll_s = poll_s
        self._started = False

    def __enter__(self) -> RayExecutor:
        ray = self._ray
        if not ray.is_initialized():
            check_address(os.environ.get("RAY_ADDRESS", ""))
            try:
                ray.init(include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)  # fmt: skip
            except (ConnectionError, RuntimeError, TimeoutError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err)
                raise UserError(f"could not start or join a Ray cluster: {first}") from None
            self._started = True
        if self.requested is None:
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False

    def run(
        self,
        work: Work,
        units: Sequence[Unit],
        *,
        may_start: Callable[[], bool] = lambda: True,
        on_report: Callable[[Unit, int], None] | None = None,
    ) -> Iterator[tuple[Unit, Any, float]]:
        """Yield ``(unit, result, seconds)`` as the actors finish units (see the module docs)."""
        del on_report  # progress is counted per finished unit
        if not units:
            return
        ray = self._ray
        actor_class = ray.remote(num_cpus=1, max_restarts=0)(_UnitWorker)
        args_ref = ray.put(work.args)  # once: every actor reads the same object

        def new_actor() -> Any:
            return actor_class.remote(work.factory, args_ref, work.threads)

        idle = [new_actor() for _ in range(min(self.workers, len(units)))]
        actors = list(idle)
        pending = deque(units)
        running: dict[Any, tuple[Unit, Any]] = {}
        attempts: Counter[str] = Counter()
        retryable = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                     ray.exceptions.ObjectLostError)  # fmt: skip
        try:
            while pending or running:
                while pending and idle and may_start():
                    unit, actor = pending.popleft(), idle.pop()
                    running[actor.run.remote(unit)] = (unit, actor)
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1, timeout=self.poll_s)
                for ref in ready:
                    unit, actor = running.pop(ref)
                    try:
                        result, seconds = ray.get(ref)
                    except ray.exceptions.RayTaskError as err:
                        raise err.as_instanceof_cause() from None
                    except retryable as err:
                        attempts[unit.key] += 1
                        if attempts[unit.key] > MAX_RETRIES:
                            raise RuntimeError(
                                f"unit {unit.key}: its Ray worker died {attempts[unit.key]} times"
                            ) from err
                        logger.warning("unit %s: its Ray worker died (%s); running it again",
                                       unit.key, type(err).__name__)  # fmt: skip
                        ray.kill(actor)
                        replacement = new_actor()
                        actors.append(replacement)
                        idle.append(replacement)
                        pending.appendleft(unit)
                        continue
                    idle.append(actor)
                    yield unit, result, seconds
        finally:
            for actor in actors:
                ray.kill(actor)
