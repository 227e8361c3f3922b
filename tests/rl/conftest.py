"""Fixtures for the Atari training tests: real ALE games with tiny settings.

One tiny training run (Breakout, 300 steps, through the real ``sap-rl train`` command) is shared
by the save/load, resume and CLI tests, so the whole file set stays well under two minutes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

TINY_STEPS = 300

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
