"""Double DQN on stable-baselines3, and a frame-sharing replay buffer for Atari frame stacks.

:class:`DoubleDQN` is SB3's ``DQN`` with one change: the TD target picks the next action with the
**online** network and evaluates it with the **target** network (van Hasselt et al. 2016)::

    y = r + discount * (1 - done) * Q_target(s', argmax_a Q_online(s', a))

instead of DQN's ``r + discount * (1 - done) * max_a Q_target(s', a)``. ``discount`` is
``gamma ** k`` for an n-step transition of ``k`` steps (SB3's ``n_steps``). Everything else is
SB3's: ``save``/``load``, callbacks, logging, the progress bar, n-step returns, vectorized envs.

For speed (``bench_train``), :class:`DoubleDQN` runs torch's fused Adam, keeps its convolutions
channels-last (NHWC, oneDNN's fast layout on CPUs), makes its uint8 batches channels-last floats
one channel at a time, applies its ReLUs in place and chooses actions with a leaner ``predict``.

:class:`FrameStackReplayBuffer` (and its n-step twin) store each transition's whole observation
plus its next observation's one new frame (5 frames per transition, 3.5 GB per 100k). Training now
uses :class:`sap_rl.rl.replay.FrameReplayBuffer` (each frame once, 0.75 GB per 100k); these two
remain as its reference in tests and benchmarks, and their ``.npz`` files (runs started before it)
are what ``FrameReplayBuffer.load_npz`` converts.

Example:
    >>> from sap_rl.rl.envs import make_vec_env
    >>> env = make_vec_env("Pong", 1, seed=0, training=True)
    >>> model = DoubleDQN("CnnPolicy", env, buffer_size=1000, learning_starts=50, device="cpu")
    >>> _ = model.learn(100)
    >>> model.num_timesteps
    100
"""

from __future__ import annotations

import logging
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HumanOutputFormat, KVWriter, Logger
from stable_baselines3.common.preprocessing import is_image_space, preprocess_obs
from stable_baselines3.common.type_aliases import MaybeCallback, ReplayBufferSamples
from stable_baselines3.dqn.policies import QNetwork
from torch.nn import functional as F

from sap_rl.errors import UserError
from sap_rl.io import atomic_path

logger = logging.getLogger(__name__)


def dqn_target(
    rewards: th.Tensor,
    dones: th.Tensor,
    discounts: th.Tensor | float,
    next_q_target: th.Tensor,
) -> th.Tensor:
    """Vanilla DQN target ``r + discount * (1 - done) * max_a Q_target(s', a)``, shape ``(B, 1)``.

    Example:
        >>> dqn_target(th.tensor([[1.0]]), th.tensor([[0.0]]), 0.5, th.tensor([[2.0, 4.0]]))
        tensor([[3.]])
    """
    best = next_q_target.max(dim=1, keepdim=True).values
    return rewards + (1.0 - dones) * discounts * best


def double_dqn_target(
    rewards: th.Tensor,
    dones: th.Tensor,
    discounts: th.Tensor | float,
    next_q_online: th.Tensor,
    next_q_target: th.Tensor,
) -> th.Tensor:
    """Double DQN target ``r + discount * (1 - done) * Q_target(s', argmax_a Q_online(s', a))``.

    Args:
        rewards: ``(B, 1)`` (n-step discounted) rewards.
        dones: ``(B, 1)`` 1.0 where the transition ends the episode (not a time-out).
        discounts: ``(B, 1)`` tensor or a float (``gamma ** n``).
        next_q_online: ``(B, A)`` online-network Q-values of the next observations.
        next_q_target: ``(B, A)`` target-network Q-values of the next observations.

    Example:
        >>> double_dqn_target(th.tensor([[1.0]]), th.tensor([[0.0]]), 0.5,
        ...                   th.tensor([[9.0, 0.0]]), th.tensor([[2.0, 4.0]]))
        tensor([[2.]])
    """
    best_action = next_q_online.argmax(dim=1, keepdim=True)
    value = th.gather(next_q_target, dim=1, index=best_action)
    return rewards + (1.0 - dones) * discounts * value


