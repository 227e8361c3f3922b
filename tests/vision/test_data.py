"""CIFAR-10 file reading (on small files in the exact pickle format), digits, augmentation."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sap_rl.errors import UserError
from sap_rl.vision.data import (
    CIFAR10_FOLDER,
    augment,
    iterate_batches,
    load_cifar10,
    load_dataset,
    load_digits,
)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_reads_official_format(fake_cifar: Callable[..., Path], protocol: int) -> None:
    root = fake_cifar(rows=12, protocol=protocol)
    data = load_cifar10(root, verify_md5=False, examples_per_file=12)
    assert data.x_train.shape == (60, 3, 32, 32) and data.x_train.dtype == torch.uint8
    assert data.x_test.shape == (12, 3, 32, 32)
    assert data.y_train.dtype == torch.int64 and data.y_train.shape == (60,)
    assert data.classes[0] == "airplane" and data.num_classes == 10
    # file order and labels: file f, image i -> label (f + i) % 10, bytes (f * 7 + i) % 256
    assert data.y_train[12 * 2 + 3].item() == (2 + 3) % 10
    assert int(data.x_train[12 * 2 + 3, 1, 5, 7]) == (2 * 7 + 3) % 256
    assert data.y_test[4].item() == (5 + 4) % 10
    # row layout is 1024 red, 1024 green, 1024 blue, each row-major 32x32
    first = data.x_train[0]
    assert int(first[0, 0, 1]) == 1 and int(first[1, 0, 0]) == 1024 % 256
    assert int(first[2, 1, 0]) == (2048 + 32) % 256
    assert data.input_shape == (3, 32, 32) and data.flip and data.crop_padding == 4


def test_fake_files_are_in_the_python2_format(fake_cifar: Callable[..., Path]) -> None:
    """The test files read back with plain pickle like the originals (bytes keys, py2 strings)."""
    import pickletools

    folder = fake_cifar(rows=3) / CIFAR10_FOLDER
    raw = (folder / "data_batch_1").read_bytes()
    ops = {op.name for op, _, _ in pickletools.genops(raw)}
    assert {"SHORT_BINSTRING", "BINSTRING", "GLOBAL"} <= ops and "BINBYTES" not in ops
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    with open(folder / "data_batch_1", "rb") as handle:
        entry = pickle.load(handle, encoding="bytes")
    assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert entry[b"data"].shape == (3, 3072) and entry[b"data"].dtype == np.uint8


def test_cifar_accepts_the_folder_itself(fake_cifar: Callable[..., Path]) -> None:
    root = fake_cifar(rows=4)
    data = load_cifar10(root / CIFAR10_FOLDER, verify_md5=False, examples_per_file=None)
    assert len(data.x_test) == 4


def test_cifar_missing_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz") as err:
        load_cifar10(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / CIFAR10_FOLDER) in message
    assert "data_batch_1" in message


def test_cifar_needs_data_root() -> None:
    with pytest.raises(UserError, match="--data-root"):
        load_dataset("cifar10")


def test_cifar_md5_mismatch(fake_cifar: Callable[..., Path]) -> None:
    root = fake_cifar(rows=4)
    with pytest.raises(UserError, match="md5"):
        load_cifar10(root)


def test_cifar_wrong_row_count_is_refused(fake_cifar: Callable[..., Path]) -> None:
    root = fake_cifar(rows=4)
    with pytest.raises(UserError, match="shape"):
        load_cifar10(root, verify_md5=False)  # official files have 10000 rows


def test_cifar_bad_labels(
    fake_cifar: Callable[..., Path], cifar_batch_writer: Callable[..., None]
) -> None:
    write_cifar_batch = cifar_batch_writer
    root = fake_cifar(rows=4)
    bad = root / CIFAR10_FOLDER / "data_batch_3"
    write_cifar_batch(bad, np.zeros((4, 3072), np.uint8), [0, 1, 2, 10])
    with pytest.raises(UserError, match="labels outside"):
        load_cifar10(root, verify_md5=False, examples_per_file=4)
    write_cifar_batch(bad, np.zeros((4, 3072), np.float32), [0, 1, 2, 3])
    with pytest.raises(UserError, match="uint8"):
        load_cifar10(root, verify_md5=False, examples_per_file=4)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_cannot_run_code(fake_cifar: Callable[..., Path], tmp_path: Path) -> None:
    root = fake_cifar(rows=4)
    marker = tmp_path / "pwned"
    with open(root / CIFAR10_FOLDER / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": _Exploit(marker), b"labels": [0]}, handle, protocol=4)
    with pytest.raises(UserError, match=r"refusing to load global (posix|os|nt)\.system"):
        load_cifar10(root, verify_md5=False, examples_per_file=4)
    assert not marker.exists()


def test_cifar_truncated_file(fake_cifar: Callable[..., Path]) -> None:
    root = fake_cifar(rows=4)
    path = root / CIFAR10_FOLDER / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="test_batch"):
        load_cifar10(root, verify_md5=False, examples_per_file=4)


def test_digits_split_is_fixed_and_stratified() -> None:
    a, b = load_digits(), load_digits()
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape == (1257, 1, 8, 8) and a.x_test.shape == (540, 1, 8, 8)
    assert a.x_train.dtype == torch.uint8 and int(a.x_train.max()) == 255
    counts = torch.bincount(a.y_test, minlength=10)
    assert int(counts.min()) >= 52 and int(counts.max()) <= 55  # stratified: ~54 per class
    assert not a.flip  # mirrored digits are not digits
    other = load_digits(seed=1)
    assert not torch.equal(other.y_test, a.y_test)


def test_unknown_dataset() -> None:
    with pytest.raises(UserError, match="digits"):
        load_dataset("mnist")


def test_iterate_batches_shuffles_with_seed(digits) -> None:  # type: ignore[no-untyped-def]
    def order(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in iterate_batches(digits.x_train, digits.y_train, 100,
                                                        shuffle=True, generator=g)])  # fmt: skip

    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    assert torch.equal(order(0).sort().values, digits.y_train.sort().values)
    xb, _ = next(iterate_batches(digits.x_train, digits.y_train, 10))
    assert xb.dtype == torch.float32


@settings(max_examples=30, deadline=None)
@given(
    padding=st.integers(0, 3),
    flip=st.booleans(),
    seed=st.integers(0, 2**31),
    h=st.integers(3, 9),
    w=st.integers(3, 9),
)
def test_augment_is_a_shifted_crop(padding: int, flip: bool, seed: int, h: int, w: int) -> None:
    x = torch.rand(5, 2, h, w) + 1.0  # strictly positive, so padding zeros are recognisable
    out = augment(x, padding=padding, flip=flip, generator=torch.Generator().manual_seed(seed))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    for i in range(5):
        candidates = [padded[i], padded[i].flip(-1)] if flip else [padded[i]]
        found = any(
            torch.equal(out[i], c[:, dy : dy + h, dx : dx + w])
            for c in candidates
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
        )
        assert found
    again = augment(x, padding=padding, flip=flip, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(out, again)


def test_augment_varies_per_example() -> None:
    x = torch.arange(1.0, 65.0).reshape(1, 1, 8, 8).repeat(64, 1, 1, 1)
    out = augment(x, padding=2, flip=True, generator=torch.Generator().manual_seed(0))
    assert len({tuple(o.flatten().tolist()) for o in out}) > 10
