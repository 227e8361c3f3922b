"""Image data sets for the vision study: CIFAR-10 from local files, and a built-in ``digits`` set.

Images are kept as ``uint8`` tensors of shape (N, C, H, W) in pixel units [0, 255] and turned into
float batches only when used; models take float input in [0, 255] and normalize internally, so an
attack's ``eps = 1`` is one grey level for every data set.

- ``cifar10``: read from the standard ``cifar-10-batches-py`` folder (the layout of the original
  archive, also used by torchvision). Nothing is downloaded at run time. The files are Python
  pickles; they are read with a *restricted* unpickler that can only rebuild dicts, lists, strings,
  bytes and numpy arrays, so a tampered file cannot run code (see :class:`_RestrictedUnpickler`).
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), scaled
  from 0..16 to 0..255 and split into train/test with a fixed, seeded, stratified split.

Augmentation (:func:`augment`) works on whole batches: random crop with zero padding and an
optional horizontal flip, one random draw per example from a seeded generator.

Example:
    >>> data = load_dataset("digits")
    >>> data.x_train.dtype, tuple(data.x_train.shape[1:]), data.num_classes
    (torch.uint8, (1, 8, 8), 10)
    >>> g = torch.Generator().manual_seed(0)
    >>> augment(data.x_train[:4].float(), padding=1, flip=False, generator=g).shape
    torch.Size([4, 1, 8, 8])
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sap_rl.errors import UserError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_FOLDER",
    "CIFAR10_MD5",
    "DATASETS",
    "DIGITS_SPLIT_SEED",
    "ImageDataset",
    "augment",
    "iterate_batches",
    "load_cifar10",
    "load_dataset",
    "load_digits",
]

logger = logging.getLogger(__name__)

DATASETS = ("digits", "cifar10")
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
#: md5 sums of the files in the official ``cifar-10-python.tar.gz`` (the same values torchvision
#: checks), keyed by file name.
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_EXAMPLES_PER_FILE = 10000
_CIFAR10_ROW = 3 * 32 * 32

#: Seed of the fixed train/test split of ``digits`` (part of the data set's definition).
DIGITS_SPLIT_SEED = 20180305
DIGITS_TEST_FRACTION = 0.3


@dataclass(frozen=True)
class ImageDataset:
    """A classification data set held in memory as uint8 pixels in [0, 255].

    Attributes:
        name: ``"digits"`` or ``"cifar10"``.
        x_train, x_test: uint8 tensors of shape (N, C, H, W).
        y_train, y_test: int64 label tensors of shape (N,).
        classes: class names, index = label.
        crop_padding: padding of the random crop used for training augmentation.
        flip: whether a horizontal flip is a valid augmentation (not for digits).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    crop_padding: int
    flip: bool

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))


def load_dataset(name: str, data_root: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Load a data set by name (``"digits"`` or ``"cifar10"``).

    Args:
        name: data set name.
        data_root: for ``cifar10``, the folder that holds ``cifar-10-batches-py`` (or that folder
            itself); ignored for ``digits``.

    Raises:
        UserError: unknown name, or missing / damaged CIFAR-10 files.
    """
    key = name.strip().lower().replace("-", "")
    if key == "digits":
        return load_digits()
    if key == "cifar10":
        if data_root is None:
            raise UserError(
                f"cifar10 needs --data-root DIR, the folder that contains {CIFAR10_FOLDER}/ "
                "(extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html)"
            )
        return load_cifar10(data_root)
    raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


# --------------------------------------------------------------------------------------- digits


def load_digits(
    *, seed: int = DIGITS_SPLIT_SEED, test_fraction: float = DIGITS_TEST_FRACTION
) -> ImageDataset:
    """scikit-learn's bundled handwritten digits as a 1x8x8 image data set in [0, 255].

    The values 0..16 are scaled by 255/16 and rounded to uint8. The split is stratified and fixed
    by ``seed`` (the default split is the one every ``digits`` model and result in this project
    uses: 1,257 training and 540 test images).

    Example:
        >>> d = load_digits()
        >>> len(d.x_train), len(d.x_test), int(d.x_train.max())
        (1257, 540, 255)
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return ImageDataset(
        name="digits",
        x_train=torch.from_numpy(np.ascontiguousarray(x_tr)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_tr)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_te)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_te)),
        classes=tuple(str(i) for i in range(10)),
        crop_padding=1,
        flip=False,  # a mirrored 2 is not a 2
    )


