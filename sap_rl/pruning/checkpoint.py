"""Checkpoints of a HARP run (:func:`~sap_rl.pruning.harp.harp_prune`): safetensors and JSON only.

After every epoch :func:`harp_prune <sap_rl.pruning.harp.harp_prune>` writes into its checkpoint
folder::

    model-NNNN.safetensors      the masked model's tensors (weights, scores, rate scores, fixed
                                masks, batch norm) and the global torch RNG state after epoch NNNN
    optimizer-NNNN.safetensors  the optimizer's state (:func:`sap_rl.io.save_optimizer`)
    state.json                  written last: epochs done, gamma, each layer's mode, the fixed
                                counts, the history, the settings and the source model's
                                fingerprint, and the names of the two files above

Every file is written atomically (temporary file, then rename), and ``state.json`` names the
tensor files of its own epoch, so a run killed while saving leaves the previous checkpoint whole;
files it no longer names are deleted on the next save. Nothing is ever unpickled: a tampered file
fails to load with a one-line :class:`~sap_rl.errors.UserError` and never runs code.

A checkpoint is resumed only by the same run: the same :class:`~sap_rl.pruning.harp.HarpConfig`,
the same caller ``key`` (what the batches depend on, such as the batch size) and the same source
model (:func:`model_fingerprint`, a SHA-256 of its tensors).

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "checkpoint"
    >>> saved_epochs(folder) is None  # no checkpoint yet
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sap_rl.errors import UserError
from sap_rl.io import atomic_write_json, load_tensors, read_json, save_tensors

if TYPE_CHECKING:
    from sap_rl.pruning.harp import EpochLog, HarpConfig

__all__ = [
    "STATE_FILE",
    "HarpCheckpoint",
    "Resumed",
    "model_fingerprint",
    "remove_checkpoint",
    "saved_epochs",
    "saved_history",
]

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
FORMAT = 1
_KIND = "sap-rl harp checkpoint"
_RNG_CPU = "rng/cpu"  # "/" never occurs in a state_dict key (those use ".")
_RNG_CUDA = "rng/cuda"


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's ``state_dict`` (names, dtypes, shapes and bytes), in hex.

    Example:
        >>> torch.manual_seed(0) and None
        >>> a, b = nn.Linear(2, 1), nn.Linear(2, 1)
        >>> fa, fb = model_fingerprint(a), model_fingerprint(b)
        >>> fa == model_fingerprint(a), fa == fb
        (True, False)
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def saved_epochs(folder: str | os.PathLike[str]) -> int | None:
    """Epochs a checkpoint folder holds, or ``None`` if it has no (complete) checkpoint.

    Raises:
        UserError: ``state.json`` is damaged (the message names the file and the fix).

    Example:
        >>> saved_epochs("/nonexistent/checkpoint") is None
        True
    """
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    return _epochs_done(_read_state(path), path)


def remove_checkpoint(folder: str | os.PathLike[str]) -> None:
    """Delete a checkpoint folder's files written by :class:`HarpCheckpoint`, then the folder.

    Example:
        >>> remove_checkpoint("/nonexistent/checkpoint")  # nothing there: nothing to do
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for item in folder.iterdir():
        if item.name == STATE_FILE or _is_tensor_file(item.name):
            item.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # the user put something else there: leave it
        logger.info("kept %s: it holds other files", folder)


@dataclass
class Resumed:
    """What a checkpoint restores (read by :meth:`HarpCheckpoint.load`).

    Attributes:
        epochs_done: finished epochs, pruning and fine-tuning together.
        gamma: the hardware loss weight after them.
        modes: ``learn`` or ``fixed`` per layer name.
        counts: weights kept per layer once the masks are fixed (``None`` before).
        history: one :class:`~sap_rl.pruning.harp.EpochLog` as a dict per finished epoch.
        tensors: the masked model's ``state_dict`` plus the saved RNG states.
        optimizer: the optimizer file.
    """

    epochs_done: int
    gamma: float
    modes: dict[str, str]
    counts: dict[str, int] | None
    history: list[dict[str, Any]]
    tensors: dict[str, torch.Tensor]
    optimizer: Path


