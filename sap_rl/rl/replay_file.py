"""``.npz`` files of replay buffers: compressed writing, and reading whole-stack files row by row.

A replay file holds hundreds of megabytes of frames. :func:`write_npz` writes them compressed
at zlib level 1 (about as small as numpy's default level, several times faster on Atari frames),
and :func:`read_stack_rows` streams the older whole-stack layout (3.5 GB per 100k transitions)
row by row, so converting it never holds the whole array in memory. Neither ever unpickles.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "a.npz"
    >>> write_npz(path, {"x": np.arange(6).reshape(3, 2)})
    >>> with np.load(path, allow_pickle=False) as data:
    ...     data["x"].tolist()
    [[0, 1], [2, 3], [4, 5]]
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Mapping

import numpy as np

#: Rows read at once when streaming a whole-stack array (of ~28 KB per env at 84x84).
CHUNK_ROWS = 256


def write_npz(
    path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], level: int = 1
) -> None:
    """Write ``arrays`` to a deflate-compressed ``.npz`` that ``np.load`` reads (no pickle).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "zeros.npz"
        >>> write_npz(path, {"frames": np.zeros((100, 84, 84), np.uint8)})
        >>> path.stat().st_size < 10_000
        True
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def read_stack_rows(
    archive: zipfile.ZipFile,
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype[np.generic],
    order: np.ndarray,
) -> Iterator[np.ndarray]:
    """Yield rows ``array[i]`` of the ``.npz`` member ``name`` for each ``i`` in ``order``.

    Args:
        archive: the open ``.npz`` file.
        name: array name (member ``name.npy``).
        shape: the array's expected shape; dtype: its expected dtype (else ``ValueError``).
        order: row indices, read fastest when they form few increasing runs.

    Raises:
        ValueError: the array has another shape or dtype, or is stored as a pickle.
        EOFError: the member ends early (a truncated file).
    """
    with archive.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            found, fortran, found_dtype = np.lib.format.read_array_header_1_0(member)
        else:
            found, fortran, found_dtype = np.lib.format.read_array_header_2_0(member)
        if found_dtype.hasobject or fortran or found != shape or found_dtype != dtype:
            raise ValueError(f"{name} of shape {found} and type {found_dtype}, expected {shape}")
        start = member.tell()
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        i = 0
        while i < len(order):
            # A run of consecutive rows, read in chunks of CHUNK_ROWS.
            first = int(order[i])
            run = 1
            while i + run < len(order) and run < CHUNK_ROWS and order[i + run] == first + run:
                run += 1
            if member.tell() != start + first * row_bytes:
                member.seek(start + first * row_bytes)
            data = member.read(run * row_bytes)
            if len(data) != run * row_bytes:
                raise EOFError(f"{name}: the file ends early")
            yield from np.frombuffer(data, dtype).reshape(run, *shape[1:])
            i += run
