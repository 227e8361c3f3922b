"""Double DQN target, SB3 compatibility and the frame-sharing replay buffer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from sap_rl.errors import UserError
from sap_rl.rl.dqn import (
    DoubleDQN,
    FrameStackNStepReplayBuffer,
    FrameStackReplayBuffer,
    double_dqn_target,
    dqn_target,
)
from sap_rl.rl.envs import make_vec_env


def test_double_target_differs_from_dqn_exactly_where_networks_disagree() -> None:
    # Hand-built batch of 4 transitions, 3 actions.
    rewards = torch.tensor([[1.0], [0.0], [-1.0], [0.5]])
    dones = torch.tensor([[0.0], [0.0], [1.0], [0.0]])
    gamma = 0.9
    online = torch.tensor(
        [
            [1.0, 5.0, 2.0],  # online argmax 1, target argmax 1 -> agree
            [9.0, 0.0, 1.0],  # online argmax 0, target argmax 2 -> disagree
            [0.0, 3.0, 0.0],  # disagree, but the transition is terminal
            [0.0, 0.0, 7.0],  # online argmax 2, target argmax 0 -> disagree
        ]
    )
    target = torch.tensor(
        [
            [0.0, 4.0, 1.0],
            [2.0, 1.0, 6.0],
            [8.0, 1.0, 0.0],
            [3.0, 1.0, -2.0],
        ]
    )
    double = double_dqn_target(rewards, dones, gamma, online, target)
    vanilla = dqn_target(rewards, dones, gamma, target)
    expected_double = torch.tensor([[1 + 0.9 * 4.0], [0 + 0.9 * 2.0], [-1.0], [0.5 + 0.9 * -2.0]])
    expected_vanilla = torch.tensor([[1 + 0.9 * 4.0], [0 + 0.9 * 6.0], [-1.0], [0.5 + 0.9 * 3.0]])
    torch.testing.assert_close(double, expected_double)
    torch.testing.assert_close(vanilla, expected_vanilla)
    disagree = (online.argmax(1) != target.argmax(1)) & (dones[:, 0] == 0)
    assert torch.equal((double != vanilla)[:, 0], disagree)
    # Double DQN never exceeds the max over the target network.
    assert torch.all(double <= vanilla)


def test_double_target_uses_per_sample_n_step_discounts() -> None:
    discounts = torch.tensor([[0.99**3], [0.99]])
    out = double_dqn_target(
        torch.zeros(2, 1), torch.zeros(2, 1), discounts, torch.eye(2), torch.ones(2, 2) * 2
    )
    torch.testing.assert_close(out, 2 * discounts)


@pytest.fixture(scope="module")
def pong_model() -> DoubleDQN:
    env = make_vec_env("Pong", 1, seed=0, training=True)
    return DoubleDQN("CnnPolicy", env, buffer_size=64, learning_starts=10, device="cpu", seed=0)


def test_td_target_on_a_real_network_pair(pong_model: DoubleDQN) -> None:
    model = pong_model
    torch.manual_seed(1)
    with torch.no_grad():  # make the target network clearly different from the online one
        for p in model.q_net_target.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    obs = torch.randint(0, 256, (16, 4, 84, 84), dtype=torch.uint8)
    next_obs = torch.randint(0, 256, (16, 4, 84, 84), dtype=torch.uint8)
    batch = ReplayBufferSamples(
        observations=obs,
        actions=torch.zeros(16, 1, dtype=torch.long),
        next_observations=next_obs,
        dones=torch.zeros(16, 1),
        rewards=torch.ones(16, 1),
    )
    target = model.td_target(batch)
    with torch.no_grad():
        q_online = model.q_net(next_obs)
        q_target = model.q_net_target(next_obs)
    chosen = q_target.gather(1, q_online.argmax(1, keepdim=True))
    torch.testing.assert_close(target, 1.0 + model.gamma * chosen)
    vanilla = dqn_target(batch.rewards, batch.dones, model.gamma, q_target)
    disagree = q_online.argmax(1) != q_target.argmax(1)
    assert disagree.any(), "the perturbed networks should disagree somewhere"
    assert torch.equal((target != vanilla)[:, 0], disagree)


class _CountCalls(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def _on_step(self) -> bool:
        self.calls += 1
        return True


@pytest.mark.filterwarnings("ignore:`n_steps=3` is ignored:UserWarning")  # SB3 quirk on load
def test_sb3_features_keep_working(tmp_path: Path) -> None:
    # Two envs, n-step returns, a callback, logging, save and load.
    env = make_vec_env("Breakout", 2, seed=0, training=True)
    model = DoubleDQN(
        "CnnPolicy",
        env,
        buffer_size=400,
        learning_starts=50,
        n_steps=3,
        train_freq=2,
        target_update_interval=50,
        device="cpu",
        seed=0,
    )
    assert isinstance(model.replay_buffer, NStepReplayBuffer)
    callback = _CountCalls()
    model.learn(200, callback=callback)
    assert model.num_timesteps == 200
    assert callback.calls == 100  # one call per vectorized step of 2 envs
    assert model._n_updates > 0
    path = tmp_path / "ddqn.zip"
    model.save(path)
    loaded = DoubleDQN.load(path, env=env, device="cpu")
    assert type(loaded) is DoubleDQN
    obs = env.reset()
    with torch.no_grad():
        a = model.q_net(torch.as_tensor(obs))
        b = loaded.q_net(torch.as_tensor(obs))
    assert torch.equal(a, b)
    loaded.learn(40, reset_num_timesteps=False)
    assert loaded.num_timesteps == 240
    env.close()


def test_double_dqn_is_a_dqn() -> None:
    assert issubclass(DoubleDQN, DQN)
    assert DoubleDQN.train is not DQN.train


def _fill(buffer: ReplayBuffer, steps: int, seed: int = 0) -> None:
    env = make_vec_env("Breakout", buffer.n_envs, seed=seed, training=True)
    obs = env.reset()
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        actions = rng.integers(4, size=env.num_envs)
        new_obs, rewards, dones, infos = env.step(actions)
        next_obs = new_obs.copy()
        for i, done in enumerate(dones):
            if done:
                next_obs[i] = infos[i]["terminal_observation"]
        buffer.add(obs, next_obs, actions, rewards, dones, infos)
        obs = new_obs
    env.close()


@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [
        (FrameStackReplayBuffer, ReplayBuffer, {}),
        (FrameStackNStepReplayBuffer, NStepReplayBuffer, {"n_steps": 3, "gamma": 0.99}),
    ],
)
def test_frame_sharing_buffer_matches_sb3_buffer(
    ours: type[ReplayBuffer], theirs: type[ReplayBuffer], kwargs: dict[str, float]
) -> None:
    env = make_vec_env("Breakout", 2, seed=0, training=True)
    space, actions = env.observation_space, env.action_space
    env.close()
    a = ours(150, space, actions, device="cpu", n_envs=2, **kwargs)
    b = theirs(150, space, actions, device="cpu", n_envs=2, **kwargs)
    _fill(a, 100)  # wraps around (buffer 75 per env)
    _fill(b, 100)
    assert a.full and b.full
    for seed in range(3):
        np.random.seed(seed)  # noqa: NPY002 - SB3 buffers sample with the global generator
        sa = a.sample(32)
        np.random.seed(seed)  # noqa: NPY002
        sb = b.sample(32)
        for field in ("observations", "next_observations", "actions", "rewards", "dones"):
            assert torch.equal(getattr(sa, field), getattr(sb, field)), field
    # 5 frames per transition instead of 8
    used = a.observations.nbytes + a.next_observations.nbytes
    assert used * 8 == (b.observations.nbytes + b.next_observations.nbytes) * 5


def test_frame_sharing_buffer_save_load_roundtrip(tmp_path: Path) -> None:
    env = make_vec_env("Breakout", 1, seed=0, training=True)
    space, actions = env.observation_space, env.action_space
    env.close()
    a = FrameStackNStepReplayBuffer(100, space, actions, device="cpu", n_steps=3, gamma=0.99)
    _fill(a, 40)
    a.save_npz(tmp_path / "replay.npz")
    b = FrameStackNStepReplayBuffer(100, space, actions, device="cpu", n_steps=3, gamma=0.99)
    b.load_npz(tmp_path / "replay.npz")
    assert (b.pos, b.full) == (a.pos, a.full) == (40, False)
    np.random.seed(0)  # noqa: NPY002 - SB3 buffers sample with the global generator
    sa = a.sample(16)
    np.random.seed(0)  # noqa: NPY002
    sb = b.sample(16)
    assert torch.equal(sa.next_observations, sb.next_observations)
    assert torch.equal(sa.rewards, sb.rewards)
    small = FrameStackNStepReplayBuffer(50, space, actions, device="cpu", n_steps=3, gamma=0.99)
    with pytest.raises(UserError, match="does not match"):
        small.load_npz(tmp_path / "replay.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="unreadable"):
        b.load_npz(tmp_path / "bad.npz")


def test_frame_sharing_buffer_rejects_unshifted_stacks() -> None:
    env = make_vec_env("Breakout", 1, seed=0, training=True)
    buffer = FrameStackReplayBuffer(10, env.observation_space, env.action_space, device="cpu")
    obs = env.reset()
    env.close()
    unrelated = np.full_like(obs, 7)
    with pytest.raises(RuntimeError, match="shifted"):
        buffer.add(obs, unrelated, np.zeros(1), np.zeros(1), np.zeros(1), [{}])


def test_train_step_reads_each_batch_preprocessed_once_and_exactly_as_sb3(
    pong_model: DoubleDQN, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sap_rl.rl import dqn

    obs = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(
            dqn._q_values(pong_model.q_net, pong_model._network_input(obs)), pong_model.q_net(obs)
        )
    # Channels-last, uint8 batches take the one-copy-per-channel path, not SB3's preprocess_obs.
    calls: list[int] = []
    original = dqn._channels_last_float

    def counting(x: torch.Tensor, scale: float) -> torch.Tensor:
        calls.append(x.shape[0])
        return original(x, scale)

    pong_model.learn(12)  # fills the buffer and sets up SB3's logger
    monkeypatch.setattr(dqn, "_channels_last_float", counting)
    monkeypatch.setattr(dqn, "preprocess_obs", None)  # not called
    pong_model.train(gradient_steps=1, batch_size=4)
    assert calls == [4, 4]  # next observations (shared by both networks), then observations


@pytest.mark.parametrize("channels_last", [True, False])
def test_network_input_is_bitwise_sb3s_preprocessing(channels_last: bool) -> None:
    from stable_baselines3.common.preprocessing import preprocess_obs

    from sap_rl.rl import dqn

    model = _small_model(channels_last=channels_last)
    obs = torch.randint(0, 256, (32, 4, 84, 84), dtype=torch.uint8)
    ours = model._network_input(obs)
    assert torch.equal(ours, preprocess_obs(obs, model.observation_space))  # type: ignore[arg-type]
    assert ours.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(dqn._channels_last_float(obs, 1.0), obs.float())  # normalize_images off
    with torch.no_grad():  # and the Q-values are SB3's forward's, bitwise
        assert torch.equal(dqn._q_values(model.q_net, ours), model.q_net(obs))


def _small_model(
    channels_last: bool = False, inplace_relu: bool = True, **policy_kwargs: object
) -> DoubleDQN:
    env = make_vec_env("Pong", 1, seed=0, training=True)
    return DoubleDQN(
        "CnnPolicy", env, buffer_size=64, learning_starts=10, train_freq=1, batch_size=4,
        device="cpu", seed=0, policy_kwargs=policy_kwargs, channels_last=channels_last,
        inplace_relu=inplace_relu,
    )  # fmt: skip


@pytest.mark.parametrize("channels_last", [True, False])
def test_inplace_relus_train_bitwise_like_sb3s(channels_last: bool) -> None:
    models = []
    for inplace in (True, False):  # each built, then trained: SB3 seeds the global generators
        model = _small_model(channels_last, inplace)
        model.learn(30)
        models.append(model)
    relus = [
        [m for m in model.policy.modules() if isinstance(m, torch.nn.ReLU)] for model in models
    ]
    assert len(relus[0]) == 8 and all(m.inplace for m in relus[0])  # 4 per network
    assert not any(m.inplace for m in relus[1])
    assert models[0]._n_updates == models[1]._n_updates == 20
    for a, b in zip(models[0].policy.parameters(), models[1].policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fused_adam_and_channels_last_by_default_train_like_sb3s_loops() -> None:
    env = make_vec_env("Pong", 1, seed=0, training=True)
    default = DoubleDQN("CnnPolicy", env, buffer_size=64, learning_starts=10, train_freq=1,
                        batch_size=4, device="cpu", seed=0)  # fmt: skip
    assert all(group["fused"] for group in default.policy.optimizer.param_groups)
    assert default.policy.optimizer.defaults["eps"] == 1e-8  # SB3's other settings kept
    stepped = [p for group in default.policy.optimizer.param_groups for p in group["params"]]
    assert stepped == list(default.q_net.parameters())  # the online network's, as in SB3
    conv = next(p for p in default.q_net.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    default.learn(30)
    per_tensor = _small_model(optimizer_kwargs={"foreach": False})
    per_tensor.learn(30)
    assert default._n_updates == per_tensor._n_updates == 20
    # Other kernels, other rounding: close, not bitwise.
    for a, b in zip(default.policy.parameters(), per_tensor.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0.0, atol=1e-4)


@pytest.mark.parametrize("deterministic", [False, True])
def test_predict_gives_sb3s_actions_and_random_draws(deterministic: bool) -> None:
    model = _small_model(channels_last=True)
    env = make_vec_env("Pong", 3, seed=0, training=True)
    obs = np.asarray(env.reset())
    env.close()
    model.exploration_rate = 0.5
    for seed in range(6):
        obs = np.roll(obs, seed, axis=-1)
        np.random.seed(seed)  # noqa: NPY002 - DQN.predict explores with the global generator
        model.action_space.seed(seed)
        ours, _ = model.predict(obs, deterministic=deterministic)
        after = np.random.rand()  # noqa: NPY002
        np.random.seed(seed)  # noqa: NPY002
        model.action_space.seed(seed)
        theirs, _ = DQN.predict(model, obs, deterministic=deterministic)
        assert np.random.rand() == after  # noqa: NPY002 - the same draws were consumed
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape == (3,)
        assert np.array_equal(ours, theirs)


def test_foreach_loops_train_bitwise_like_sb3s_per_tensor_loops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = _small_model(optimizer_kwargs={"foreach": True})
    assert all(group["foreach"] for group in fast.policy.optimizer.param_groups)
    fast.learn(30)

    per_tensor_clip = torch.nn.utils.clip_grad_norm_

    def clip(*args: object, **kwargs: object) -> torch.Tensor:
        kwargs["foreach"] = False
        return per_tensor_clip(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    slow = _small_model(optimizer_kwargs={"foreach": False})
    assert not any(group["foreach"] for group in slow.policy.optimizer.param_groups)
    slow.learn(30)
    assert fast._n_updates == slow._n_updates == 20
    for a, b in zip(fast.policy.parameters(), slow.policy.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("verbose", [0, 1])
def test_learn_leaves_no_sb3_folder_in_the_temp_dir(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    verbose: int,
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where SB3's logger would go
    env = make_vec_env("Pong", 1, seed=0, training=True)
    model = DoubleDQN("CnnPolicy", env, buffer_size=64, learning_starts=10, device="cpu",
                      seed=0, verbose=verbose)  # fmt: skip
    model.learn(40)
    model.learn(8, reset_num_timesteps=False)
    env.close()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("SB3-")]
    # verbose still decides whether SB3's training table reaches stdout
    model.logger.record("probe", 7)
    model.logger.dump(step=48)
    assert ("probe" in capsys.readouterr().out) == (verbose == 1)
