"""Checkpoints inside a unit of games: a unit stopped mid-way continues to the same games.

A unit of ``sap-rl evaluate`` plays ``n_envs`` games batched through one attack, so it cannot be
split; under a strong attack a game can last tens of thousands of steps and a unit hours. Its
state between two steps is small, and JSON (never pickle):

- **the games** (:class:`~sap_rl.rl.play.PlayState`): the finished games, which game each env slot
  plays, and the actions of each running game. The envs are rebuilt by resetting with the game's
  seed and replaying those actions (the emulator, its sticky actions and the no-op start are all
  seeded by the reset, so the frames are the same);
- **the randomness**: torch's global generator (the defense's draws), the attack's generator
  (random starts), any defense layer's own generator, each game's exploration generator;
- **what the attack remembers**: its per-game step counts and, in ``online`` mode, the frames
  each game's agent last saw.

Restoring all of it and going on gives exactly the games of an uninterrupted run (tested).

Example:
    >>> import json
    >>> from sap_rl.rl.agent import QNetwork
    >>> attack = ObservationAttack(QNetwork(6), "pgd-10", 1.0, generator=torch.Generator())
    >>> saved = json.loads(json.dumps(random_state(attack, {})))
    >>> a = torch.rand(1, generator=attack.generator)
    >>> restore_random_state(saved, attack, {})
    >>> torch.equal(torch.rand(1, generator=attack.generator), a)
    True
"""

from __future__ import annotations

import base64
from dataclasses import asdict, astuple
from typing import Any

import numpy as np
import torch

from sap_rl.rl.perturb import ObservationAttack, StepCounts
from sap_rl.rl.play import GameRecord, PlayState, ResumeError
from sap_rl.sap import stochastic_modules

__all__ = [
    "ResumeError",
    "decode_play_state",
    "describe_state",
    "encode_play_state",
    "random_state",
    "restore_random_state",
]


#: One character per action (Atari has at most 18): a 27,000-step game is 27 kB of text.
_ACTION_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def encode_play_state(state: PlayState) -> dict[str, Any]:
    """A JSON-able copy of ``state``: game indices as strings (JSON keys), each game's actions as
    one character per action.

    Example:
        >>> encode_play_state(PlayState(3, [2, None], {2: [0, 17]}, {}))
        {'next_game': 3, 'playing': [2, None], 'actions': {'2': '0h'}, 'records': [], 'digests': {}}
    """
    return {
        "next_game": state.next_game,
        "playing": list(state.playing),
        "actions": {str(g): _encode_actions(a) for g, a in state.actions.items()},
        "records": [asdict(record) for _, record in sorted(state.records.items())],
        "digests": {str(g): d for g, d in _digests(state).items()},
    }


def decode_play_state(data: Any, n_envs: int, first: int, n_games: int) -> PlayState:
    """The :class:`PlayState` of :func:`encode_play_state`'s dict, checked to be one of
    ``n_games`` games from ``first`` on ``n_envs`` envs.

    Raises:
        ResumeError: ``data`` is not such a state.

    Example:
        >>> data = encode_play_state(PlayState(3, [2, None], {2: [0, 17]}, {}))
        >>> decode_play_state(data, 2, 0, 4)
        PlayState(next_game=3, playing=[2, None], actions={2: [0, 17]}, records={}, digests={})
    """
    try:
        records = [GameRecord(**record) for record in data["records"]]
        state = PlayState(
            next_game=int(data["next_game"]),
            playing=[None if g is None else int(g) for g in data["playing"]],
            actions={int(g): [int(a, 36) for a in text] for g, text in data["actions"].items()},
            records={record.episode: record for record in records},
            digests={int(g): str(d) for g, d in data.get("digests", {}).items()},
        )
        state.check(n_envs, first, n_games)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ResumeError(f"not a state of these games ({err})") from None
    return state


def describe_state(state: Any, n_games: int) -> str | None:
    """How far a unit's saved state (``{"play": ..., ...}``) of ``n_games`` games has played, in
    words; ``None`` if it is not such a state.

    Example:
        >>> play = encode_play_state(PlayState(3, [2, None], {2: [0, 17, 4]}, {}))
        >>> describe_state({"play": play}, 3)
        '0 of 3 games finished, 1 running at 3 agent steps'
    """
    try:
        play = state["play"]
        done = len(play["records"])
        steps = sorted(len(actions) for actions in play["actions"].values())
    except (KeyError, TypeError):
        return None
    text = f"{done} of {n_games} games finished"
    if steps:
        at = f"{steps[0]:,}" if steps[0] == steps[-1] else f"{steps[0]:,}-{steps[-1]:,}"
        text += f", {len(steps)} running at {at} agent steps"
    return text


