"""One writer per output folder: an advisory lock, ``OUT/.lock``, held while a command writes.

``sap-rl evaluate``, ``sap-rl train``, ``sap-rl vision train`` and ``sap-rl vision evaluate``
hold :func:`output_lock` on their ``--out`` folder from their first write to their last. A second
run on the same folder is refused with a one-line error naming the owner, instead of mixing two
runs' files (two evaluations of different settings once left a ``run.json`` of one beside the
cells of the other, and every rerun was refused).

The lock is ``fcntl.flock`` on ``OUT/.lock``, which holds the owner's pid, host name and start
time (read only for the error message). The kernel drops a flock when its process ends, however
it ends (a crash, ``kill -9``, a power cut of a local disk), so a ``.lock`` left behind by a dead
run is stale and simply taken over: the flock, not the file, says whether the folder is in use.
The file is deleted when the owner releases the lock.

Where flock is not available (Windows, some network file systems) the file's content decides: a
lock whose pid is no longer running on this host is stale; one from another host cannot be
checked, and the error says to delete it if no run uses the folder. (With flock there is never
a reason to delete ``.lock`` by hand, and doing so while its owner runs would let a second writer
in.)

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with output_lock(Path(tmp) / "run") as folder:
    ...         read_owner(folder)["pid"] == os.getpid()
    ...     (folder / LOCK_FILE).exists()  # released and removed
    True
    False
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sap_rl.errors import UserError

if sys.platform != "win32":
    import fcntl

__all__ = ["LOCK_FILE", "current_owner", "output_lock", "read_owner"]

LOCK_FILE = ".lock"

# flock errors that mean "this file system cannot flock", not "someone holds the lock".
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_ATTEMPTS = 10  # retries when a previous owner removes the file or folder under us


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the lock of output folder ``folder`` (created if missing) for the ``with`` block.

    Take it after validating the arguments and before the first write; checks of what the
    folder already holds belong inside the block, so no other writer can change it in between.
    Folders this call created are removed again on exit if they are still empty (a run refused
    by such a check leaves nothing behind).

    Raises:
        UserError: another process holds the lock (the message names its pid, host and the
            folder), or ``folder`` is a file.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp, output_lock(tmp):
        ...     with output_lock(tmp):  # a second writer, even in the same process
        ...         pass  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sap_rl.errors.UserError: ... is in use by another run (pid ...); ...
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a folder")
    created = _make_folders(path)
    try:
        fd = _acquire(path / LOCK_FILE)
    except BaseException:
        _remove_if_empty(created)
        raise
    try:
        yield path
    finally:
        _release(path / LOCK_FILE, fd)
        _remove_if_empty(created)


def read_owner(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``folder``'s lock file says about its owner (``{}`` if no readable lock file).

    Example:
        >>> read_owner("no-such-folder")
        {}
    """
    try:
        return _parse_owner(Path(folder, LOCK_FILE).read_bytes())
    except OSError:
        return {}


def current_owner(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The owner record of ``folder``'s lock if its process may still run, else ``None``.

    Read-only (it takes no lock, so it never stands in a writer's way): a process of this host
    is checked by its pid; one of another host (a shared folder) is assumed to run.

    Example:
        >>> current_owner("no-such-folder") is None
        True
    """
    owner = read_owner(folder)
    return owner if owner and _is_alive(owner) else None


# --------------------------------------------------------------------------- acquiring


def _acquire(path: Path) -> int:
    """Lock ``path`` and write our owner record into it; return its open descriptor."""
    if sys.platform == "win32":
        return _acquire_by_pid(path)
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the previous owner removed its empty folder just now
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _parse_owner(_read_all(fd))
            os.close(fd)
            alive = _is_alive(owner)
            raise UserError(_busy_message(path.parent, owner, alive=alive, flock=True)) from None
        except OSError as err:
            os.close(fd)
            if err.errno not in _NO_FLOCK:
                raise
            return _acquire_by_pid(path)
        # The previous owner deletes the file before it unlocks: if that happened between our
        # open and our flock, we hold a file no one else can see. Start over with the new one.
        if not _is_file_at(fd, path):
            os.close(fd)
            continue
        _write_owner(fd)
        return fd
    raise UserError(f"{path.parent}: could not take the output lock {path}; try again")


def _acquire_by_pid(path: Path) -> int:
    """Without flock: create the lock file exclusively; a dead owner's file is taken over."""
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        except FileExistsError:
            owner = read_owner(path.parent)
            # An empty record may be an owner that has not written it yet: treat it as alive.
            if not owner or _is_alive(owner):
                raise UserError(
                    _busy_message(path.parent, owner, alive=True, flock=False)
                ) from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its pid is gone from this host
            continue
        _write_owner(fd)
        return fd
    raise UserError(f"{path.parent}: could not take the output lock {path}; try again")


def _release(path: Path, fd: int) -> None:
    """Delete the lock file (if it is still ours), then unlock by closing it."""
    try:
        if _is_file_at(fd, path):
            path.unlink()
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- owner records


def _write_owner(fd: int) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)


def _read_all(fd: int) -> bytes:
    return os.pread(fd, 4096, 0)


def _parse_owner(data: bytes) -> dict[str, Any]:
    try:
        owner = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _is_alive(owner: dict[str, Any]) -> bool:
    """Whether the owner may still run: its pid exists on this host, or it is elsewhere."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or owner.get("host") != socket.gethostname():
        return True  # another machine's process (a shared folder) cannot be checked from here
    if sys.platform == "win32":
        return True  # os.kill would terminate it: no harmless existence check
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _busy_message(folder: Path, owner: dict[str, Any], *, alive: bool, flock: bool) -> str:
    who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
    if "started" in owner:
        who += f", since {owner['started']}"
    if not alive:
        # The flock is held, yet the recorded pid is gone: a child process inherited the lock.
        who += "; that pid has exited but a process it started still holds the lock"
    message = f"{folder} is in use by another run ({who}); wait for it to end or use another --out"
    if not flock:  # a flock never outlives its holder; a pid file of another host may
        message += f" (if no run uses that folder, delete {folder / LOCK_FILE})"
    return message


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)


# --------------------------------------------------------------------------- folders


def _make_folders(path: Path) -> list[Path]:
    """Create ``path`` and missing parents; return those this call created, deepest first."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    created: list[Path] = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:  # made by someone else meanwhile: not ours to remove
            continue
        except OSError as err:  # a parent is a file, no permission, read-only disk...
            _remove_if_empty(created[::-1])
            raise UserError(f"cannot create the folder {path}: {err.strerror}") from None
        created.append(folder)
    return created[::-1]


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (the run wrote into it) or already gone
            return
