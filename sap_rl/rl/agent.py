"""Agent folders: a plain Q-network, its card, and pickle-free save / load.

An agent folder holds two files:

- ``model.safetensors``: the Q-network weights (names of :class:`QNetwork`'s ``state_dict``);
- ``card.json``: an :class:`AgentCard` (game, hyperparameters, wrappers, clean and random scores,
  the SHA-256 of ``model.safetensors``...).

:func:`load_agent` never unpickles: weights come from safetensors, the card from JSON, and every
problem (missing file, corrupted weights, checksum mismatch, wrong game, wrong action count) is a
one-line :class:`~sap_rl.errors.UserError`. The folder's name is the agent's name: a shipped
agent ``agents/<name>/`` has ``"name": "<name>"`` in its card.

Example:
    >>> import tempfile
    >>> net = QNetwork(6)
    >>> card = AgentCard(name="demo", game="Pong", env_id="ALE/Pong-v5", n_actions=6)
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_agent(folder, net, card)
    >>> loaded, card2 = load_agent(folder, game="pong")
    >>> card2.game, loaded(torch.zeros(1, 4, 84, 84)).shape
    ('Pong', torch.Size([1, 6]))
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sap_rl.config import from_dict, to_dict
from sap_rl.errors import UserError
from sap_rl.io import atomic_write_json, load_tensors, read_json, save_tensors, sha256_file
from sap_rl.sap import chain_copies

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CARD_FILE = "card.json"
FORMAT = "sap-rl/qnetwork-nature-cnn/v1"

#: Weight dtypes :func:`load_agent` accepts; half precision is upcast to float32 on load.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# SB3 ``QNetwork`` state-dict names -> :class:`QNetwork` names (one-to-one, same shapes).
_SB3_TO_OURS = {
    "features_extractor.cnn.0.": "cnn.0.",
    "features_extractor.cnn.2.": "cnn.2.",
    "features_extractor.cnn.4.": "cnn.4.",
    "features_extractor.linear.0.": "linear.0.",
    "q_net.0.": "head.",
}


class QNetwork(nn.Module):
    """Nature-DQN Q-network on pixel-unit input (same layers as SB3's ``NatureCNN`` + linear head).

    Input: float ``(B, 4, 84, 84)`` in ``[0, 255]`` (channels first; divided by 255 inside).
    Output: ``(B, n_actions)`` Q-values. Every nonlinearity is an ``nn.ReLU`` module, so
    :func:`sap_rl.sap.apply_sap` can insert SAP after each of them.

    Example:
        >>> net = QNetwork(4)
        >>> net(torch.full((2, 4, 84, 84), 255.0)).shape
        torch.Size([2, 4])
    """

    def __init__(self, n_actions: int, in_channels: int = 4) -> None:
        super().__init__()
        if n_actions < 1:
            raise ValueError(f"n_actions must be >= 1, got {n_actions}")
        self.n_actions = n_actions
        self.cnn = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.linear = nn.Sequential(nn.Linear(3136, 512), nn.ReLU())
        self.head = nn.Linear(512, n_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Q-values for a float batch of pixel-unit frame stacks."""
        out: torch.Tensor = self.head(self.linear(self.cnn(x / 255.0)))
        return out

    def forward_copies(self, x: torch.Tensor, copies: int) -> torch.Tensor:
        """``self`` on ``copies`` copies of ``x`` (copy-major), each with its own random draws.

        Used by :func:`sap_rl.sap.forward_copies` (EOT gradients, Monte Carlo averages): the
        layers before the first stochastic one run once, not ``copies`` times. With
        ``copies=1`` this is exactly ``self(x)``.

        Example:
            >>> net = QNetwork(3)
            >>> x = torch.rand(2, 4, 84, 84) * 255
            >>> torch.equal(net.forward_copies(x, 2), torch.cat([net(x), net(x)]))
            True
        """
        layers = [*self.cnn, *self.linear, self.head]
        return chain_copies(layers, x / 255.0, copies)


def state_dict_from_sb3(sb3_q_net: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an SB3 DQN ``q_net`` state dict (``policy.q_net``) to :class:`QNetwork` names.

    Example:
        >>> ours = QNetwork(3)
        >>> sorted(state_dict_from_sb3_names(ours.state_dict()))[:2]
        ['cnn.0.bias', 'cnn.0.weight']
    """
    return state_dict_from_sb3_names(sb3_q_net.state_dict())


def state_dict_from_sb3_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename SB3 state-dict keys to :class:`QNetwork` keys (keys already ours pass through)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new = key
        for old_prefix, new_prefix in _SB3_TO_OURS.items():
            if key.startswith(old_prefix):
                new = new_prefix + key[len(old_prefix) :]
                break
        renamed[new] = tensor.detach().clone()
    return renamed


def q_network_from_sb3(sb3_q_net: nn.Module) -> QNetwork:
    """A CPU :class:`QNetwork` with the weights of an SB3 DQN ``policy.q_net`` (Nature CNN).

    Example:
        >>> from stable_baselines3 import DQN  # doctest: +SKIP
        >>> net = q_network_from_sb3(model.policy.q_net)  # doctest: +SKIP
    """
    state = state_dict_from_sb3(sb3_q_net)
    if "head.weight" not in state:
        raise ValueError("not a Nature-CNN SB3 Q-network (no q_net.0.weight)")
    net = QNetwork(
        int(state["head.weight"].shape[0]), in_channels=int(state["cnn.0.weight"].shape[1])
    )
    net.load_state_dict({k: v.cpu() for k, v in state.items()})
    return net.eval()


@dataclass
class Score:
    """Mean and standard deviation of whole-game scores over ``episodes`` games."""

    mean: float = 0.0
    std: float = 0.0
    episodes: int = 0


@dataclass
class AgentCard:
    """``card.json``: what the agent is, how it was trained and how well it plays.

    The first twelve fields are the card every agent has; the rest are optional additions.
    """

    name: str
    game: str
    env_id: str
    algorithm: str = "DDQN"
    timesteps: int = 0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    wrappers: dict[str, Any] = field(default_factory=dict)
    clean_score: Score = field(default_factory=Score)
    random_score: float | None = None
    sha256: str = ""
    sap_rl_version: str = ""
    trained_on: str = ""
    # --- additions ---
    n_actions: int | None = None
    human_score: float | None = None
    reference_random_score: float | None = None
    human_normalized: float | None = None
    seed: int | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    pruning: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dict in field order."""
        return to_dict(self)

    def with_reference_scores(self) -> AgentCard:
        """A copy with ``human_score``, ``reference_random_score`` and ``human_normalized`` set.

        The references are the standard Atari tables (:data:`sap_rl.rl.games.REFERENCE_SCORES`);
        ``human_normalized`` is ``(clean mean - random) / (human - random)`` with those tables'
        random score (the card's own ``random_score`` is measured on the card's games).

        Example:
            >>> card = AgentCard(name="a", game="Krull", env_id="ALE/Krull-v5",
            ...                  clean_score=Score(mean=2665.5, episodes=1))
            >>> round(card.with_reference_scores().human_normalized, 3)
            1.0
        """
        from sap_rl.rl.games import resolve_game

        game = resolve_game(self.game)
        ref = game.reference
        if ref is None:
            return self
        return dataclasses.replace(
            self,
            human_score=ref.human,
            reference_random_score=ref.random,
            human_normalized=game.normalized(self.clean_score.mean),
        )


def _version() -> str:
    from sap_rl import __version__

    return __version__


def utc_now() -> str:
    """Current UTC time as ISO-8601 (seconds), for ``trained_on``."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def save_agent(
    path: str | os.PathLike[str],
    q_net: nn.Module,
    card: AgentCard,
    *,
    masks: dict[str, torch.Tensor] | None = None,
) -> AgentCard:
    """Write ``model.safetensors`` + ``card.json`` into folder ``path`` (atomically, no pickle).

    ``q_net`` may be a :class:`QNetwork` or an SB3 ``policy.q_net``. The card's ``sha256``,
    ``n_actions``, ``sap_rl_version`` and (if empty) ``trained_on`` are filled in. ``masks`` (a
    pruned network's ``{"<layer>.weight": bool}``, ``sap-rl prune``) are stored beside the
    weights and checked by :func:`load_agent`.

    Returns:
        The card as written.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = state_dict_from_sb3_names(q_net.state_dict())
    expected = set(QNetwork(1).state_dict())
    if set(state) != expected:
        raise ValueError(f"not a Nature-CNN Q-network: keys {sorted(state)}")
    actions = int(state["head.weight"].shape[0])
    model_path = folder / MODEL_FILE
    from sap_rl.pruning.export import mask_tensors

    save_tensors(
        model_path,
        {**state, **mask_tensors(masks or {})},
        metadata={"format": FORMAT, "game": card.game, "n_actions": str(actions)},
    )
    written = dataclasses.replace(
        card,
        sha256=sha256_file(model_path),
        n_actions=actions,
        sap_rl_version=card.sap_rl_version or _version(),
        trained_on=card.trained_on or utc_now(),
    )
    atomic_write_json(folder / CARD_FILE, written.to_json())
    logger.info("saved agent %s (%s, %d actions) to %s", card.name, card.game, actions, folder)
    return written


def _agent_folder(path: str | os.PathLike[str]) -> Path:
    folder = Path(path)
    if folder.is_file() and folder.name in (MODEL_FILE, CARD_FILE):
        folder = folder.parent
    if not folder.exists():
        raise UserError(f"agent folder not found: {folder}")
    if not folder.is_dir():
        raise UserError(f"{folder}: expected an agent folder with {MODEL_FILE} and {CARD_FILE}")
    for name in (CARD_FILE, MODEL_FILE):
        if not (folder / name).is_file():
            raise UserError(
                f"{folder}: missing {name} (an agent folder has {MODEL_FILE} + {CARD_FILE})"
            )
    return folder


def read_card(path: str | os.PathLike[str]) -> AgentCard:
    """Read and validate the ``card.json`` of an agent folder (or the file itself)."""
    card_path = Path(path)
    if card_path.is_dir():
        card_path = card_path / CARD_FILE
    data = read_json(card_path)
    try:
        return from_dict(AgentCard, data)
    except UserError as err:
        raise UserError(f"{card_path}: {err}") from None


def _check_weights_game(model_path: Path, card_game: str) -> None:
    """The weights' own record of their game (safetensors metadata) must be the card's game."""
    from safetensors import SafetensorError, safe_open

    from sap_rl.rl.games import resolve_game

    try:
        with safe_open(str(model_path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{model_path}: not a valid safetensors file ({err})") from None
    saved = metadata.get("game")
    if not saved:
        raise UserError(
            f"{model_path}: no 'game' in the weights' metadata; re-save the agent with save_agent"
        )
    try:
        saved_game = resolve_game(saved).name
    except UserError:
        saved_game = saved
    if saved_game != card_game:
        raise UserError(
            f"{model_path}: the weights were saved for {saved_game} but card.json says "
            f"{card_game}; the card or the weights were modified"
        )


def _checked_float32(model_path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` in float32; a dtype not in :data:`WEIGHT_DTYPES` or a NaN/inf is an error."""
    checked: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if tensor.dtype not in WEIGHT_DTYPES:
            dtype = str(tensor.dtype).removeprefix("torch.")
            raise UserError(
                f"{model_path}: tensor {name!r} is {dtype}; agent weights must be float32, "
                "float16 or bfloat16"
            )
        # Upcast first: the network computes in float32 whatever the storage precision.
        tensor = tensor.to(torch.float32)
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise UserError(
                f"{model_path}: tensor {name!r} has {bad} NaN or infinite values; "
                "the weights are unusable"
            )
        checked[name] = tensor
    return checked


def load_agent(
    path: str | os.PathLike[str],
    *,
    game: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[QNetwork, AgentCard]:
    """Load an agent folder into a :class:`QNetwork` (eval mode) and its :class:`AgentCard`.

    Checks, each failure a one-line :class:`~sap_rl.errors.UserError`: the card parses; the
    weights file's SHA-256 is the card's; the weights file's metadata names the card's game
    (written by :func:`save_agent`, so an edited ``game`` in the card is caught); every tensor is
    float32, float16 or bfloat16 (half precision is upcast to float32; integer, float64 and
    other dtypes are refused, since a quantized network would need its scales) and finite (no
    NaN or inf); the shapes are the Nature-CNN Q-network's; the action count is the card's and
    the game's.

    Args:
        path: the agent folder (or its ``card.json`` / ``model.safetensors``).
        game: if given, the game the caller will play; a different game is an error.
        device: where to put the network.

    Raises:
        UserError: missing files, invalid card, checksum mismatch (corrupted or modified weights),
            unreadable weights, weights saved for another game than the card's, a tensor of
            another dtype or with NaN/inf values, wrong game, or an action count that does not
            match the game.

    Example:
        >>> net, card = load_agent("agents/krull-ddqn", game="Krull")  # doctest: +SKIP
    """
    from sap_rl.rl.envs import n_actions as game_actions
    from sap_rl.rl.games import resolve_game

    folder = _agent_folder(path)
    card = read_card(folder)
    model_path = folder / MODEL_FILE
    digest = sha256_file(model_path)
    if card.sha256 and digest != card.sha256:
        raise UserError(
            f"{model_path}: SHA-256 {digest[:12]}... does not match card.json "
            f"({card.sha256[:12]}...); the weights are corrupted or were modified"
        )
    if not card.sha256:
        raise UserError(f"{folder / CARD_FILE}: no sha256; re-save the agent")
    card_game = resolve_game(card.game)
    if game is not None:
        wanted = resolve_game(game)
        if wanted.name != card_game.name:
            raise UserError(
                f"agent {card.name!r} was trained on {card_game.name}, not {wanted.name}"
            )
    from sap_rl.pruning.export import check_masks, split_masks

    state, masks = split_masks(load_tensors(model_path))
    _check_weights_game(model_path, card_game.name)
    state = _checked_float32(model_path, state)
    check_masks(state, masks, str(model_path))  # a pruned agent's zeros are where its masks say
    head = state.get("head.weight")
    if head is None or head.ndim != 2:
        raise UserError(f"{model_path}: not a sap-rl Q-network (no 2-D 'head.weight')")
    actions = int(head.shape[0])
    if card.n_actions is not None and card.n_actions != actions:
        raise UserError(
            f"{model_path}: the network has {actions} actions but card.json says {card.n_actions}"
        )
    expected_actions = game_actions(card_game)
    if actions != expected_actions:
        raise UserError(
            f"{model_path}: the network has {actions} actions but {card_game.name} has "
            f"{expected_actions}; wrong game or full action set"
        )
    net = QNetwork(actions)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise UserError(
            f"{model_path}: weights do not fit the Nature-CNN Q-network ({detail})"
        ) from None
    return net.to(device).eval(), card
