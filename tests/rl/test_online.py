"""``perturb="online"`` on the real ALE: each frame is perturbed once and stays so."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from sap_rl.defenses import apply_defense
from sap_rl.rl.agent import QNetwork
from sap_rl.rl.envs import make_env, obs_to_tensor
from sap_rl.rl.perturb import ObservationAttack, PerturbObservation
from sap_rl.rl.play import make_eval_envs, play_matched_games, preprocessing_for

EPS = 3.0


def _check_online(clean: list[torch.Tensor], seen: list[torch.Tensor]) -> None:
    """One game's stacks: frame t as seen at step t is unchanged at steps t+1..t+3."""
    assert len(seen) >= 5
    assert torch.equal(seen[0][:3], clean[0][:3])  # the reset padding was never emitted
    for t, stack in enumerate(seen):
        assert float((stack - clean[t]).abs().max()) <= EPS
        assert not torch.equal(stack[3], clean[t][3])  # the newest frame is perturbed
        for k in (1, 2, 3):
            if t + k < len(seen):
                assert torch.equal(seen[t + k][3 - k], stack[3]), (t, k)
                assert torch.equal(clean[t + k][3 - k], clean[t][3])  # the env's own stack


@pytest.mark.parametrize("defense", ["dense", "sap-100"])
def test_batched_online_keeps_each_perturbed_frame(defense: str) -> None:
    torch.manual_seed(0)
    model = apply_defense(QNetwork(6), defense)
    attack = ObservationAttack(model, "pgd-2", EPS, perturb="online",
                               generator=torch.Generator().manual_seed(0))  # fmt: skip
    clean: dict[int, list[torch.Tensor]] = {}
    seen: dict[int, list[torch.Tensor]] = {}

    def policy(obs: np.ndarray, games: Sequence[int]) -> np.ndarray:
        x = obs_to_tensor(obs)
        actions, frames = attack.act(x, games)
        for row, g in enumerate(games):
            clean.setdefault(g, []).append(x[row])
            seen.setdefault(g, []).append(frames[row])
        return actions.numpy()

    # 3 games on 2 envs: a slot starts a new game while the other still plays
    envs = make_eval_envs("Pong", 2, preprocessing_for(20))
    try:
        games = play_matched_games(envs, policy, 3, seed=0)
    finally:
        for env in envs:
            env.close()
    assert sorted(seen) == [0, 1, 2]
    for g in seen:
        assert len(seen[g]) >= 5 and games[g].length >= len(seen[g])
        _check_online(clean[g], seen[g])


def test_wrapper_online_keeps_each_perturbed_frame() -> None:
    torch.manual_seed(0)
    env = PerturbObservation(
        make_env("Pong", seed=0, training=False, preprocessing=preprocessing_for(20)),
        QNetwork(6), "fgsm", EPS, perturb="online", dtype="float32",
    )  # fmt: skip
    try:
        for _ in range(2):  # the second game starts afresh
            obs, _ = env.reset()
            clean, seen = [], []
            while True:
                assert env.clean_observation is not None
                clean.append(torch.as_tensor(env.clean_observation).float())
                seen.append(torch.as_tensor(obs))
                obs, _, terminated, truncated, _ = env.step(0)
                if terminated or truncated:
                    break
            _check_online(clean, seen)
    finally:
        env.close()


def test_online_needs_the_games() -> None:
    attack = ObservationAttack(QNetwork(6), "fgsm", 1.0, perturb="online")
    with pytest.raises(ValueError, match="games"):
        attack.perturb(torch.zeros(1, 4, 84, 84))
