"""CPU threads of torch and of SAP's numba kernels, set together (per process or worker)."""

from __future__ import annotations

import torch

__all__ = ["set_threads"]


def set_threads(torch_threads: int, numba_threads: int | None = None) -> tuple[int, int]:
    """Set the CPU threads of torch and of SAP's numba kernels; returns the previous ``(torch,
    numba)`` counts (pass them back to restore).

    numba's OpenMP pool resets OpenMP's thread count (which torch reads) when it starts, at the
    first SAP call of the process; starting it here first keeps the counts as asked.

    Example:
        >>> previous = set_threads(1)
        >>> torch.get_num_threads()
        1
        >>> _ = set_threads(*previous)
    """
    import numba

    previous_torch = torch.get_num_threads()
    previous_numba = numba.get_num_threads()  # starts numba's pool (if not yet started)
    limit = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    numba.set_num_threads(max(1, min(numba_threads or torch_threads, limit)))
    torch.set_num_threads(torch_threads)
    return previous_torch, previous_numba
