"""Q-network layout, SB3 weight conversion and agent folders (save / load, every failure mode)."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sap_rl.errors import UserError
from sap_rl.rl.agent import (
    CARD_FILE,
    MODEL_FILE,
    AgentCard,
    QNetwork,
    load_agent,
    q_network_from_sb3,
    read_card,
    save_agent,
)
from sap_rl.rl.dqn import DoubleDQN
from sap_rl.rl.envs import make_vec_env, obs_to_tensor


def test_qnetwork_layout_for_sap() -> None:
    net = QNetwork(6)
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 4
    x = torch.full((3, 4, 84, 84), 128.0)
    assert net(x).shape == (3, 6)
    assert not any(isinstance(m, nn.Dropout | nn.BatchNorm2d) for m in net.modules())


def test_sap_inserts_after_every_relu_of_the_qnetwork() -> None:
    from sap_rl.sap import SAP, apply_sap, remove_sap

    net = QNetwork(4).eval()
    x = torch.rand(2, 4, 84, 84) * 255
    clean = net(x)
    apply_sap(net, 1.0)
    assert sum(isinstance(m, SAP) for m in net.modules()) == 4
    remove_sap(net)
    assert torch.equal(net(x), clean)


def test_sb3_q_net_maps_one_to_one() -> None:
    env = make_vec_env("Pong", 2, seed=0, training=False)
    # NCHW like the agent's network: channels-last convolutions round differently
    model = DoubleDQN("CnnPolicy", env, buffer_size=10, device="cpu", seed=0, channels_last=False)
    obs = env.reset()
    for _ in range(10):
        obs, *_ = env.step(np.ones(2, dtype=np.int64))
    ours = q_network_from_sb3(model.policy.q_net)
    with torch.no_grad():
        theirs_q = model.policy.q_net(torch.as_tensor(obs))
        ours_q = ours(obs_to_tensor(obs))
    assert torch.equal(theirs_q, ours_q)
    assert len(list(ours.parameters())) == len(list(model.policy.q_net.parameters()))
    env.close()


def _card(game: str = "Breakout") -> AgentCard:
    return AgentCard(name="t", game=game, env_id=f"ALE/{game}-v5")


def test_save_and_load_roundtrip(tmp_path: Path) -> None:
    net = QNetwork(4)
    card = save_agent(tmp_path, net, _card())
    assert (tmp_path / MODEL_FILE).is_file()
    assert card.n_actions == 4
    assert len(card.sha256) == 64
    loaded, loaded_card = load_agent(tmp_path, game="BREAKOUT")
    assert loaded_card == card
    assert not loaded.training
    x = torch.rand(5, 4, 84, 84) * 255
    assert torch.equal(loaded(x), net(x))
    # the card's required fields come first, in order (optional additions follow)
    data = json.loads((tmp_path / CARD_FILE).read_text())
    design = ["name", "game", "env_id", "algorithm", "timesteps", "hyperparameters", "wrappers",
              "clean_score", "random_score", "sha256", "sap_rl_version", "trained_on"]  # fmt: skip
    assert list(data)[: len(design)] == design
    assert set(data["clean_score"]) == {"mean", "std", "episodes"}
    assert data["algorithm"] == "DDQN"


def test_load_accepts_files_inside_the_folder(tmp_path: Path) -> None:
    net = QNetwork(4)
    card = save_agent(tmp_path, net, _card())
    x = torch.rand(3, 4, 84, 84) * 255
    for path in (tmp_path / CARD_FILE, tmp_path / MODEL_FILE):
        loaded, loaded_card = load_agent(path)  # the folder's agent, whichever file is named
        assert loaded_card == card
        assert torch.equal(loaded(x), net(x))


def test_load_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_agent(tmp_path, QNetwork(4), _card())

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling is not allowed")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_agent(tmp_path)


def _one_line_error(path: Path, match: str, **kwargs: str) -> None:
    with pytest.raises(UserError, match=match) as err:
        load_agent(path, **kwargs)
    assert "\n" not in str(err.value)


def test_missing_files(tmp_path: Path) -> None:
    _one_line_error(tmp_path / "nope", "agent folder not found")
    save_agent(tmp_path / "a", QNetwork(4), _card())
    (tmp_path / "a" / MODEL_FILE).unlink()
    _one_line_error(tmp_path / "a", f"missing {MODEL_FILE}")
    save_agent(tmp_path / "b", QNetwork(4), _card())
    (tmp_path / "b" / CARD_FILE).unlink()
    _one_line_error(tmp_path / "b", f"missing {CARD_FILE}")


def test_corrupted_weights(tmp_path: Path) -> None:
    save_agent(tmp_path, QNetwork(4), _card())
    model = tmp_path / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF  # flip a weight byte: the file still parses, the checksum does not match
    model.write_bytes(bytes(data))
    _one_line_error(tmp_path, "SHA-256 .* does not match")


def test_truncated_weights_with_matching_checksum(tmp_path: Path) -> None:
    from sap_rl.io import sha256_file

    save_agent(tmp_path, QNetwork(4), _card())
    model = tmp_path / MODEL_FILE
    model.write_bytes(model.read_bytes()[:1000])
    card = json.loads((tmp_path / CARD_FILE).read_text())
    card["sha256"] = sha256_file(model)
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    _one_line_error(tmp_path, "not a valid safetensors file")


def test_wrong_game(tmp_path: Path) -> None:
    save_agent(tmp_path, QNetwork(4), _card())
    _one_line_error(tmp_path, "trained on Breakout, not Pong", game="pong")
    _one_line_error(tmp_path, "unknown game", game="Pnog")


def test_wrong_action_count(tmp_path: Path) -> None:
    # A 4-action network whose card claims Pong (6 actions).
    save_agent(tmp_path, QNetwork(4), _card("Pong"))
    _one_line_error(tmp_path, "4 actions but Pong has 6")
    # Card and weights disagree.
    save_agent(tmp_path / "b", QNetwork(4), _card())
    card = json.loads((tmp_path / "b" / CARD_FILE).read_text())
    card["n_actions"] = 18
    (tmp_path / "b" / CARD_FILE).write_text(json.dumps(card))
    _one_line_error(tmp_path / "b", "card.json says 18")


def test_bad_card(tmp_path: Path) -> None:
    save_agent(tmp_path, QNetwork(4), _card())
    card_path = tmp_path / CARD_FILE
    card = json.loads(card_path.read_text())
    card["colour"] = "blue"
    card_path.write_text(json.dumps(card))
    _one_line_error(tmp_path, "unknown config key 'colour'")
    card_path.write_text("{not json")
    _one_line_error(tmp_path, "not valid JSON")
    del card["colour"]
    card["clean_score"] = {"mean": "high"}
    card_path.write_text(json.dumps(card))
    with pytest.raises(UserError, match=r"clean_score\.mean"):
        read_card(tmp_path)


def test_forward_copies_shares_the_first_convolution_and_matches_forward() -> None:
    from sap_rl.sap import apply_sap, forward_copies

    torch.manual_seed(0)
    net = apply_sap(QNetwork(5), 1.0)
    x = torch.rand(3, 4, 84, 84) * 255
    torch.manual_seed(1)
    once = net(x)
    torch.manual_seed(1)
    assert torch.equal(net.forward_copies(x, 1), once)  # same ops, same draws: bit for bit
    rows: list[int] = []
    net.cnn[0].register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    head_rows: list[int] = []
    net.head.register_forward_pre_hook(lambda _m, args: head_rows.append(args[0].shape[0]))
    out = forward_copies(net, x, 16)
    assert out.shape == (48, 5) and rows == [3] and head_rows == [48]


# --- tampered agent folders: weights re-written and the card re-signed, so the checksum passes ---

SHIPPED = Path(__file__).resolve().parents[2] / "agents"


def _resign(folder: Path, **card_changes: object) -> None:
    """Put the weights' SHA-256 (and ``card_changes``) into the card, as a tamperer would."""
    from sap_rl.io import sha256_file

    card = json.loads((folder / CARD_FILE).read_text())
    card.update(card_changes, sha256=sha256_file(folder / MODEL_FILE))
    (folder / CARD_FILE).write_text(json.dumps(card))


