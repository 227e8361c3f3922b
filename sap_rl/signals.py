"""SIGTERM as Ctrl-C, so that a killed long run ends like an interrupted one.

Example:
    >>> with sigterm_as_interrupt():
    ...     pass
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["sigterm_as_interrupt"]


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