def random_state(
    attack: ObservationAttack,
    rngs: dict[int, np.random.Generator],
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Everything random or remembered on the policy's side of a unit, as JSON-able values.

    Args:
        attack: the unit's attack (its generator, counts, ``online`` frames; its model's layers).
        rngs: the per-game exploration generators of :func:`~sap_rl.rl.play.agent_policy`.
        device: the model's device (a CUDA device's generator is saved too).
    """
    layers = stochastic_modules(attack.model)
    cuda = device is not None and device.type == "cuda"
    return {
        "torch": _bytes(torch.get_rng_state()),
        "cuda": _bytes(torch.cuda.get_rng_state(device)) if device and cuda else None,
        "attack": _state_of(attack.generator),
        "layers": [_state_of(layer.generator) for layer in layers],
        "exploration": {str(g): rng.bit_generator.state for g, rng in rngs.items()},
        "counts": {str(g): list(astuple(count)) for g, count in attack.counts.items()},
        "seen": {str(g): _frames(frames) for g, frames in attack._seen.items()},
    }


def restore_random_state(
    data: dict[str, Any],
    attack: ObservationAttack,
    rngs: dict[int, np.random.Generator],
    device: torch.device | None = None,
) -> None:
    """Put back what :func:`random_state` saved (the attack's dicts are updated in place).

    Raises:
        ResumeError: the state does not fit this attack (another defense or device).
    """
    try:
        _restore(data, attack, rngs, device)
    except ResumeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise ResumeError(f"not a random state of this attack ({err})") from None


def _restore(
    data: dict[str, Any],
    attack: ObservationAttack,
    rngs: dict[int, np.random.Generator],
    device: torch.device | None,
) -> None:
    layers = stochastic_modules(attack.model)
    cuda = device is not None and device.type == "cuda"
    if (len(data["layers"]) != len(layers) or (data["cuda"] is not None) != cuda
            or (data["attack"] is None) != (attack.generator is None)):  # fmt: skip
        raise ResumeError("the saved random state is not one of this attack")
    torch.set_rng_state(_tensor(data["torch"]))
    if cuda:
        assert device is not None
        torch.cuda.set_rng_state(_tensor(data["cuda"]), device)
    if attack.generator is not None:
        attack.generator.set_state(_tensor(data["attack"]))
    for layer, saved in zip(layers, data["layers"], strict=True):
        if (saved is None) != (layer.generator is None):
            raise ResumeError("the saved random state is not one of this attack")
        if layer.generator is not None:
            layer.generator.set_state(_tensor(saved))
    rngs.clear()
    for g, bit_state in data["exploration"].items():
        rng = np.random.default_rng()
        rng.bit_generator.state = bit_state
        rngs[int(g)] = rng
    attack.counts.clear()
    attack.counts.update({int(g): StepCounts(*c) for g, c in data["counts"].items()})
    model_device = device or torch.device("cpu")
    attack._seen = {int(g): _from_frames(f, model_device) for g, f in data["seen"].items()}


def _digests(state: PlayState) -> dict[int, str]:
    """The running games' frame digests: of the live observations while playing."""
    return state.running_digests() if state.observations else state.digests


def _encode_actions(actions: list[int]) -> str:
    return "".join(_ACTION_DIGITS[a] for a in actions)


def _state_of(generator: torch.Generator | None) -> str | None:
    return None if generator is None else _bytes(generator.get_state())


def _bytes(state: torch.Tensor) -> str:
    """A generator state (a uint8 tensor) as base64 text."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _tensor(text: str) -> torch.Tensor:
    """The uint8 CPU tensor of :func:`_bytes`' text (what ``set_state`` takes)."""
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), np.uint8).copy())


def _frames(frames: torch.Tensor) -> dict[str, Any]:
    """A float tensor as base64 text of its float32 bytes, with its shape."""
    array = frames.detach().cpu().to(torch.float32).contiguous().numpy()
    return {"shape": list(array.shape), "float32": base64.b64encode(array.tobytes()).decode()}


def _from_frames(data: dict[str, Any], device: torch.device) -> torch.Tensor:
    array = np.frombuffer(base64.b64decode(data["float32"]), np.float32).reshape(data["shape"])
    return torch.from_numpy(array.copy()).to(device)
