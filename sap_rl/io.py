"""Atomic file writing, hashing and safe tensor files shared by agents, models and reports.

Every file sap-rl writes goes through these helpers: the data lands in a temporary file in the
target directory, is flushed to disk, then renamed over the destination, so an interrupted run
never leaves a half-written checkpoint, card or result table behind.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_json(d / "card.json", {"name": "demo"})
    >>> read_json(d / "card.json")["name"]
    'demo'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from sap_rl.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            # mkstemp makes the file 0600 (and some writers replace it): give it the mode any
            # other tool's new file gets, 0666 minus the umask.
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    """The process's file mode creation mask (e.g. ``0o022``), without changing it.

    Example:
        >>> old = os.umask(0o027)
        >>> oct(current_umask())
        '0o27'
        >>> _ = os.umask(old)
    """
    try:
        # Linux reports it directly; setting and restoring it would race with other threads.
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_out_dir(path: str | os.PathLike[str], *, flag: str = "--out") -> Path:
    """Check, without writing anything, that ``path`` can be (or already is) an output folder.

    ``path`` must be a folder or not exist yet, and its nearest existing ancestor must be a
    folder this process may write in. Commands call it with their other validation, before
    their first write, so that a bad ``--out`` is a one-line error and leaves nothing behind.

    Raises:
        UserError: ``path`` or one of its parents is a file, or that ancestor is on a read-only
            file system or not writable.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
        >>> _ = file.write_text("x")
        >>> check_out_dir(file / "run")
        Traceback (most recent call last):
        ...
        sap_rl.errors.UserError: --out .../notes.txt/run: .../notes.txt is a file, not a folder
    """
    path = Path(path)
    # Below a file (ENOTDIR) or an unreadable folder nothing "exists": walk up to what does.
    existing = next((p for p in (path, *path.parents) if os.path.exists(p)), Path("."))
    if not existing.is_dir():
        where = "" if existing == path else f": {existing}"
        raise UserError(f"{flag} {path}{where} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        readonly = os.statvfs(existing).f_flag & os.ST_RDONLY
        reason = "is on a read-only file system" if readonly else "is not writable"
        raise UserError(f"{flag} {path}: {existing} {reason}")
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON (trailing newline) to ``path`` atomically."""
    atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; :class:`UserError` naming the file if it is missing or invalid."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSON file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text, expected a JSON file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save a flat name -> tensor mapping as safetensors, atomically (no pickle involved).

    The same tensors and metadata always give the same bytes, so a file's SHA-256 (recorded in
    agent and model cards) identifies its content: the safetensors library writes the metadata in
    hash-map order, which changes from one process to the next, so the header is rewritten with
    sorted keys (same length, same offsets).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> meta = {"game": "Pong", "format": "sap-rl", "n_actions": "6"}
        >>> save_tensors(d / "a.safetensors", {"w": torch.ones(2)}, meta)
        >>> save_tensors(d / "b.safetensors", {"w": torch.ones(2)}, dict(reversed(meta.items())))
        >>> (d / "a.safetensors").read_bytes() == (d / "b.safetensors").read_bytes()
        True
    """
    from safetensors.torch import save

    contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    data = save(contiguous, metadata=dict(metadata) if metadata else None)
    atomic_write_bytes(path, _canonical_header(data))


def _canonical_header(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its JSON header's keys sorted, padded to its length."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    encoded = canonical.encode("utf-8")
    if len(encoded) > size:  # cannot happen for the library's compact JSON; keep its bytes
        return data
    return data[:8] + encoded.ljust(size, b" ") + data[8 + size :]


#: What to tell a user whose checkpoint file is not safetensors (a pickle, say, or damaged).
UNTRUSTED_CHECKPOINT = (
    "not loaded: checkpoints are trusted only as safetensors and JSON, never as pickles; "
    "delete the checkpoint folder to start over"
)


def load_tensors(
    path: str | os.PathLike[str], *, hint: str = "re-export or re-download it"
) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU; never unpickles. Bad files raise :class:`UserError`.

    ``hint`` ends the error message: what the user can do about a file that is not safetensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a valid safetensors file ({err}); {hint}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def save_optimizer(path: str | os.PathLike[str], optimizer: torch.optim.Optimizer) -> None:
    """Save an optimizer's ``state_dict`` as safetensors plus JSON metadata (no pickle).

    Tensors of the per-parameter state (Adam's moments and step counts, SGD's momentum buffers)
    are stored as ``state/<param>/<key>``; the parameter groups (learning rate, betas, flags) and
    any non-tensor state go into the file's JSON metadata. :func:`load_optimizer` reads it back.

    Example:
        >>> import tempfile, pathlib
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.Adam(net.parameters(), lr=0.1)
        >>> net(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "optimizer.safetensors"
        >>> save_optimizer(path, opt)
        >>> fresh = torch.optim.Adam(net.parameters(), lr=0.1)
        >>> load_optimizer(path, fresh)
        >>> saved, loaded = opt.state_dict()["state"][0], fresh.state_dict()["state"][0]
        >>> torch.equal(saved["exp_avg"], loaded["exp_avg"])
        True
    """
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    meta = {"param_groups": state_dict["param_groups"], "scalars": scalars}
    save_tensors(path, tensors, {"optimizer": json.dumps(meta, default=_json_default)})


def load_optimizer(path: str | os.PathLike[str], optimizer: torch.optim.Optimizer) -> None:
    """Restore an optimizer saved by :func:`save_optimizer`; :class:`UserError` if it is unusable.

    Only safetensors and JSON are read, so a tampered file can fail to load but never run code.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    tensors = load_tensors(path, hint=UNTRUSTED_CHECKPOINT)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["optimizer"])
        state: dict[int, dict[str, Any]] = {}
        for name, tensor in tensors.items():
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = tensor
        for index, entries in meta["scalars"].items():
            state.setdefault(int(index), {}).update(entries)
        groups = meta["param_groups"]
        for group, current in zip(groups, optimizer.param_groups, strict=False):
            for key, value in group.items():  # JSON has no tuples (Adam's betas)
                if isinstance(current.get(key), tuple) and isinstance(value, list):
                    group[key] = tuple(value)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (SafetensorError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(
            f"{path}: not an optimizer state this run can use ({type(err).__name__}: {err}); "
            "delete the checkpoint to start over"
        ) from None