# -------------------------------------------------------------------------------------- CIFAR-10


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10 batch files that refuses to import anything but numpy array parts.

    The official CIFAR-10 files are pickles of a dict of bytes, lists and numpy arrays. A pickle
    can name any importable callable and call it while loading, so reading a user-supplied pickle
    with ``pickle.load`` can run arbitrary code. This unpickler only resolves the globals needed to
    rebuild numpy arrays (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
    ``numpy.dtype``, ``numpy.core.numeric._frombuffer`` for protocol-5 files, and their
    ``numpy._core`` spellings in numpy 2); every other global raises ``pickle.UnpicklingError``.
    Plain containers (dict, list, tuple, str, bytes, int) need no globals at all. The files are
    read with ``encoding="bytes"`` because they were written by Python 2.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
            ("numpy._core.numeric", "_frombuffer"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module == "numpy":
            return getattr(np, name)
        return getattr(_numpy_core(module.rsplit(".", 1)[1]), name)


def _numpy_core(submodule: str) -> Any:
    """``numpy._core.<submodule>`` (numpy 2) or ``numpy.core.<submodule>`` (numpy 1)."""
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # pragma: no cover - numpy 1.x
        return importlib.import_module(f"numpy.core.{submodule}")


def _read_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as handle:
            return _RestrictedUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise UserError(
            f"{path}: not a CIFAR-10 batch file ({err}); re-extract cifar-10-python.tar.gz"
        ) from None


def _key(entry: dict[Any, Any], name: str) -> Any:
    for key in (name.encode(), name):
        if key in entry:
            return entry[key]
    raise KeyError(name)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cifar_folder(root: Path) -> Path:
    if root.name == CIFAR10_FOLDER and root.is_dir():
        return root
    return root / CIFAR10_FOLDER


def _read_cifar_batch(path: Path, rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    entry = _read_pickle(path)
    if not isinstance(entry, dict):
        raise UserError(f"{path}: expected a dict of 'data' and 'labels', got {type(entry)}")
    try:
        data, labels = _key(entry, "data"), _key(entry, "labels")
    except KeyError as err:
        raise UserError(f"{path}: missing key {err} (not a CIFAR-10 batch file)") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise UserError(f"{path}: 'data' must be a 2-D uint8 array")
    if data.shape[1] != _CIFAR10_ROW or (rows is not None and data.shape[0] != rows):
        raise UserError(
            f"{path}: 'data' has shape {data.shape}, expected ({rows or 'N'}, {_CIFAR10_ROW}); "
            "the file is truncated or not CIFAR-10"
        )
    label_array = np.asarray(labels)
    if label_array.shape != (data.shape[0],) or not np.issubdtype(label_array.dtype, np.integer):
        raise UserError(f"{path}: 'labels' must be {data.shape[0]} integers")
    if label_array.min() < 0 or label_array.max() > 9:
        raise UserError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), label_array.astype(np.int64)


def load_cifar10(
    root: str | os.PathLike[str],
    *,
    verify_md5: bool = True,
    examples_per_file: int | None = _CIFAR10_EXAMPLES_PER_FILE,
) -> ImageDataset:
    """Read CIFAR-10 from ``root/cifar-10-batches-py`` (or from ``root`` if it is that folder).

    Integrity checks: the six batch files and ``batches.meta`` must exist; with ``verify_md5`` their
    md5 sums must match the official archive's (:data:`CIFAR10_MD5`); each batch must hold an
    ``examples_per_file`` x 3072 uint8 ``data`` array (10000 rows in the official files; ``None``
    accepts any number) and as many labels in 0..9. Nothing is ever downloaded.

    Raises:
        UserError: a one-line message naming the missing or damaged file and where to put the data.

    Example:
        >>> load_cifar10("/nonexistent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sap_rl.errors.UserError: CIFAR-10 not found: ...
    """
    folder = _cifar_folder(Path(root).expanduser())
    names = (*_CIFAR10_TRAIN, "test_batch", "batches.meta")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}; download "
            "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract "
            f"it so that {folder}/data_batch_1 exists (no download happens at run time)"
        )
    if verify_md5:
        for name in names:
            digest = _md5(folder / name)
            if digest != CIFAR10_MD5[name]:
                raise UserError(
                    f"{folder / name}: md5 {digest} does not match the official "
                    f"{CIFAR10_MD5[name]}; re-extract cifar-10-python.tar.gz"
                )
    meta = _read_pickle(folder / "batches.meta")
    classes: tuple[str, ...] = CIFAR10_CLASSES
    if isinstance(meta, dict):
        try:
            raw = _key(meta, "label_names")
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
        except (KeyError, TypeError, UnicodeDecodeError):
            logger.warning("%s: no usable label_names; using the standard names", folder)
    if len(classes) != 10:
        raise UserError(f"{folder / 'batches.meta'}: expected 10 label names, got {len(classes)}")
    parts = [_read_cifar_batch(folder / name, examples_per_file) for name in _CIFAR10_TRAIN]
    x_test, y_test = _read_cifar_batch(folder / "test_batch", examples_per_file)
    return ImageDataset(
        name="cifar10",
        x_train=torch.from_numpy(np.concatenate([p[0] for p in parts])),
        y_train=torch.from_numpy(np.concatenate([p[1] for p in parts])),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(y_test),
        classes=classes,
        crop_padding=4,
        flip=True,
    )


# ---------------------------------------------------------------------------------- batching


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_batch as float32 pixels, y_batch)`` pairs, optionally in a seeded random order.

    Example:
        >>> xs, ys = torch.zeros(5, 1, 2, 2, dtype=torch.uint8), torch.arange(5)
        >>> [len(b) for _, b in iterate_batches(xs, ys, 2)]
        [2, 2, 1]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx].float(), y[idx]


def augment(
    x: torch.Tensor,
    *,
    padding: int,
    flip: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop with zero padding and optional horizontal flip, one draw per example.

    Args:
        x: float batch (B, C, H, W).
        padding: pixels of zero padding on each side before cropping back to (H, W); 0 disables.
        flip: flip each example horizontally with probability 1/2.
        generator: source of randomness (CPU generator).

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> torch.equal(augment(x, padding=0, flip=False), x)
        True
    """
    b, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = torch.rand(b, generator=generator).to(x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x
