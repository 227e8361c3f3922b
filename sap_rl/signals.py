"""Stopping long runs: SIGTERM as Ctrl-C, and a stop that waits for the end of a step.

:func:`sigterm_as_interrupt` makes a killed run end like an interrupted one.
:func:`stop_between_steps` lets a loop that checkpoints (an evaluation unit) save its state at the
next step boundary before it ends, so a stop loses no work.

Example:
    >>> with sigterm_as_interrupt():
    ...     pass
    >>> with stop_between_steps() as stop_requested:
    ...     stop_requested()
    False
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["sigterm_as_interrupt", "stop_between_steps"]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`KeyboardInterrupt` inside the block, as Ctrl-C.

    A killed run then ends like an interrupted one: it keeps its last checkpoint and
    ``--resume`` continues it (``sap-rl train``, ``sap-rl prune``, ``sap-rl vision prune``), or
    rerunning the same command does (``sap-rl evaluate``).

    Example:
        >>> with sigterm_as_interrupt():
        ...     pass
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stop_between_steps() -> Iterator[Callable[[], bool]]:
    """Inside the block, SIGTERM and Ctrl-C ask the block's loop to stop instead of interrupting it.

    A signal only sets a flag, which the function the block gets reports. The loop checks it
    between two steps, saves its state and raises :class:`KeyboardInterrupt` itself, so a stop
    loses nothing since the last step. A second Ctrl-C interrupts at once, as outside the block
    (for a step that takes too long); a second SIGTERM does not, since a scheduler may send one
    to every process of a job and then a worker's parent another, and ``SIGKILL`` is the hard
    stop. A SIGINT that this process ignores (a worker process, whose parent stops it with
    SIGTERM) stays ignored. Outside the main thread no handler can be set: the function always
    says ``False`` and signals act as they would without the block.

    Example:
        >>> import os, signal
        >>> with stop_between_steps() as stop_requested:
        ...     os.kill(os.getpid(), signal.SIGTERM)
        ...     stop_requested()
        True
    """
    requested = False

    def stop_requested() -> bool:
        return requested

    if threading.current_thread() is not threading.main_thread():
        yield stop_requested
        return

    def handler(signum: int, frame: Any) -> None:
        nonlocal requested
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt(f"signal {signum}")
        requested = True

    signums = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signums.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield stop_requested
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
