"""Shared fixtures: small real data (scikit-learn's digits), small real models, lock holders."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

# Worker processes started with "spawn" unpickle test-defined jobs by module name
# (tests.grid.test_engine...), with the parent's sys.path. Run as the `pytest` console script,
# that path starts at the script's folder, not the repository, so the workers could not import
# the tests package; put the repository root first, as `python -m pytest` would.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)


class DigitsNet(nn.Module):
    """A small CNN for 8x8 digits in pixel units [0, 255] (ReLUs as modules, for SAP)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x / 255.0))


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled handwritten digits in pixel units, fixed train/test split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="session")
def digits_model(digits: tuple[torch.Tensor, ...]) -> nn.Module:
    """A DigitsNet trained for a few seconds (about 95% test accuracy)."""
    x_train, y_train, _, _ = digits
    torch.manual_seed(0)
    model = DigitsNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(12):
        for idx in torch.randperm(len(y_train), generator=generator).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
    return model.eval()


_HOLD_LOCK = """
import sys, time
from sap_rl.lock import output_lock

with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def lock_holder() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """Start another process that holds the output lock of a folder (killed at teardown)."""
    holders: list[subprocess.Popen[str]] = []

    def hold(folder: Path) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True
        )
        holders.append(process)
        assert process.stdout is not None
        assert process.stdout.readline() == "locked\n", "the holder did not take the lock"
        return process

    yield hold
    for process in holders:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
