"""Perturbed observations: the eps ball, the frames attacked, the target, the wrapper's dtypes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from sap_rl.attacks import fgsm, fgsm_ll
from sap_rl.defenses import apply_defense
from sap_rl.errors import UserError
from sap_rl.rl.agent import QNetwork
from sap_rl.rl.envs import AtariPreprocessing, make_env, obs_to_tensor
from sap_rl.rl.perturb import ObservationAttack, PerturbObservation, _NewestFrame, check_eps

GAME = "Assault"  # 7 actions; an untrained agent's score reacts to perturbations
N_ACTIONS = 7


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """Real frame stacks from the game (with black and white pixels), as float pixel units."""
    env = make_env(GAME, seed=3, training=False)
    obs, _ = env.reset()
    stacks = []
    for step in range(40):
        obs, *_ = env.step(step % N_ACTIONS)
        if step % 10 == 9:
            stacks.append(obs)
    env.close()
    x = obs_to_tensor(np.stack(stacks))
    x[0, :, :4, :4] = 0.0
    x[1, :, :4, :4] = 255.0
    return x


class Counting(nn.Module):
    """Counts forward calls and rows of a wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows.append(x.shape[0])
        return self.model(x)


@pytest.mark.parametrize(
    ("defense", "attack"),
    [("dense", "fgsm"), ("dense", "pgd-3"), ("dense", "pgd-2-ll"), ("sap-100", "fgsm"),
     ("sap-100", "fgsm-eot"), ("dropout-0.2", "pgd-2-eot"), ("noise-2", "fgsm")],
)  # fmt: skip
@pytest.mark.parametrize("eps", [0.5, 4.0])
@pytest.mark.parametrize("perturb", ["stack", "last"])
def test_perturbed_frames_stay_in_the_ball_and_range(
    net: QNetwork, frames: torch.Tensor, defense: str, attack: str, eps: float, perturb: str
) -> None:
    model = apply_defense(net, defense)
    attacker = ObservationAttack(model, attack, eps, perturb=perturb, eot_samples=3,  # type: ignore[arg-type]
                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    seen = attacker.perturb(frames)
    assert seen.shape == frames.shape and seen.dtype == torch.float32
    assert float((seen - frames).abs().max()) <= eps + 1e-4
    assert float(seen.min()) >= 0.0 and float(seen.max()) <= 255.0
    assert not torch.equal(seen, frames)
    if perturb == "last":
        assert torch.equal(seen[:, :3], frames[:, :3])


def test_last_frame_fgsm_is_the_newest_channel_of_stack_fgsm(
    net: QNetwork, frames: torch.Tensor
) -> None:
    stack = ObservationAttack(net, "fgsm", 3.0, perturb="stack").perturb(frames)
    last = ObservationAttack(net, "fgsm", 3.0, perturb="last").perturb(frames)
    assert torch.equal(last[:, 3], stack[:, 3])
    assert torch.equal(last[:, :3], frames[:, :3])


def test_fgsm_target_is_the_agents_clean_action(net: QNetwork, frames: torch.Tensor) -> None:
    attacker = ObservationAttack(net, "fgsm", 2.0)
    target = net(frames).argmax(dim=1)
    assert torch.equal(attacker.perturb(frames), fgsm(net, frames, 2.0, target=target))
    assert torch.equal(attacker.perturb(frames), fgsm(net, frames, 2.0))


def test_integer_eps_fgsm_frames_are_whole_grey_levels(net: QNetwork, frames: torch.Tensor) -> None:
    seen = ObservationAttack(net, "fgsm", 2.0).perturb(frames)
    assert torch.equal(seen, seen.round())


def test_one_step_costs_two_forward_passes_on_a_deterministic_model(
    net: QNetwork, frames: torch.Tensor
) -> None:
    """FGSM's gradient pass gives the clean action (the target); then the perturbed frames."""
    counting = Counting(net)
    actions, seen = ObservationAttack(counting, "fgsm", 2.0).act(frames)
    assert counting.calls == 2
    assert torch.equal(actions, net(seen).argmax(dim=1))
    assert torch.equal(seen, fgsm(net, frames, 2.0, target=net(frames).argmax(dim=1)))


def test_one_step_costs_three_forward_passes_on_a_stochastic_model(
    net: QNetwork, frames: torch.Tensor
) -> None:
    """Clean action (one draw), gradient (another draw), action on the perturbed frames."""
    counting = Counting(apply_defense(net, "sap-100"))
    ObservationAttack(counting, "fgsm", 2.0).act(frames)
    assert counting.calls == 3


@pytest.mark.parametrize("perturb", ["stack", "last"])
@pytest.mark.parametrize("eps", [0.5, 3.0])
def test_fused_fgsm_equals_the_attack_functions(
    net: QNetwork, frames: torch.Tensor, perturb: str, eps: float
) -> None:
    """One forward pass for target and gradient gives exactly the frames of ``attacks.fgsm``."""
    for attack, function in (("fgsm", fgsm), ("fgsm-ll", fgsm_ll)):
        fused = ObservationAttack(net, attack, eps, perturb=perturb).perturb(frames)  # type: ignore[arg-type]
        if perturb == "stack":
            expected = function(net, frames, eps)
        else:
            newest = _NewestFrame(net, frames[:, :-1])
            expected = torch.cat([frames[:, :-1], function(newest, frames[:, -1:], eps)], dim=1)
        assert torch.equal(fused, expected)


def test_eps_zero_skips_the_attack_and_the_forced_path_changes_nothing(
    net: QNetwork, frames: torch.Tensor
) -> None:
    counting = Counting(net)
    skipped = ObservationAttack(counting, "fgsm", 0.0)
    assert not skipped.active and skipped.perturb(frames) is frames
    actions, _ = skipped.act(frames)
    assert counting.calls == 1
    for attack in ("fgsm", "pgd-3", "fgsm-eot"):
        forced = ObservationAttack(counting, attack, 0.0, always_attack=True)
        forced_actions, seen = forced.act(frames)
        assert torch.equal(seen, frames) and torch.equal(forced_actions, actions)
    assert counting.calls > 2


def test_eot_and_action_samples_only_for_stochastic_models(
    net: QNetwork, frames: torch.Tensor
) -> None:
    dense = ObservationAttack(net, "fgsm-eot", 1.0, eot_samples=16, action_samples=8)
    assert (dense.eot_samples, dense.action_samples) == (1, 1)
    counting = Counting(apply_defense(net, "sap-100"))
    stochastic = ObservationAttack(counting, "fgsm-eot", 1.0, eot_samples=5, action_samples=3)
    assert stochastic.stochastic and (stochastic.eot_samples, stochastic.action_samples) == (5, 3)
    stochastic.act(frames[:2])
    assert counting.rows == [6, 10, 6]  # 3 action draws, 5 EOT draws, 3 action draws


def test_stochastic_draws_follow_the_seed(net: QNetwork, frames: torch.Tensor) -> None:
    model = apply_defense(net, "sap-100")
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(ObservationAttack(model, "fgsm", 2.0).act(frames)[1])
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": -1.0}, "eps must be >= 0"),
        ({"eps": float("nan")}, "finite"),
        ({"perturb": "first"}, "perturb must be"),
        ({"eot_samples": 0}, "eot_samples"),
        ({"attack": "fgsmm"}, "unknown attack"),
    ],
)
def test_bad_settings_are_user_errors(net: QNetwork, kwargs: dict, message: str) -> None:
    settings = {"attack": "fgsm", "eps": 1.0, **kwargs}
    with pytest.raises(UserError, match=message):
        ObservationAttack(net, settings.pop("attack"), settings.pop("eps"), **settings)