class DoubleDQN(DQN):
    """SB3 ``DQN`` with the Double DQN target (van Hasselt et al. 2016).

    Takes SB3 ``DQN``'s arguments, ``channels_last`` and ``inplace_relu``. Only :meth:`train`'s
    target changes, through :meth:`td_target`; saving, loading (``DoubleDQN.load``), callbacks,
    logging, the progress bar, n-step returns and vectorized environments behave as in SB3. For
    speed:

    - SB3's default Adam becomes torch's fused Adam (one kernel for all parameters; same
      hyperparameters, other rounding). ``policy_kwargs={"optimizer_kwargs": {"foreach": True}}``
      gives torch's multi-tensor loop instead, bitwise the same steps as SB3's per-tensor loop on
      CPU (``{"foreach": False}``: that loop itself);
    - ``channels_last=True`` (default) stores the networks' weights and the batches NHWC, and
      builds a batch's NHWC floats from its uint8 frames one channel at a time (bitwise SB3's
      ``obs.float() / 255``);
    - ``inplace_relu=True`` (default) applies the networks' ReLUs in place (the same values);
    - gradient clipping runs torch's multi-tensor loop (bitwise SB3's result);
    - :meth:`predict` skips SB3's per-call checks for array observations (same actions and
      random draws).

    Example:
        >>> from sap_rl.rl.envs import make_vec_env
        >>> env = make_vec_env("Breakout", 2, seed=0, training=True)
        >>> model = DoubleDQN("CnnPolicy", env, buffer_size=500, learning_starts=40, n_steps=3,
        ...                   device="cpu", seed=0)
        >>> _ = model.learn(80)
    """

    def __init__(
        self, *args: Any, channels_last: bool = True, inplace_relu: bool = True, **kwargs: Any
    ) -> None:
        self.channels_last = channels_last
        self.inplace_relu = inplace_relu
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        optimizer = self.policy.optimizer
        chosen = self.policy_kwargs.get("optimizer_kwargs", {})
        if type(optimizer) is th.optim.Adam and not {"foreach", "fused"} & set(chosen):
            # torch's fused Adam: one kernel for all parameters (not bitwise SB3's loop, which an
            # explicit foreach=True or fused=False in optimizer_kwargs gives back).
            defaults = {
                k: v for k, v in optimizer.defaults.items() if k not in ("foreach", "fused")
            }
            # The same parameter groups: the online network's (SB3 never steps the target's).
            groups = [{"params": group["params"]} for group in optimizer.param_groups]
            self.policy.optimizer = th.optim.Adam(groups, **defaults, fused=True)
        elif isinstance(optimizer, th.optim.Adam):
            # The multi-tensor ("foreach") loop gives bitwise SB3's per-tensor steps on CPU
            # (tested), in fewer kernel launches; an explicit choice is kept.
            for group in optimizer.param_groups:
                if group.get("foreach") is None:
                    group["foreach"] = True
        if getattr(self, "channels_last", False):
            # oneDNN's convolutions run faster on NHWC tensors (inputs follow in _network_input).
            self.policy.to(memory_format=th.channels_last)  # type: ignore[call-overload]
        if getattr(self, "inplace_relu", True):
            # The same values without a fresh activation tensor per layer (4 per pass, 3 passes
            # per update). Autograd-safe here: a ReLU's backward reads its output, and the layers
            # before it (convolution, linear) keep their inputs, not their outputs.
            for module in self.policy.modules():
                if isinstance(module, th.nn.ReLU):
                    module.inplace = True

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        if not self._custom_logger and self.tensorboard_log is None:
            # SB3's default logger makes an empty <tmp>/SB3-<time> folder on every learn() even
            # when it writes no file there; this one writes only what verbose asks for (stdout).
            formats: list[KVWriter] = [HumanOutputFormat(sys.stdout)] if self.verbose >= 1 else []
            self.set_logger(Logger(folder=None, output_formats=formats))
        return super()._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )

    def td_target(self, replay_data: ReplayBufferSamples) -> th.Tensor:
        """The Double DQN TD target ``(B, 1)`` of a replay batch (no gradient)."""
        return self._td_target(replay_data, self._network_input(replay_data.next_observations))

    def _q_and_target(self, replay_data: ReplayBufferSamples) -> tuple[th.Tensor, th.Tensor]:
        """Online Q-values ``(B, A)`` of the observations and TD targets ``(B, 1)`` of a batch."""
        target = self._td_target(replay_data, self._network_input(replay_data.next_observations))
        return _q_values(self.q_net, self._network_input(replay_data.observations)), target

    def _td_target(self, replay_data: ReplayBufferSamples, next_input: th.Tensor) -> th.Tensor:
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        with th.no_grad():
            # Both networks read the same preprocessed next observations (one uint8 -> float
            # conversion instead of two: the only extra work of Double DQN is one forward pass).
            next_q_target = _q_values(self.q_net_target, next_input)
            next_q_online = _q_values(self.q_net, next_input)
            return double_dqn_target(
                replay_data.rewards, replay_data.dones, discounts, next_q_online, next_q_target
            )

    def _network_input(self, obs: th.Tensor) -> th.Tensor:
        """``obs`` preprocessed as SB3's ``QNetwork.forward`` does (``obs.float() / 255`` here).

        Channels-last, a uint8 image batch becomes float NHWC in one strided copy per channel,
        then is divided in place: bitwise SB3's values, in about 0.4 instead of 0.7 ms for a
        batch of 32 on one thread (torch's uint8 NCHW -> NHWC copy is slow). Anything else goes
        through SB3's code.
        """
        scale: float | None = getattr(self, "_image_scale", None)
        if scale is None:  # decided once: SB3's preprocess_obs checks the space on every call
            space = self.q_net.observation_space
            scale = 0.0  # not a Box: SB3's code
            if isinstance(space, spaces.Box):
                scale = 255.0 if self.q_net.normalize_images and is_image_space(space) else 1.0
            self._image_scale = scale
        if getattr(self, "channels_last", False) and obs.dim() == 4:
            if obs.dtype == th.uint8 and scale:
                return _channels_last_float(obs, scale)
            obs = obs.contiguous(memory_format=th.channels_last)
        return preprocess_obs(
            obs, self.q_net.observation_space, normalize_images=self.q_net.normalize_images
        )  # type: ignore[return-value]

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3 ``DQN.predict`` (same actions, same random draws) with less work per call.

        For a batch of array observations and discrete actions it skips SB3's per-call checks and
        conversions (about a third of a batch-1 action choice on a CPU); anything else is SB3's.
        """
        shape = self.observation_space.shape
        if not (
            isinstance(observation, np.ndarray)
            and isinstance(self.action_space, spaces.Discrete)
            and shape is not None
            and observation.shape[1:] == shape
        ):
            return super().predict(observation, state, episode_start, deterministic)
        if not deterministic and np.random.rand() < self.exploration_rate:  # noqa: NPY002 - SB3's
            return np.array([self.action_space.sample() for _ in range(len(observation))]), state
        if self.policy.training:
            self.policy.set_training_mode(False)
        with th.inference_mode():
            network_input = self._network_input(th.as_tensor(observation, device=self.device))
            q_values = _q_values(self.q_net, network_input)
            return q_values.argmax(dim=1).cpu().numpy(), state

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3 ``DQN.train`` with :meth:`td_target` as the target (same logging keys)."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)

        losses = []
        for _ in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            current_q_values, target_q_values = self._q_and_target(replay_data)
            current_q_values = th.gather(current_q_values, dim=1, index=replay_data.actions.long())
            loss = F.smooth_l1_loss(current_q_values, target_q_values)
            losses.append(loss.item())

            self.policy.optimizer.zero_grad()
            loss.backward()
            # foreach: the same norm and clipped gradients as SB3's call, bitwise (tested).
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm, foreach=True)
            self.policy.optimizer.step()

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))


def describe_optimizer(optimizer: th.optim.Optimizer) -> str:
    """The optimizer as an agent card records it: class and torch implementation.

    Example:
        >>> describe_optimizer(th.optim.Adam([th.zeros(1, requires_grad=True)], fused=True))
        'Adam (torch, fused)'
    """
    group = optimizer.param_groups[0]
    kind = "fused" if group.get("fused") else "foreach" if group.get("foreach") else "per-tensor"
    return f"{type(optimizer).__name__} (torch, {kind})"


def match_state_layout(optimizer: th.optim.Optimizer) -> None:
    """Give each per-parameter state tensor its parameter's memory layout, after a load.

    A loaded Adam state comes back contiguous; torch's fused Adam silently computes wrong steps
    when a channels-last parameter's moments are not channels-last too (torch 2.13, CPU).

    Example:
        >>> p = th.zeros(2, 3, 4, 4).to(memory_format=th.channels_last).requires_grad_()
        >>> adam = th.optim.Adam([p], fused=True)
        >>> adam.state[p]["exp_avg"] = th.zeros(2, 3, 4, 4)
        >>> match_state_layout(adam)
        >>> adam.state[p]["exp_avg"].is_contiguous(memory_format=th.channels_last)
        True
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (
                    isinstance(value, th.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = th.empty_like(param, dtype=value.dtype).copy_(value)


def _channels_last_float(obs: th.Tensor, scale: float) -> th.Tensor:
    """``obs.float() / scale`` (bitwise) of an NCHW batch, as a channels-last float tensor.

    Example:
        >>> obs = th.randint(0, 256, (2, 4, 3, 3), dtype=th.uint8)
        >>> out = _channels_last_float(obs, 255.0)
        >>> out.is_contiguous(memory_format=th.channels_last), th.equal(out, obs.float() / 255.0)
        (True, True)
    """
    out = th.empty(obs.shape, dtype=th.float32, device=obs.device, memory_format=th.channels_last)
    for channel in range(obs.shape[1]):  # a few frames: converting while scattering is cheap
        out[:, channel] = obs[:, channel]
    return out.div_(scale) if scale != 1.0 else out


def _q_values(q_net: QNetwork, network_input: th.Tensor) -> th.Tensor:
    """SB3 ``QNetwork.forward`` from an already preprocessed observation batch (same result)."""
    out: th.Tensor = q_net.q_net(q_net.features_extractor(network_input))
    return out


class _NextStacks:
    """Array-like view ``next_obs[i, e] = concat(obs[i, e, 1:], last[i, e])`` (frames: axis -3)."""

    def __init__(self, observations: np.ndarray, last_frames: np.ndarray) -> None:
        self.observations = observations
        self.last_frames = last_frames

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.observations.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.observations.dtype

    @property
    def nbytes(self) -> int:
        return int(self.last_frames.nbytes)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.concatenate(
            [self.observations[key][..., 1:, :, :], self.last_frames[key]], axis=-3
        )

    def __setitem__(self, key: Any, value: Any) -> None:
        self.last_frames[key] = np.asarray(value)[..., -1:, :, :]


class _FrameStackStorage:
    """Mixin: replace ``next_observations`` by one frame per transition; save/load as ``.npz``."""

    observations: np.ndarray
    next_observations: Any
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    timeouts: np.ndarray
    buffer_size: int
    n_envs: int
    pos: int
    full: bool
    optimize_memory_usage: bool

    def _init_frames(self) -> None:
        if self.optimize_memory_usage:
            raise ValueError(
                "FrameStackReplayBuffer already shares frames; use optimize_memory_usage=False"
            )
        shape = self.observations.shape  # (buffer, n_envs, stack, H, W)
        if len(shape) != 5 or shape[2] < 2:
            raise ValueError(f"expected channels-first frame stacks (N, E, C, H, W), got {shape}")
        last = np.zeros((*shape[:2], 1, *shape[3:]), dtype=self.observations.dtype)
        self.next_observations = _NextStacks(self.observations, last)

    def _check_shift(self, obs: np.ndarray, next_obs: np.ndarray) -> None:
        if not np.array_equal(np.asarray(next_obs)[:, :-1], np.asarray(obs)[:, 1:]):
            raise RuntimeError(
                "next_obs is not obs shifted by one frame; FrameStackReplayBuffer needs "
                "channels-first stacks from sap_rl.rl.envs"
            )

    def save_npz(self, path: str | os.PathLike[str]) -> None:
        """Save the filled part of the buffer to an ``.npz`` file (atomically, no pickle)."""
        n = self.buffer_size if self.full else self.pos
        arrays = {
            "observations": self.observations[:n],
            "last_frames": self.next_observations.last_frames[:n],
            "actions": self.actions[:n],
            "rewards": self.rewards[:n],
            "dones": self.dones[:n],
            "timeouts": self.timeouts[:n],
            "state": np.array([self.pos, int(self.full), self.buffer_size, self.n_envs], np.int64),
        }
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    def load_npz(self, path: str | os.PathLike[str]) -> None:
        """Restore a buffer written by :meth:`save_npz` (same size and number of envs)."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                pos, full, size, n_envs = (int(v) for v in data["state"])
                if size != self.buffer_size or n_envs != self.n_envs:
                    raise UserError(
                        f"{path}: replay buffer of size {size} x {n_envs} envs does not match "
                        f"this run ({self.buffer_size} x {self.n_envs}); resume with the same "
                        "config"
                    )
                n = len(data["observations"])
                self.observations[:n] = data["observations"]
                self.next_observations.last_frames[:n] = data["last_frames"]
                self.actions[:n] = data["actions"]
                self.rewards[:n] = data["rewards"]
                self.dones[:n] = data["dones"]
                self.timeouts[:n] = data["timeouts"]
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
            if isinstance(err, UserError):
                raise
            raise UserError(f"{path}: unreadable replay buffer ({err})") from None
        self.pos, self.full = pos, bool(full)


class FrameStackReplayBuffer(_FrameStackStorage, ReplayBuffer):
    """SB3 ``ReplayBuffer`` storing one new frame per next observation (see module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_frames()

    def add(self, obs: Any, next_obs: Any, *args: Any, **kwargs: Any) -> None:
        self._check_shift(obs, next_obs)
        super().add(obs, next_obs, *args, **kwargs)


class FrameStackNStepReplayBuffer(_FrameStackStorage, NStepReplayBuffer):
    """SB3 ``NStepReplayBuffer`` (n-step returns) with the frame-sharing storage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_frames()

    def add(self, obs: Any, next_obs: Any, *args: Any, **kwargs: Any) -> None:
        self._check_shift(obs, next_obs)
        super().add(obs, next_obs, *args, **kwargs)
