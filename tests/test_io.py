"""Tests of atomic writes and safe tensor files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sap_rl.errors import UserError
from sap_rl.io import (
    atomic_path,
    atomic_write_json,
    load_tensors,
    read_json,
    save_tensors,
    sha256_file,
)


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "card.json"
    atomic_write_json(target, {"v": 1})

    def interrupted_write() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_safetensors_round_trip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    tensors = {"w": torch.randn(3, 4), "b": torch.zeros(4)}
    save_tensors(path, tensors, metadata={"format": "pt"})
    loaded = load_tensors(path)
    assert set(loaded) == {"w", "b"} and torch.equal(loaded["w"], tensors["w"])
    digest = sha256_file(path)
    assert len(digest) == 64
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_tensors(path)
    with pytest.raises(UserError, match="weights file not found"):
        load_tensors(tmp_path / "missing.safetensors")


def test_read_json_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found"):
        read_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_json(bad)