def _rewrite_weights(
    folder: Path, change: Callable[[dict[str, torch.Tensor]], None], metadata: bool = True
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = folder / MODEL_FILE
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata=meta if metadata else None)
    _resign(folder)


def test_card_whose_game_was_edited_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # RoadRunner weights under a card that says Krull: both games have 18 actions.
    folder = tmp_path / "roadrunner-ddqn"
    shutil.copytree(SHIPPED / "roadrunner-ddqn", folder)
    _resign(folder, game="Krull", env_id="ALE/Krull-v5")
    match = "saved for RoadRunner but card.json says Krull"
    _one_line_error(folder, match)
    _one_line_error(folder, match, game="Krull")
    # the commands stop before playing: one line, exit code 2
    from sap_rl.cli import main

    assert main(["score", str(folder), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_weights_without_game_metadata_are_refused(tmp_path: Path) -> None:
    save_agent(tmp_path, QNetwork(4), _card())
    _rewrite_weights(tmp_path, lambda state: None, metadata=False)
    _one_line_error(tmp_path, "no 'game' in the weights' metadata")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path, value: float) -> None:
    save_agent(tmp_path, QNetwork(4), _card())

    def poison(state: dict[str, torch.Tensor]) -> None:
        state["cnn.2.weight"][0, 0, 0, 0] = value

    _rewrite_weights(tmp_path, poison)
    _one_line_error(tmp_path, r"tensor 'cnn\.2\.weight' has 1 NaN or infinite values")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_upcast(tmp_path: Path, dtype: torch.dtype) -> None:
    net = QNetwork(4)
    save_agent(tmp_path, net, _card())

    def halve(state: dict[str, torch.Tensor]) -> None:
        for name in state:
            state[name] = state[name].to(dtype)

    _rewrite_weights(tmp_path, halve)
    loaded, _ = load_agent(tmp_path)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    expected = {k: v.to(dtype).to(torch.float32) for k, v in net.state_dict().items()}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.float64])
