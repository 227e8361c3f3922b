"""HARP checkpoints: a run stopped after any epoch and resumed ends bitwise where an uninterrupted
run ends; damaged, foreign and pickled checkpoints are refused in one line and never run code."""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from sap_rl.errors import UserError
from sap_rl.pruning import HarpConfig, HarpStopped, harp_prune
from sap_rl.pruning.checkpoint import STATE_FILE, remove_checkpoint, saved_epochs
from sap_rl.pruning.harp import HarpResult


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # tiny models on a shared 2-core machine: one thread is several times faster than two
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net() -> nn.Module:
    torch.manual_seed(0)
    # batch norm (running stats, a learned parameter outside the masks) and dropout (the global
    # RNG) make a resume that forgets either of them differ
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2),
        nn.Linear(64, 3),
    )  # fmt: skip


def _batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1000 + epoch)
    for _ in range(3):
        x = torch.rand(16, 1, 6, 6, generator=generator) * 255
        yield x, (x.mean(dim=(1, 2, 3)) > 127).long() + (x[:, 0, 0, 0] > 200).long()


def _config(optimizer: str = "sgd", **changes: object) -> HarpConfig:
    settings: dict[str, object] = {
        "sparsity": 0.8, "prune_epochs": 2, "finetune_epochs": 2, "steps": 1, "eps": 4.0,
        "step_size": 4.0, "optimizer": optimizer, "lr": 0.05, "finetune_lr": 0.01,
        "gamma": 1.0, **changes,
    }  # fmt: skip
    return HarpConfig(**settings)  # type: ignore[arg-type]


def _stop_after(k: int) -> Callable[[], bool]:
    calls = iter(range(1, 100))
    return lambda: next(calls) >= k


def _same(a: HarpResult, b: HarpResult) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    assert a.masks.keys() == b.masks.keys()
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    strip = [(h.phase, h.epoch, h.lr, h.loss, h.accuracy, h.kept, h.gamma) for h in a.history]
    assert strip == [(h.phase, h.epoch, h.lr, h.loss, h.accuracy, h.kept, h.gamma)
                     for h in b.history]  # fmt: skip


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("k", [1, 2, 3], ids=["pruning", "between", "finetuning"])
def test_resumed_run_is_bitwise_the_uninterrupted_one(
    tmp_path: Path, optimizer: str, k: int
) -> None:
    config = _config(optimizer)
    torch.manual_seed(7)
    whole = harp_prune(_net(), _batches, config)
    torch.manual_seed(7)
    with pytest.raises(HarpStopped) as stopped:
        harp_prune(_net(), _batches, config, checkpoint=tmp_path / "ck", stop=_stop_after(k))
    assert (stopped.value.epochs_done, stopped.value.epochs) == (k, 4)
    assert saved_epochs(tmp_path / "ck") == k
    torch.manual_seed(12345)  # another process's RNG: the checkpoint's state is restored
    resumed = harp_prune(_net(), _batches, config, checkpoint=tmp_path / "ck")
    _same(whole, resumed)
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["model-0004.safetensors", "optimizer-0004.safetensors", STATE_FILE]
    remove_checkpoint(tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_an_interrupt_mid_epoch_keeps_the_last_finished_epoch(tmp_path: Path) -> None:
    config = _config()
    whole = harp_prune(_net(), _batches, config)

    def interrupted(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if epoch == 2:  # Ctrl-C during the first fine-tuning epoch
            raise KeyboardInterrupt
        return _batches(epoch)

    with pytest.raises(KeyboardInterrupt):
        harp_prune(_net(), interrupted, config, checkpoint=tmp_path)
    assert saved_epochs(tmp_path) == 2
    _same(whole, harp_prune(_net(), _batches, config, checkpoint=tmp_path))


def test_a_finished_checkpoint_only_exports(tmp_path: Path) -> None:
    config = _config(prune_epochs=1, finetune_epochs=1)
    first = harp_prune(_net(), _batches, config, checkpoint=tmp_path)

    def no_training(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if epoch > 0:
            raise AssertionError("a finished run trained again")
        return _batches(epoch)

    _same(first, harp_prune(_net(), no_training, config, checkpoint=tmp_path))


@pytest.fixture
def stopped(tmp_path: Path) -> Path:
    """A checkpoint after the first of four epochs."""
    folder = tmp_path / "ck"
    with pytest.raises(HarpStopped):
        harp_prune(_net(), _batches, _config(), checkpoint=folder, stop=lambda: True,
                   checkpoint_key={"batch_size": 16})  # fmt: skip
    return folder


def _resume(folder: Path, **kwargs: object) -> HarpResult:
    config = kwargs.pop("config", _config())
    key = kwargs.pop("key", {"batch_size": 16})
    net = kwargs.pop("net", None) or _net()
    return harp_prune(net, _batches, config, checkpoint=folder, checkpoint_key=key)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"config": _config(sparsity=0.9)}, "harp.sparsity: 0.8 there, 0.9 now"),
        ({"config": _config("adam")}, "harp.optimizer"),
        ({"key": {"batch_size": 32}}, "batch_size: 16 there, 32 now"),
        ({"net": nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                               nn.Dropout(0.2), nn.Linear(64, 3))}, "another source model"),
    ],
)  # fmt: skip
def test_a_checkpoint_of_another_run_is_refused(
    stopped: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(UserError, match="delete") as err:
        _resume(stopped, **changes)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert saved_epochs(stopped) == 1  # nothing overwritten


def _state(folder: Path) -> dict[str, object]:
    return json.loads((folder / STATE_FILE).read_text())


@pytest.mark.parametrize("which", ["model", "optimizer", "state"])
def test_a_truncated_file_is_one_line_naming_it(stopped: Path, which: str) -> None:
    name = STATE_FILE if which == "state" else str(_state(stopped)[which])
    path = stopped / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(UserError) as err:
        _resume(stopped)
    text = str(err.value)
    assert name in text and "to start over" in text and "\n" not in text


class _Payload:
    """A pickle that, once unpickled, creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _torch_save_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("which", ["model", "optimizer", "state"])
@pytest.mark.parametrize("make", [lambda m: pickle.dumps(_Payload(m)), _torch_save_bytes],
                         ids=["pickle", "torch.save"])  # fmt: skip
def test_a_pickle_in_place_of_a_checkpoint_file_never_runs(
    stopped: Path, tmp_path: Path, which: str, make: Callable[[Path], bytes]
) -> None:
    marker = tmp_path / "pwned"
    name = STATE_FILE if which == "state" else str(_state(stopped)[which])
    (stopped / name).write_bytes(make(marker))
    with pytest.raises(UserError) as err:
        _resume(stopped)
    assert not marker.exists(), "code in a checkpoint file ran"
    assert name in str(err.value) and "\n" not in str(err.value)
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live: the check can fail
    assert marker.exists()


def test_a_state_naming_a_file_outside_the_folder_is_refused(stopped: Path) -> None:
    state = _state(stopped)
    state["model"] = "../../model-0001.safetensors"
    (stopped / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(UserError, match="corrupted checkpoint state"):
        _resume(stopped)
