"""Tests of atomic writes and safe tensor files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from sap_rl.errors import UserError
from sap_rl.io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_out_dir,
    current_umask,
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


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_text(tmp_path / "summary.csv", "a,b\n")
        save_tensors(tmp_path / "w.safetensors", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    for name in ("summary.csv", "w.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_check_out_dir_refuses_files_and_unwritable_places(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("keep")
    assert check_out_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert check_out_dir(tmp_path) == tmp_path
    with pytest.raises(UserError, match=r"^--out .*notes.txt is a file, not a folder$"):
        check_out_dir(file)
    with pytest.raises(UserError, match=r"notes.txt/a/b: .*notes.txt is a file, not a folder$"):
        check_out_dir(file / "a" / "b")
    with pytest.raises(UserError, match=r"^--model-dir "):
        check_out_dir(file, flag="--model-dir")
    assert file.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing created
