"""Train a classifier for the vision study (``sap-rl vision train``).

The run, top to bottom (:func:`train`):

1. write the resolved ``config.yaml`` into the output folder (or check it matches on resume);
2. load the data set and build the model and an SGD optimizer;
3. resume from the last checkpoint if one exists;
4. for each epoch: set the learning rate from the schedule, shuffle and augment with a generator
   seeded by ``(seed, epoch)`` (so a resumed run draws what the uninterrupted run would have),
   build each minibatch (clean, or ``paper``, ``kurakin``, ``pgd``, ``trades`` or ``mart``
   adversarial training), step, measure
   test accuracy, append a row to ``history.csv`` and save a checkpoint;
5. save ``model.safetensors`` + ``card.json`` (:func:`sap_rl.vision.models.save_model`).

Checkpoints (``checkpoints/epoch-NNNN.safetensors`` for the weights,
``epoch-NNNN.optim.safetensors`` for the optimizer state, ``state.json`` pointing at them, written
last) are safetensors and JSON only: a tampered checkpoint can fail to load, never run code.

Example:
    >>> import tempfile
    >>> cfg = from_dict(TrainConfig, {"dataset": "digits", "architecture": "digits_cnn",
    ...                               "batch_size": 128, "schedule": [{"epochs": 1, "lr": 0.05}]})
    >>> card = train(cfg, tempfile.mkdtemp(), quiet=True)
    >>> card.epochs, card.dataset
    (1, 'digits')
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sap_rl import __version__
from sap_rl.config import from_dict, load_yaml, save_config, to_dict
from sap_rl.devices import resolve_device
from sap_rl.errors import UserError
from sap_rl.io import (
    UNTRUSTED_CHECKPOINT,
    atomic_write_json,
    check_out_dir,
    load_optimizer,
    load_tensors,
    read_json,
    save_optimizer,
    save_tensors,
)
from sap_rl.lock import output_lock
from sap_rl.vision.adversarial import OBJECTIVES, adversarial_loss, kurakin_loss, paper_batch
from sap_rl.vision.data import ImageDataset, augment, iterate_batches, load_dataset
from sap_rl.vision.models import ModelCard, build_model, save_model
from sap_rl.vision.train_config import TrainConfig

__all__ = ["EpochStats", "accuracy", "resolve_device", "seed_for", "train"]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "test_accuracy", "seconds")


@dataclass
class EpochStats:
    """One row of ``history.csv``."""

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float


def seed_for(*parts: int | str) -> int:
    """A 63-bit seed derived from ``parts`` (stable across runs and platforms).

    Example:
        >>> seed_for(0, "epoch", 3) == seed_for(0, "epoch", 3) != seed_for(0, "epoch", 4)
        True
    """
    words = [int(p) if isinstance(p, int) else int.from_bytes(p.encode()[:8], "little")
             for p in parts]  # fmt: skip
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
) -> float:
    """Clean accuracy of ``model`` (eval mode, one deterministic pass) on uint8/float images.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> accuracy(net, torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.long)) in (0.0, 1.0)
        True
    """
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in iterate_batches(x, y, batch_size):
            logits = model(xb.to(device))
            correct += int((logits.argmax(dim=1).cpu() == yb).sum())
    model.train(was_training)
    return correct / max(1, x.shape[0])


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    quiet: bool = False,
    resume: bool = True,
    max_epochs: int | None = None,
) -> ModelCard:
    """Train a model as ``config`` says and write it into ``out_dir``; returns its card.

    Args:
        config: the training configuration.
        out_dir: model folder (also holds ``config.yaml``, ``history.csv``, ``checkpoints/``).
        data_root: folder that holds ``cifar-10-batches-py`` (CIFAR-10 only).
        device: ``auto``, ``cpu`` or ``cuda``.
        quiet: no progress bar.
        resume: continue from the last checkpoint in ``out_dir`` (if its config matches).
        max_epochs: stop after this many epochs in total (a checkpoint stays for a later resume);
            the model folder is written only when the schedule is complete.

    Raises:
        UserError: missing data, a device that is not there, an ``out_dir`` that holds a run
            with a different configuration, or another run writing into ``out_dir``
            (:func:`sap_rl.lock.output_lock`).
    """
    out = check_out_dir(out_dir)
    dev = resolve_device(device)
    data = load_dataset(config.dataset, data_root)  # validate before writing anything
    # One writer per model folder: a second run would overwrite this one's checkpoints. What the
    # folder holds is checked under the lock, so no other run changes it meanwhile.
    with output_lock(out):
        return _train_in(config, out, data, dev, quiet=quiet, resume=resume, max_epochs=max_epochs)


def _train_in(
    config: TrainConfig,
    out: Path,
    data: ImageDataset,
    dev: torch.device,
    *,
    quiet: bool,
    resume: bool,
    max_epochs: int | None,
) -> ModelCard:
    """:func:`train` into ``out``, whose output lock the caller holds."""
    # 1. The resolved configuration lives beside the outputs.
    state = _read_state(out) if resume else None
    if state is not None and (out / "config.yaml").is_file():
        saved = from_dict(TrainConfig, load_yaml(out / "config.yaml"))
        if to_dict(saved) != to_dict(config):
            raise UserError(
                f"{out} holds a run with a different config.yaml; choose another --out, or pass "
                "--no-resume to start over there"
            )
    save_config(config, out / "config.yaml")

    # 2. Model, optimizer.
    torch.manual_seed(seed_for(config.seed, "init"))
    model = build_model(
        config.architecture,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        dataset=data.name,
    ).to(dev)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.schedule[0].lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    history: list[EpochStats] = []

    # 3. Resume.
    start_epoch = 0
    if state is not None:
        start_epoch = _load_checkpoint(out, state, model, optimizer, dev)
        history = [from_dict(EpochStats, row) for row in state.get("history", [])]
        logger.info("resuming %s after epoch %d", out, start_epoch)

    # 4. Epochs.
    total = config.total_epochs
    stop = total if max_epochs is None else min(total, max_epochs)
    batches_per_epoch = -(-data.x_train.shape[0] // config.batch_size)
    bar = _progress(total=(stop - start_epoch) * batches_per_epoch, quiet=quiet)
    for epoch in range(start_epoch, stop):
        stats = _train_epoch(model, optimizer, data, config, epoch, dev, bar)
        history.append(stats)
        bar.set_postfix(epoch=epoch + 1, loss=f"{stats.train_loss:.3f}",
                        test_acc=f"{stats.test_accuracy:.3f}")  # fmt: skip
        logger.info("epoch %d/%d: %s", epoch + 1, total, stats)
        _write_history(out, history)
        if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == stop:
            _save_checkpoint(out, epoch + 1, model, optimizer, history)
    bar.close()

    completed = history[-1].epoch if history else start_epoch
    if completed < total:
        logger.warning("stopped after epoch %d of %d; rerun to resume", completed, total)

    # 5. The model folder.
    test_acc = accuracy(model, data.x_test, data.y_test, batch_size=config.eval_batch_size,
                        device=dev)  # fmt: skip
    card = {
        "name": out.resolve().name,
        "architecture": config.architecture,
        "dataset": data.name,
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "classes": list(data.classes),
        "adversarial": config.adversarial.mode,
        "epochs": completed,
        "clean_accuracy": test_acc,
        "test_examples": int(data.x_test.shape[0]),
        "sha256": "",
        "sap_rl_version": __version__,
        "training": to_dict(config),
        "trained_on": f"{datetime.date.today().isoformat()} {dev.type}",
    }
    if completed < total:
        return from_dict(ModelCard, card)
    return save_model(model.cpu(), out, card)


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: ImageDataset,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    bar: Any,
) -> EpochStats:
    """One pass over the training set; returns its statistics (test accuracy included)."""
    start = time.perf_counter()
    lr = config.lr_at(epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    generator = torch.Generator().manual_seed(seed_for(config.seed, "epoch", epoch))
    adv = config.adversarial
    previous = copy.deepcopy(model).eval() if adv.mode == "paper" else None
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for xb, yb in iterate_batches(data.x_train, data.y_train, config.batch_size, shuffle=True,
                                  generator=generator):  # fmt: skip
        if config.augment:
            xb = augment(xb, padding=data.crop_padding, flip=data.flip, generator=generator)
        xb, yb = xb.to(device), yb.to(device)
        if adv.mode == "kurakin":
            loss, logits = kurakin_loss(
                model, xb, yb, per_batch=adv.per_batch, loss_weight=adv.loss_weight,
                eps_sigma=adv.eps_sigma, eps_max=adv.eps_max, attack=adv.attack,
                generator=generator,
            )  # fmt: skip
        elif adv.mode in OBJECTIVES:
            loss, logits = adversarial_loss(
                adv.mode, model, xb, yb, eps=adv.pgd_eps, steps=adv.pgd_steps,
                step_size=adv.pgd_step_size, beta=adv.beta, generator=generator,
            )  # fmt: skip
        else:
            if previous is not None:
                xb, _ = paper_batch(previous, xb, yb, fraction=adv.fraction, eps=adv.eps,
                                    use_labels=adv.labels == "label")  # fmt: skip
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise UserError(
                f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower the "
                "learning rate in the config"
            )
        loss_sum += float(loss.detach()) * yb.shape[0]
        correct += int((logits.argmax(dim=1) == yb).sum())
        seen += yb.shape[0]
        bar.update(1)
    test_acc = accuracy(model, data.x_test, data.y_test, batch_size=config.eval_batch_size,
                        device=device)  # fmt: skip
    return EpochStats(
        epoch=epoch + 1,
        lr=lr,
        train_loss=loss_sum / max(1, seen),
        train_accuracy=correct / max(1, seen),
        test_accuracy=test_acc,
        seconds=time.perf_counter() - start,
    )


# ------------------------------------------------------------------------- checkpoints, history


def _progress(*, total: int, quiet: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="batch", dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())  # fmt: skip


def _write_history(out: Path, history: list[EpochStats]) -> None:
    from sap_rl.report import write_csv

    rows = [[getattr(h, c) for c in HISTORY_COLUMNS] for h in history]
    write_csv(out / "history.csv", HISTORY_COLUMNS, rows)


def _read_state(out: Path) -> dict[str, Any] | None:
    path = out / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        return None
    state = read_json(path)
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        raise UserError(f"{path}: not a checkpoint state file; delete {path.parent} to start over")
    return state


def _save_checkpoint(
    out: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: list[EpochStats],
) -> None:
    folder = out / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    weights, optim = f"epoch-{epoch:04d}.safetensors", f"epoch-{epoch:04d}.optim.safetensors"
    save_tensors(folder / weights, model.state_dict())
    save_optimizer(folder / optim, optimizer)
    atomic_write_json(
        folder / STATE_FILE,
        {
            "epoch": epoch,
            "weights": weights,
            "optimizer": optim,
            "history": [vars(h) for h in history],
        },
    )
    for old in folder.glob("epoch-*"):
        if old.name not in (weights, optim):
            old.unlink()


def _load_checkpoint(
    out: Path,
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> int:
    folder = out / CHECKPOINT_DIR
    try:
        model.load_state_dict(
            load_tensors(folder / str(state["weights"]), hint=UNTRUSTED_CHECKPOINT)
        )
        load_optimizer(folder / str(state["optimizer"]), optimizer)
    except (KeyError, RuntimeError, OSError, ValueError) as err:
        raise UserError(
            f"{folder}: cannot resume ({type(err).__name__}: {err}); delete it to start over"
        ) from None
    return int(state["epoch"])
