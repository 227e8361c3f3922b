"""Training checkpoints for ``sap-rl train --resume``: safetensors, numpy and JSON, never pickle.

A checkpoint folder holds::

    policy.safetensors      online and target Q-network weights (SB3 policy ``state_dict``)
    optimizer.safetensors   Adam state (tensors) + parameter groups (JSON metadata)
    replay.npz              the replay buffer (compressed plain arrays, read with
                            ``allow_pickle=False``; the older whole-stack layout converts on load)
    state.json              step counters, exploration state, evaluation history; written last

The model itself is rebuilt from the run's resolved ``config.yaml`` and only then receives these
weights and counters, so nothing in the folder decides which code runs. (Stable-baselines3's own
``model.zip`` stores the learning-rate schedule with ``cloudpickle``; loading a tampered one runs
arbitrary code, so sap-rl neither writes nor reads it.)

Example:
    >>> state = RunState(timesteps=0)
    >>> state.timesteps
    0
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from stable_baselines3 import DQN

from sap_rl.errors import UserError
from sap_rl.io import (
    UNTRUSTED_CHECKPOINT,
    atomic_write_json,
    load_optimizer,
    load_tensors,
    read_json,
    save_optimizer,
    save_tensors,
)
from sap_rl.rl.dqn import (
    FrameStackNStepReplayBuffer,
    FrameStackReplayBuffer,
    match_state_layout,
)
from sap_rl.rl.replay import FrameReplayBuffer

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
POLICY_FILE = "policy.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
REPLAY_FILE = "replay.npz"
STATE_FILE = "state.json"
FORMAT = 2  # 1 was SB3's pickled model.zip
LEGACY_FILE = "model.zip"
# Replay buffers that save themselves (plain numpy; SB3's own ones would need a pickle).
_SAVED_BUFFERS = (FrameReplayBuffer, FrameStackReplayBuffer, FrameStackNStepReplayBuffer)

# SB3 attributes that, with the weights, optimizer and replay buffer, make a resumed run continue
# where it stopped: step and update counters, the target-update phase, exploration and logging.
_COUNTERS = (
    "num_timesteps",
    "_n_updates",
    "_n_calls",
    "_episode_num",
    "exploration_rate",
    "_current_progress_remaining",
)


@dataclasses.dataclass
class RunState:
    """Bookkeeping saved with each checkpoint (``state.json``)."""

    timesteps: int = 0
    wall_time_s: float = 0.0
    evaluations: list[dict[str, float]] = dataclasses.field(default_factory=list)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)


def save_checkpoint(model: DQN, out: Path, state: RunState, wall_time_s: float) -> None:
    """Write ``out/checkpoint/`` so that ``--resume`` can continue this run."""
    folder = out / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    save_tensors(folder / POLICY_FILE, model.policy.state_dict())
    save_optimizer(folder / OPTIMIZER_FILE, model.policy.optimizer)
    buffer = model.replay_buffer
    if isinstance(buffer, _SAVED_BUFFERS):
        buffer.save_npz(folder / REPLAY_FILE)
    state.timesteps = int(model.num_timesteps)
    state.wall_time_s = wall_time_s
    state.model = {name: getattr(model, name) for name in _COUNTERS}
    state.model["ep_info_buffer"] = list(model.ep_info_buffer or [])
    # state.json last: a checkpoint counts only once all of its files are complete.
    atomic_write_json(folder / STATE_FILE, {"format": FORMAT, **dataclasses.asdict(state)})
    (folder / LEGACY_FILE).unlink(missing_ok=True)
    logger.info(
        "checkpoint at %d steps (%.1fs) in %s",
        model.num_timesteps,
        time.perf_counter() - started,
        folder,
    )


def load_checkpoint_state(out: Path) -> RunState | None:
    """The saved :class:`RunState` of ``out``, or ``None`` if it has no complete checkpoint.

    Raises:
        UserError: the state file is damaged or was written by a pickle-based sap-rl version.
    """
    folder = out / CHECKPOINT_DIR
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a checkpoint state (expected a JSON object); delete {folder}")
    if data.get("format") != FORMAT:
        raise UserError(
            f"{folder}: checkpoint from an older sap-rl (SB3 model.zip, a pickle, which is "
            f"never loaded); delete {folder} and train again, or resume with that version"
        )
    try:
        state = RunState(
            timesteps=int(data["timesteps"]),
            wall_time_s=float(data["wall_time_s"]),
            evaluations=[{k: float(v) for k, v in row.items()} for row in data["evaluations"]],
            model=dict(data["model"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{path}: corrupted checkpoint state; delete {folder}") from None
    return state


def restore_checkpoint(model: DQN, out: Path, state: RunState) -> None:
    """Load the checkpoint of ``out`` into ``model``, freshly built from the run's config.

    Raises:
        UserError: a file is missing, truncated, tampered with or does not fit the model.
    """
    folder = out / CHECKPOINT_DIR
    try:
        model.policy.load_state_dict(load_tensors(folder / POLICY_FILE, hint=UNTRUSTED_CHECKPOINT))
    except RuntimeError as err:
        raise UserError(
            f"{folder / POLICY_FILE}: weights do not fit the configured network "
            f"({str(err).splitlines()[0]}); resume with the run's own config.yaml"
        ) from None
    load_optimizer(folder / OPTIMIZER_FILE, model.policy.optimizer)
    match_state_layout(model.policy.optimizer)  # channels-last weights, fused Adam
    try:
        for name in _COUNTERS:
            value = state.model[name]
            setattr(model, name, type(getattr(model, name))(value))
        episodes = [_episode_info(e) for e in state.model["ep_info_buffer"]]
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{folder / STATE_FILE}: corrupted checkpoint state; delete {folder}"
        ) from None
    model.ep_info_buffer = collections.deque(episodes, maxlen=model._stats_window_size)
    model.ep_success_buffer = collections.deque(maxlen=model._stats_window_size)
    replay = folder / REPLAY_FILE
    buffer = model.replay_buffer
    if isinstance(buffer, _SAVED_BUFFERS):
        if not replay.is_file():
            raise UserError(
                f"{replay}: missing; the checkpoint is incomplete, delete {folder} to start over"
            )
        buffer.load_npz(replay)


def _episode_info(entry: Any) -> dict[str, float | int | bool]:
    """One SB3 ``ep_info_buffer`` entry (``r``, ``l``, ``t``, ...) from JSON: scalars only."""
    if not isinstance(entry, dict):
        raise TypeError("episode info must be an object")
    info: dict[str, float | int | bool] = {}
    for key, value in entry.items():
        if not isinstance(value, (bool, int, float)):
            raise TypeError(f"episode info {key!r} is not a number")
        info[str(key)] = value
    return info
