"""Process-level memory settings for the ``sap-rl`` commands and the RL benchmarks.

PyTorch's CPU tensors come straight from ``malloc``. With glibc's defaults, a buffer above the
dynamic mmap threshold (128 KiB to 32 MiB) is mapped fresh and unmapped on ``free``, and the top
of the heap is trimmed back to the system; the next tensor of that size then page-faults its
memory in again, one 4 KiB page at a time. A batched attack step allocates dozens of ~2 MB
tensors (16 frame stacks in float32), so this costs up to a quarter of its time on a busy
machine. :func:`keep_freed_memory` makes glibc keep freed memory for reuse instead. It changes
only where buffers come from, never a computed value.

It is a process-wide setting, so the library never applies it on import: the ``sap-rl``
command line, ``benchmarks/bench_eval.py`` and ``benchmarks/bench_train.py`` call it at
start-up. On other C libraries it does nothing.

Example:
    >>> import platform
    >>> keep_freed_memory() == (platform.libc_ver()[0] == "glibc")  # applied exactly on glibc
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["keep_freed_memory"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 256 * 1024 * 1024  # buffers up to 256 MiB come from the reusable heap
_TRIM_THRESHOLD = 1024 * 1024 * 1024  # keep up to 1 GiB of freed heap before trimming


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` reuse freed large buffers (no fresh pages per tensor).

    Returns:
        Whether the setting was applied (``False`` off Linux/glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    logger.debug("glibc malloc keeps freed memory: %s", applied)
    return applied
