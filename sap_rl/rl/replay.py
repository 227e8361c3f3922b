"""A replay buffer that stores each Atari frame once, behind SB3's replay-buffer API.

Frame stacks from :mod:`sap_rl.rl.envs` overlap: within an episode the next observation is the
observation shifted by one frame plus one new frame, and the first stack of an episode is
zero-padded, ``[0, 0, 0, f0]``. :class:`FrameReplayBuffer` keeps, per env, a queue of frames in
time order and, per transition, the position of its new frame in that queue (``heads``) and how
many real (not padding) frames its observation has (``n_real``)::

    observation      = [0] * (4 - n_real) + queue[head - n_real : head]
    next observation = observation[1:] + [queue[head]]

A transition that continues the previous one of its env (its observation equals that one's next
observation, the usual case) adds one frame to the queue; any other (the first of an episode, or
after a resume) adds its observation's real frames too: for ``[0, 0, 0, f0]``, one more frame.
A 100k-transition buffer of 84x84 frames takes 0.75 GB instead of 3.5 GB (SB3's
``ReplayBuffer``: 5.6 GB), and sampling returns exactly what SB3's buffers return: the same
stacks, n-step returns and discounts for the same global NumPy seed (tested on real ALE games).

The queue lives in a ring of ``buffer_size + buffer_size // 16`` frames per env; games whose
episodes last under ~16 steps on average outgrow it, and it then grows (a logged copy).

Example:
    >>> from sap_rl.rl.envs import make_vec_env
    >>> env = make_vec_env("Pong", 2, seed=0, training=True)
    >>> buffer = FrameReplayBuffer(1000, env.observation_space, env.action_space, n_envs=2,
    ...                            device="cpu", n_steps=3)
    >>> obs = env.reset()
    >>> for _ in range(20):
    ...     actions = np.array([0, 1])
    ...     new_obs, rewards, dones, infos = env.step(actions)
    ...     buffer.add(obs, new_obs, actions, rewards, dones, infos)
    ...     obs = new_obs
    >>> buffer.sample(8).observations.shape
    torch.Size([8, 4, 84, 84])
    >>> env.close()
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from sap_rl.errors import UserError
from sap_rl.io import atomic_path
from sap_rl.rl.replay_file import read_stack_rows, write_npz

logger = logging.getLogger(__name__)

#: Ring slots per env beyond one per transition, as a fraction of the buffer (episode starts).
SLACK = 16
_FORMAT = 3  # the frame-queue layout of replay.npz; older files hold whole stacks (converted)


class StackView:
    """Read-only array-like view ``buffer.observations`` / ``buffer.next_observations``.

    Indexed as SB3's buffers index their arrays, ``view[slots, envs]`` (optionally ``, :``), it
    gathers the frame stacks of those transitions: ``(B, stack, H, W)``.
    """

    def __init__(self, buffer: FrameReplayBuffer, shift: int) -> None:
        self.buffer = buffer
        self.shift = shift

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.buffer.buffer_size, self.buffer.n_envs, *self.buffer.obs_shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.buffer.frames.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        if (
            not isinstance(key, tuple)
            or len(key) not in (2, 3)
            or key[2:] not in ((), (slice(None),))
        ):
            raise IndexError("index frame stacks as view[slots, envs]")
        return self.buffer.stacks(np.asarray(key[0]), np.asarray(key[1]), self.shift)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        slots, envs = np.indices(self.shape[:2])
        out = self.buffer.stacks(slots, envs, self.shift)
        return out if dtype is None else out.astype(dtype)


class FrameReplayBuffer(ReplayBuffer):
    """SB3 ``ReplayBuffer`` (``n_steps=1``) or ``NStepReplayBuffer`` storing each frame once.

    Takes SB3's arguments plus ``n_steps`` and ``gamma`` (n-step returns as SB3's
    ``NStepReplayBuffer`` computes them). Observations must be channels-first frame stacks
    ``(stack, H, W)`` whose next observation is the observation shifted by one frame; ``add``
    checks it. See the module docstring for the layout.

    Example:
        >>> from gymnasium import spaces
        >>> space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
        >>> buffer = FrameReplayBuffer(100_000, space, spaces.Discrete(6), device="cpu")
        >>> round(buffer.nbytes / 1e9, 2)
        0.75
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        n_steps: int = 1,
        gamma: float = 0.99,
    ) -> None:
        # ReplayBuffer.__init__ would allocate two arrays of whole stacks (5.6 GB per 100k):
        # only its small arrays are made here.
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs)
        if optimize_memory_usage:
            raise ValueError(
                "FrameReplayBuffer already shares frames; use optimize_memory_usage=False"
            )
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        if len(self.obs_shape) != 3:
            raise ValueError(
                f"expected channels-first frame stacks (C, H, W), got {self.obs_shape}"
            )
        self.buffer_size = max(buffer_size // n_envs, 1)
        self.optimize_memory_usage = False
        self.handle_timeout_termination = handle_timeout_termination
        self.n_steps = n_steps
        self.gamma = gamma
        self.stack = int(self.obs_shape[0])
        size, envs = self.buffer_size, n_envs
        self.actions = np.zeros(
            (size, envs, self.action_dim), dtype=self._maybe_cast_dtype(action_space.dtype)
        )
        self.rewards = np.zeros((size, envs), dtype=np.float32)
        self.dones = np.zeros((size, envs), dtype=np.float32)
        self.timeouts = np.zeros((size, envs), dtype=np.float32)
        self.heads = np.zeros((size, envs), dtype=np.int64)
        self.n_real = np.zeros((size, envs), dtype=np.uint8)
        capacity = size + size // SLACK + self.stack + 1
        assert observation_space.dtype is not None
        self.frames = np.zeros((capacity, envs, *self.obs_shape[1:]), observation_space.dtype)
        self.frame_counts = np.zeros(envs, dtype=np.int64)  # frames queued so far, per env
        # SB3's sampling code reads these two as arrays: views that gather stacks on demand.
        self.observations = StackView(self, 0)  # type: ignore[assignment]
        self.next_observations = StackView(self, 1)  # type: ignore[assignment]

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays (frames, indices, actions, rewards, flags)."""
        arrays = (self.frames, self.heads, self.n_real, self.actions, self.rewards, self.dones,
                  self.timeouts, self.frame_counts)  # fmt: skip
        return sum(int(a.nbytes) for a in arrays)

    def reset(self) -> None:
        super().reset()
        self.frame_counts[:] = 0

    # ----------------------------------------------------------------------------------------
    # Reading
    # ----------------------------------------------------------------------------------------

    def stacks(self, slots: np.ndarray, envs: np.ndarray, shift: int = 0) -> np.ndarray:
        """Observations (``shift=0``) or next observations (``1``) of transitions ``(slots, envs)``.

        Example:
            >>> from gymnasium import spaces
            >>> buffer = FrameReplayBuffer(10, spaces.Box(0, 255, (4, 2, 2), np.uint8),
            ...                            spaces.Discrete(2), device="cpu")
            >>> reset = np.zeros((1, 4, 2, 2), np.uint8); reset[0, 3] = 1
            >>> step = np.concatenate([reset[:, 1:], np.full((1, 1, 2, 2), 2, np.uint8)], axis=1)
            >>> buffer.add(reset, step, np.zeros(1), np.zeros(1), np.zeros(1), [{}])
            >>> buffer.stacks(np.array([0]), np.array([0]), shift=1)[0, :, 0, 0]
            array([0, 0, 1, 2], dtype=uint8)
        """
        slots, envs = np.broadcast_arrays(slots, envs)
        heads = self.heads[slots, envs][..., None]
        real = self.n_real[slots, envs][..., None].astype(np.int64)
        offsets = np.arange(shift - self.stack, shift)  # frame positions relative to the head
        out = self.frames[(heads + offsets) % len(self.frames), envs[..., None]]
        out[offsets < -real] = 0  # the zero padding of an episode's first stacks
        return out

    def _get_samples(
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> ReplayBufferSamples:
        if self.n_steps > 1:
            # SB3's own n-step code, reading this buffer's arrays and stack views.
            return NStepReplayBuffer._get_samples(self, batch_inds, env)  # type: ignore[arg-type]
        return super()._get_samples(batch_inds, env)

    # ----------------------------------------------------------------------------------------
    # Writing
    # ----------------------------------------------------------------------------------------

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Add one vectorized step, as SB3's ``ReplayBuffer.add`` (same arguments)."""
        obs = np.asarray(obs).reshape(self.n_envs, *self.obs_shape)
        next_obs = np.asarray(next_obs).reshape(self.n_envs, *self.obs_shape)
        if not np.array_equal(next_obs[:, :-1], obs[:, 1:]):
            raise ValueError(
                "next_obs is not obs shifted by one frame; FrameReplayBuffer needs "
                "channels-first frame stacks from sap_rl.rl.envs"
            )
        slot = self.pos
        prev = (slot - 1) % self.buffer_size if self.full or slot > 0 else None
        oldest = (slot + 1) % self.buffer_size if self.full else 0
        for env in range(self.n_envs):
            self._store(slot, env, obs[env], next_obs[env, -1], prev, oldest)
        self.actions[slot] = np.asarray(action).reshape(self.n_envs, self.action_dim)
        self.rewards[slot] = np.asarray(reward)
        self.dones[slot] = np.asarray(done)
        if self.handle_timeout_termination:
            self.timeouts[slot] = [info.get("TimeLimit.truncated", False) for info in infos]
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True
            self.pos = 0

    def _store(
        self,
        slot: int,
        env: int,
        obs: np.ndarray,
        new_frame: np.ndarray,
        prev: int | None,
        oldest: int,
    ) -> None:
        """Queue the frames of transition ``(slot, env)``.

        ``prev`` is the slot of the env's previous transition (``None``: there is none) and
        ``oldest`` the slot of the oldest transition still kept once this one is written.
        """
        if prev is not None and np.array_equal(obs, self.stacks(np.array(prev), np.array(env), 1)):
            real = min(int(self.n_real[prev, env]) + 1, self.stack)
            new = new_frame[None]
        else:  # an episode's first stack (or any stack that does not continue the last one)
            nonzero = obs.reshape(self.stack, -1).any(axis=1)
            first = int(nonzero.argmax()) if nonzero.any() else self.stack
            real = self.stack - first
            new = np.concatenate([obs[first:], new_frame[None]])
        count = int(self.frame_counts[env])
        tail = count + len(new) - 1 - real  # this transition's first frame
        if oldest != slot:
            tail = int(self.heads[oldest, env]) - int(self.n_real[oldest, env])
        if count + len(new) - tail > len(self.frames):
            self._grow(count + len(new) - tail)
        self.frames[np.arange(count, count + len(new)) % len(self.frames), env] = new
        self.heads[slot, env] = count + len(new) - 1
        self.n_real[slot, env] = real
        self.frame_counts[env] = count + len(new)

    def _grow(self, needed: int) -> None:
        """Enlarge the frame ring to at least ``needed`` slots, keeping every queued frame."""
        old = self.frames
        capacity = max(needed, len(old) + len(old) // 8 + 1)
        logger.info(
            "replay: short episodes, frame ring grows from %d to %d frames per env",
            len(old),
            capacity,
        )
        frames = np.zeros((capacity, *old.shape[1:]), old.dtype)
        for env, count in enumerate(self.frame_counts.tolist()):
            index = np.arange(max(count - len(old), 0), count)
            frames[index % capacity, env] = old[index % len(old), env]
        self.frames = frames

    # ----------------------------------------------------------------------------------------
    # Files
    # ----------------------------------------------------------------------------------------

    def save_npz(self, path: str | os.PathLike[str]) -> None:
        """Save the buffer to a compressed ``.npz`` (atomically; plain arrays, no pickle).

        Example:
            >>> import tempfile
            >>> from gymnasium import spaces
            >>> space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
            >>> buffer = FrameReplayBuffer(10, space, spaces.Discrete(2), device="cpu")
            >>> path = Path(tempfile.mkdtemp()) / "replay.npz"
            >>> buffer.save_npz(path)
            >>> FrameReplayBuffer(10, space, spaces.Discrete(2), device="cpu").load_npz(path)
        """
        n = self.size()
        state = [self.pos, int(self.full), self.buffer_size, self.n_envs, _FORMAT]
        arrays = {
            "frames": self.frames,
            "frame_counts": self.frame_counts,
            "heads": self.heads[:n],
            "n_real": self.n_real[:n],
            "actions": self.actions[:n],
            "rewards": self.rewards[:n],
            "dones": self.dones[:n],
            "timeouts": self.timeouts[:n],
            "state": np.array(state, np.int64),
        }
        with atomic_path(path) as tmp:
            write_npz(tmp, arrays)

    def load_npz(self, path: str | os.PathLike[str]) -> None:
        """Restore a buffer saved by :meth:`save_npz`, or by the older whole-stack buffers.

        Files of ``FrameStackReplayBuffer`` (arrays ``observations`` and ``last_frames``) are
        converted on load. The buffer size and number of envs must match.

        Raises:
            UserError: the file is unreadable, truncated, inconsistent or of another shape.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                pos, full, size, n_envs = (int(v) for v in data["state"][:4])
                if size != self.buffer_size or n_envs != self.n_envs:
                    raise UserError(
                        f"{path}: replay buffer of size {size} x {n_envs} envs does not match "
                        f"this run ({self.buffer_size} x {self.n_envs}); resume with the same "
                        "config"
                    )
                if not 0 <= pos < size:
                    raise ValueError(f"position {pos} outside the buffer")
                n = size if full else pos
                for name in ("actions", "rewards", "dones", "timeouts"):
                    getattr(self, name)[:n] = _exact(data[name], getattr(self, name)[:n], name)
                if "observations" in data.files:
                    self._convert_stacks(data.zip, n, pos, bool(full))
                else:
                    self._load_frames(data, n)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            if isinstance(err, UserError):
                raise
            self.reset()
            raise UserError(f"{path}: unreadable replay buffer ({err})") from None
        self.pos, self.full = pos, bool(full)

    def _load_frames(self, data: Any, n: int) -> None:
        frames = data["frames"]
        if frames.dtype != self.frames.dtype or frames.shape[1:] != self.frames.shape[1:]:
            raise ValueError(f"frames of shape {frames.shape} and type {frames.dtype}")
        if len(frames) < len(self.frames):
            raise ValueError(f"a frame ring of {len(frames)} frames, under {len(self.frames)}")
        counts = _exact(data["frame_counts"], self.frame_counts, "frame_counts")
        heads = _exact(data["heads"], self.heads[:n], "heads")
        real = _exact(data["n_real"], self.n_real[:n], "n_real")
        # Every stack must lie within the queued frames still in the ring.
        if n and (
            real.max() > self.stack
            or np.any(heads >= counts)
            or np.any(heads - real < counts - len(frames))
        ):
            raise ValueError("frame indices outside the frame ring")
        self.frames = frames
        self.frame_counts[:] = counts
        self.heads[:n] = heads
        self.n_real[:n] = real

    def _convert_stacks(self, archive: zipfile.ZipFile, n: int, pos: int, full: bool) -> None:
        """Queue the frames of a whole-stack file (arrays ``observations``, ``last_frames``)."""
        self.frame_counts[:] = 0
        order = np.concatenate([np.arange(pos, n), np.arange(0, pos)]) if full else np.arange(n)
        expected = (n, self.n_envs, *self.obs_shape)
        last_shape = (n, self.n_envs, 1, *self.obs_shape[1:])
        rows = zip(
            read_stack_rows(archive, "observations", expected, self.frames.dtype, order),
            read_stack_rows(archive, "last_frames", last_shape, self.frames.dtype, order),
            strict=True,
        )
        oldest = int(order[0]) if n else 0
        prev: int | None = None
        for slot, (obs, last) in zip(order.tolist(), rows, strict=True):
            for env in range(self.n_envs):
                self._store(slot, env, obs[env], last[env, 0], prev, oldest)
            prev = slot


def _exact(array: np.ndarray, like: np.ndarray, name: str) -> np.ndarray:
    """``array`` if it has ``like``'s shape and a dtype that casts to it safely."""
    if array.shape != like.shape or not np.can_cast(array.dtype, like.dtype, "same_kind"):
        raise ValueError(f"{name} of shape {array.shape} and type {array.dtype}")
    return array