def test_other_weight_dtypes_are_refused(tmp_path: Path, dtype: torch.dtype) -> None:
    save_agent(tmp_path, QNetwork(4), _card())

    def convert(state: dict[str, torch.Tensor]) -> None:
        state["head.weight"] = state["head.weight"].to(dtype)

    _rewrite_weights(tmp_path, convert)
    name = str(dtype).removeprefix("torch.")
    _one_line_error(tmp_path, rf"tensor 'head\.weight' is {name}; agent weights must be float32")


def test_shipped_agents_are_named_after_their_folders() -> None:
    # Default output folders (runs/evaluate/<card name>) and the results' agent column use the
    # card's name; a name other than the folder's would file the results under a second name.
    folders = sorted(p.parent for p in SHIPPED.glob(f"*/{CARD_FILE}"))
    assert [f.name for f in folders] == [
        "bankheist-ddqn", "freeway-ddqn", "krull-ddqn", "kungfumaster-ddqn", "pong-ddqn",
        "roadrunner-ddqn",
    ]  # fmt: skip
    for folder in folders:
        assert read_card(folder).name == folder.name
        net, card = load_agent(folder)  # and every check of load_agent passes on them
        assert card.clean_score.episodes == 30 and card.random_score is not None
        q = net(torch.zeros(2, 4, 84, 84, dtype=torch.uint8))
        assert q.shape == (2, card.n_actions) and torch.isfinite(q).all()