def test_check_eps() -> None:
    assert check_eps(3) == 3.0
    with pytest.raises(UserError):
        check_eps(True)


# ----------------------------------------------------------------------------- the wrapper


def _env(seed: int = 0) -> gym.Env:
    return make_env(GAME, seed=seed, training=False,
                    preprocessing=AtariPreprocessing(max_episode_frames=400))  # fmt: skip


@pytest.mark.parametrize(
    ("eps", "attack", "dtype"),
    [(2, "fgsm", np.uint8), (3.0, "pgd-3", np.uint8), (0.5, "fgsm", np.float32),
     (1.5, "pgd-2", np.float32), (0, "fgsm", np.uint8)],
)  # fmt: skip
def test_wrapper_observations_in_ball_space_and_dtype(
    net: QNetwork, eps: float, attack: str, dtype: type
) -> None:
    env = PerturbObservation(_env(), net, attack, eps)
    assert env.observation_space.dtype == dtype
    assert env.observation_space.shape == (4, 84, 84)
    obs, _ = env.reset()
    for step in range(12):
        assert obs.dtype == dtype and env.observation_space.contains(obs)
        clean = env.clean_observation
        assert clean is not None and clean.dtype == np.uint8
        assert np.abs(obs.astype(np.float64) - clean).max() <= eps + 1e-4
        obs, *_ = env.step(step % N_ACTIONS)
    env.close()


def test_wrapper_fgsm_matches_the_batched_path_exactly(net: QNetwork) -> None:
    """FGSM with an integer eps needs no rounding: the uint8 frames are the batched float frames."""
    env = PerturbObservation(_env(), net, "fgsm", 2, perturb="last")
    attacker = ObservationAttack(net, "fgsm", 2.0, perturb="last")
    obs, _ = env.reset()
    for step in range(8):
        expected = attacker.perturb(obs_to_tensor(env.clean_observation))[0]  # type: ignore[arg-type]
        assert np.array_equal(obs, expected.numpy().astype(np.uint8))
        assert np.array_equal(obs[:3], env.clean_observation[:3])  # type: ignore[index]
        obs, *_ = env.step(step % N_ACTIONS)
    env.close()


def test_wrapper_refuses_silent_rounding_of_fractional_eps(net: QNetwork) -> None:
    with pytest.raises(UserError, match="float32"):
        PerturbObservation(_env(), net, "fgsm", 0.5, dtype="uint8")
    env = PerturbObservation(_env(), net, "fgsm", 2, dtype="float32")
    obs, _ = env.reset()
    assert obs.dtype == np.float32
    env.close()


def test_stable_baselines3_evaluate_policy_runs_on_the_wrapper(net: QNetwork) -> None:
    """SB3 users: wrap the env, attack the DQN's own Q-network, evaluate as usual."""
    from stable_baselines3 import DQN
    from stable_baselines3.common.evaluation import evaluate_policy

    from sap_rl.rl.agent import q_network_from_sb3

    model = DQN("CnnPolicy", _env(), buffer_size=100, learning_starts=0, seed=0, device="cpu")
    victim = q_network_from_sb3(model.policy.q_net)
    for eps in (2, 0.5):  # uint8 and float32 observation spaces
        env = PerturbObservation(_env(seed=1), victim, "fgsm", eps)
        rewards, lengths = evaluate_policy(
            model, env, n_eval_episodes=1, return_episode_rewards=True
        )
        assert isinstance(rewards, list) and isinstance(lengths, list)
        assert len(rewards) == 1 and 0 < lengths[0] <= 100
        env.close()