class HarpCheckpoint:
    """The checkpoint folder of one HARP run: saves after each epoch, loads on start.

    Args:
        folder: where the files go (created on the first save).
        config: the run's settings (a checkpoint of other settings is refused).
        source: :func:`model_fingerprint` of the model being pruned.
        key: more JSON settings the run depends on (batch size, data); compared like ``config``.

    Example:
        >>> import tempfile
        >>> from sap_rl.pruning.harp import HarpConfig
        >>> ckpt = HarpCheckpoint(Path(tempfile.mkdtemp()), HarpConfig(sparsity=0.5), "ab12")
        >>> ckpt.load() is None
        True
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        config: HarpConfig,
        source: str,
        key: dict[str, Any] | None = None,
    ) -> None:
        self.folder = Path(folder)
        # Through JSON, so that the comparison with a loaded state sees lists, not tuples.
        self.settings = json.loads(json.dumps({"harp": asdict(config), **(key or {})}))
        self.source = source

    def save(
        self,
        *,
        epochs_done: int,
        gamma: float,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        modes: dict[str, str],
        counts: dict[str, int] | None,
        history: list[EpochLog],
    ) -> None:
        """Write the checkpoint after ``epochs_done`` epochs (``state.json`` last)."""
        from sap_rl.io import save_optimizer

        self.folder.mkdir(parents=True, exist_ok=True)
        model_file = f"model-{epochs_done:04d}.safetensors"
        optimizer_file = f"optimizer-{epochs_done:04d}.safetensors"
        tensors = dict(model.state_dict())
        tensors[_RNG_CPU] = torch.get_rng_state()
        device = next((t.device for t in tensors.values() if t.device.type == "cuda"), None)
        if device is not None:
            tensors[_RNG_CUDA] = torch.cuda.get_rng_state(device)
        save_tensors(self.folder / model_file, tensors, {"format": _KIND})
        save_optimizer(self.folder / optimizer_file, optimizer)
        state = {
            "format": FORMAT,
            "kind": _KIND,
            "epochs_done": epochs_done,
            "gamma": gamma,
            "modes": modes,
            "counts": counts,
            "history": [asdict(log) for log in history],
            "settings": self.settings,
            "source_fingerprint": self.source,
            "model": model_file,
            "optimizer": optimizer_file,
        }
        atomic_write_json(self.folder / STATE_FILE, state)
        for item in self.folder.iterdir():  # the previous epoch's files, or a killed save's
            if _is_tensor_file(item.name) and item.name not in (model_file, optimizer_file):
                item.unlink(missing_ok=True)

    def load(self) -> Resumed | None:
        """The saved state, or ``None`` if the folder has no checkpoint.

        Raises:
            UserError: a damaged, incomplete or tampered file, or a checkpoint of other settings
                or another source model (one line naming the folder and what to do).
        """
        path = self.folder / STATE_FILE
        if not path.is_file():
            return None
        state = _read_state(path)
        fix = f"delete {self.folder} to start over"
        if state.get("source_fingerprint") != self.source:
            raise UserError(
                f"{self.folder}: the checkpoint was made from another source model "
                f"(fingerprint {str(state.get('source_fingerprint'))[:12]}, this one "
                f"{self.source[:12]}); prune the model it was made from, or {fix}"
            )
        diffs = _differences(state.get("settings"), self.settings)
        if diffs:
            raise UserError(
                f"{self.folder}: the checkpoint was made with other settings "
                f"({'; '.join(diffs[:3])}); resume with the same settings, or {fix}"
            )
        try:
            counts = state["counts"]
            resumed = Resumed(
                epochs_done=_epochs_done(state, path),
                gamma=float(state["gamma"]),
                modes={str(k): str(v) for k, v in state["modes"].items()},
                counts=None if counts is None else {str(k): int(v) for k, v in counts.items()},
                history=[dict(row) for row in state["history"]],
                tensors={},
                optimizer=self.folder / _tensor_name(state["optimizer"]),
            )
            model_path = self.folder / _tensor_name(state["model"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UserError(f"{path}: corrupted checkpoint state; {fix}") from None
        for file in (model_path, resumed.optimizer):
            if not file.is_file():
                raise UserError(f"{file}: missing; the checkpoint is incomplete, {fix}")
        hint = "not loaded: checkpoints are trusted only as safetensors and JSON, never as "
        hint += f"pickles; {fix}"
        resumed.tensors = load_tensors(model_path, hint=hint)
        # Checked now even where the run will not need it (a checkpoint between the phases):
        # a damaged file is an error whatever the epoch.
        load_tensors(resumed.optimizer, hint=hint)
        return resumed


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Set the global torch RNG states saved with a checkpoint (dropout draws continue as if the
    run had never stopped); removes them from ``tensors``."""
    cpu = tensors.pop(_RNG_CPU, None)
    cuda = tensors.pop(_RNG_CUDA, None)
    if cpu is not None:
        torch.set_rng_state(cpu)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def _is_tensor_file(name: str) -> bool:
    return name.endswith(".safetensors") and name.startswith(("model-", "optimizer-"))


def _tensor_name(value: Any) -> str:
    """A file name from ``state.json``: a plain name in the folder, never a path elsewhere."""
    if not isinstance(value, str) or not _is_tensor_file(value) or Path(value).name != value:
        raise ValueError(f"bad checkpoint file name {value!r}")
    return value


def _read_state(path: Path) -> dict[str, Any]:
    fix = f"delete {path.parent} to start over"
    try:
        state = read_json(path)
    except UserError as err:
        raise UserError(f"{err}; {fix}") from None
    if not isinstance(state, dict) or state.get("kind") != _KIND:
        raise UserError(f"{path}: not a HARP checkpoint state; {fix}")
    if state.get("format") != FORMAT:
        raise UserError(
            f"{path}: checkpoint format {state.get('format')!r} (this sap-rl reads {FORMAT}); {fix}"
        )
    return state


def _epochs_done(state: dict[str, Any], path: Path) -> int:
    value = state.get("epochs_done")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UserError(
            f"{path}: corrupted checkpoint state; delete {path.parent} to start over"
        ) from None
    return value


def _differences(saved: Any, current: dict[str, Any]) -> list[str]:
    """``"name: saved there, current now"`` for each setting that differs (nested dicts flat)."""
    if not isinstance(saved, dict):
        return ["no settings saved"]
    diffs: list[str] = []
    for name in sorted(set(saved) | set(current)):
        there, now = saved.get(name), current.get(name)
        if isinstance(there, dict) and isinstance(now, dict):
            diffs += [f"{name}.{d}" for d in _differences(there, now)]
        elif there != now:
            diffs.append(f"{name}: {there!r} there, {now!r} now")
    return diffs


def saved_history(folder: str | os.PathLike[str]) -> list[EpochLog]:
    """The epochs a checkpoint folder has finished (empty without a checkpoint).

    Raises:
        UserError: ``state.json`` is damaged.

    Example:
        >>> saved_history("/nonexistent/checkpoint")
        []
    """
    from sap_rl.pruning.harp import EpochLog

    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return []
    try:
        return [EpochLog(**row) for row in _read_state(path)["history"]]
    except (KeyError, TypeError):
        raise UserError(
            f"{path}: corrupted checkpoint state; delete {path.parent} to start over"
        ) from None
