"""Fixtures for the Atari tests: real ALE games with tiny settings.

One tiny training run (Breakout, 300 steps, through the real ``sap-rl train`` command) is shared
by the save/load, resume and CLI tests, so the whole file set stays well under two minutes. The
evaluation and attack tests share an untrained Nature-CNN agent for Assault (``net``, saved as an
agent folder by ``save_assault_agent``): its score reacts to perturbations.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from sap_rl.rl.agent import AgentCard, QNetwork, Score, save_agent

TINY_STEPS = 300
ASSAULT_ACTIONS = 7

TINY_CONFIG = f"""\
timesteps: {TINY_STEPS}
torch_threads: 1
checkpoint_freq: 200
progress_bar: false
device: cpu
dqn:
  buffer_size: 500
  learning_starts: 100
  train_freq: 4
  n_steps: 3
  target_update_interval: 100
eval:
  freq: 150
  episodes: 2
  final_episodes: 2
  n_envs: 2
"""


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Tiny CNN batches run fastest on one thread, and the test machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_config_file: Path) -> Path:
    """Run ``sap-rl train`` once on Breakout for 300 steps; return its (read-only) run folder."""
    from sap_rl.cli import main

    out = tmp_path_factory.mktemp("run") / "breakout"
    code = main(
        ["train", "--game", "breakout", "--config", str(tiny_config_file), "--out", str(out)]
    )
    assert code == 0
    return out


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared run folder (for tests that modify it)."""
    target = tmp_path / trained_run.name
    shutil.copytree(trained_run, target)
    return target


@pytest.fixture
def agent_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared run's agent folder."""
    target = tmp_path / "agent"
    shutil.copytree(trained_run / "agent", target)
    return target


@pytest.fixture(scope="module")
def net() -> QNetwork:
    """An untrained Nature-CNN agent for Assault (7 actions), seeded 0."""
    torch.manual_seed(0)
    return QNetwork(ASSAULT_ACTIONS).eval()


@pytest.fixture(scope="session")
def save_assault_agent() -> Callable[..., Path]:
    """``save(folder, net, random_score=-5.0)``: an Assault agent folder with a made-up card."""

    def save(folder: Path, net: QNetwork, *, random_score: float | None = -5.0) -> Path:
        card = AgentCard(name=folder.name, game="Assault", env_id="ALE/Assault-v5",
                         clean_score=Score(30.0, 5.0, 3), random_score=random_score)  # fmt: skip
        save_agent(folder, net, card)
        return folder

    return save


@pytest.fixture(scope="module")
def agent_dir(
    tmp_path_factory: pytest.TempPathFactory, net: QNetwork, save_assault_agent: Callable[..., Path]
) -> Path:
    """``net`` saved as the agent folder ``assault-test`` (read-only: copy it to change it)."""
    return save_assault_agent(tmp_path_factory.mktemp("agents") / "assault-test", net)
