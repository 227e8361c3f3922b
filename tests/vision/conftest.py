"""Fixtures for the vision tests: the built-in digits data, a briefly trained digits model, and a
writer of small files in the exact CIFAR-10 pickle format."""

from __future__ import annotations

import contextlib
import pickle
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sap_rl.config import from_dict
from sap_rl.vision.data import CIFAR10_CLASSES, CIFAR10_FOLDER, ImageDataset, load_digits
from sap_rl.vision.train import train
from sap_rl.vision.train_config import TrainConfig

TINY_TRAIN = {
    "dataset": "digits",
    "architecture": "digits_cnn",
    "batch_size": 64,
    "weight_decay": 5e-4,
    "schedule": [{"epochs": 3, "lr": 0.05}],
}


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded, then restore the thread count.

    The digits models are tiny: on a shared 2-core machine, two intra-op threads waiting for each
    other make each step several times slower than one thread.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def digits() -> ImageDataset:
    """scikit-learn's digits with the project's fixed split."""
    return load_digits()


@pytest.fixture(scope="session")
def digits_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits CNN trained for 3 epochs (about 90% test accuracy), as a model folder."""
    out = tmp_path_factory.mktemp("digits-model")
    with one_torch_thread():
        train(from_dict(TrainConfig, TINY_TRAIN), out, quiet=True)
    return out


class _Python2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Writes protocol 2 the way Python 2's cPickle wrote the official CIFAR-10 files.

    Python 2 ``str`` objects (the dict keys, file names and the array's raw bytes) are
    SHORT_BINSTRING / BINSTRING opcodes, and arrays are rebuilt by
    ``numpy.core.multiarray._reconstruct``. (Python 3's own protocol 2 writes bytes through
    ``_codecs.encode`` instead, which the original files never contain.)
    """

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        elif obj is np.ndarray:
            self.write(pickle.GLOBAL + b"numpy\nndarray\n")
            self.memoize(obj)
        elif obj is np.dtype:
            self.write(pickle.GLOBAL + b"numpy\ndtype\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def dump_cifar_pickle(obj: Any, path: Path, protocol: int = 2) -> None:
    """Pickle ``obj`` like the official files (``protocol=2``) or like modern Python (5)."""
    with open(path, "wb") as handle:
        if protocol == 2:
            _Python2Pickler(handle, protocol=2).dump(obj)
        else:
            pickle.dump(obj, handle, protocol=protocol)


def write_cifar_batch(
    path: Path, data: np.ndarray, labels: list[int], *, protocol: int = 2, label: str = ""
) -> None:
    """Write one batch file the way the official archive does (a pickled dict with bytes keys)."""
    entry = {
        b"batch_label": label.encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    dump_cifar_pickle(entry, path, protocol)


@pytest.fixture
def cifar_batch_writer() -> Callable[..., None]:
    """:func:`write_cifar_batch`, for tests that damage one file."""
    return write_cifar_batch


@pytest.fixture
def fake_cifar(tmp_path: Path) -> Callable[..., Path]:
    """Return a function that writes a small CIFAR-10 folder and returns its parent (data root).

    Each batch holds ``rows`` images; image i of file f has every byte equal to (f * 7 + i) % 256
    and label (f + i) % 10, so tests can check order and reshaping.
    """

    def make(rows: int = 12, *, protocol: int = 2) -> Path:
        folder = tmp_path / CIFAR10_FOLDER
        folder.mkdir(exist_ok=True)
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for f, name in enumerate(names):
            data = np.empty((rows, 3072), dtype=np.uint8)
            for i in range(rows):
                data[i] = (f * 7 + i) % 256
            # a gradient in one image to check the CHW layout
            data[0] = np.arange(3072) % 256
            write_cifar_batch(folder / name, data, [(f + i) % 10 for i in range(rows)],
                              protocol=protocol, label=name)  # fmt: skip
        meta = {
            b"num_cases_per_batch": rows,
            b"label_names": [c.encode() for c in CIFAR10_CLASSES],
            b"num_vis": 3072,
        }
        dump_cifar_pickle(meta, folder / "batches.meta", protocol)
        return tmp_path

    return make
