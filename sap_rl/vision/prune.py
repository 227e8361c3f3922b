"""Prune a trained classifier with HARP (``sap-rl vision prune``).

The run (:func:`prune`): load the model folder and its data set, check the settings, then under
the output folder's lock write the resolved ``config.yaml``, run
:func:`sap_rl.pruning.harp_prune` on the training set (shuffled and augmented with generators
seeded by ``(seed, epoch)``), append each epoch to ``history.csv``, and write the pruned model
folder: ``model.safetensors`` (pruned weights are zeros; the masks are stored beside them) and
``card.json`` whose ``pruning`` section says what it was pruned from, the sparsity, kept weights
and parameters, FLOPs and per-layer keep rates. ``sap-rl vision evaluate`` reads it like any
model, so ``--defense sap-100`` on it is SAP on a HARP-pruned network.

After every epoch the run's checkpoint goes to ``checkpoint/`` in the output folder; ``resume``
(``--resume``) continues an interrupted run from it, bitwise as if it had never stopped, and it
is deleted once the pruned model is written.

Example:
    >>> import tempfile
    >>> from sap_rl.vision.models import build_model, save_model
    >>> src = tempfile.mkdtemp()
    >>> net = build_model("digits_cnn", num_classes=10, input_shape=(1, 8, 8))
    >>> _ = save_model(net, src, {"name": "d", "architecture": "digits_cnn", "dataset": "digits",
    ...     "num_classes": 10, "input_shape": [1, 8, 8], "classes": list("0123456789"),
    ...     "adversarial": "none", "epochs": 0, "clean_accuracy": 0.1, "test_examples": 540,
    ...     "sap_rl_version": "0"})
    >>> cfg = from_dict(PruneConfig, {"dataset": "digits", "harp": {"sparsity": 0.9,
    ...     "prune_epochs": 1, "finetune_epochs": 0, "steps": 1}})
    >>> card = prune(src, cfg, tempfile.mkdtemp(), quiet=True)
    >>> card.pruning["achieved_sparsity"] >= 0.9
    True
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from sap_rl import __version__
from sap_rl.config import from_dict, save_config, to_dict
from sap_rl.devices import resolve_device
from sap_rl.errors import UserError
from sap_rl.io import check_out_dir
from sap_rl.lock import output_lock
from sap_rl.pruning import EpochLog, HarpConfig, harp_prune, prunable_layers
from sap_rl.pruning.checkpoint import remove_checkpoint, saved_history
from sap_rl.pruning.cli import CHECKPOINT_DIR, check_resume
from sap_rl.signals import sigterm_as_interrupt
from sap_rl.vision.data import augment, iterate_batches, load_dataset
from sap_rl.vision.models import ModelCard, load_model, save_model
from sap_rl.vision.train import accuracy, seed_for

__all__ = ["PRUNE_PRESETS", "PruneConfig", "default_prune_config", "prune"]

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ("phase", "epoch", "lr", "loss", "accuracy", "kept", "gamma", "seconds")


@dataclass
class PruneConfig:
    """Settings of ``sap-rl vision prune``; saved as ``config.yaml`` beside the pruned model.

    Attributes:
        dataset: ``digits`` or ``cifar10`` (must be the model's).
        architecture: if set, the model's architecture must be this one (the configs are tuned
            per architecture).
        batch_size: minibatch size.
        augment: random crop (and flip where it makes sense) of the training images.
        eval_batch_size: batch size for test accuracy.
        harp: HARP's settings (:class:`sap_rl.pruning.HarpConfig`); ``--sparsity`` and the other
            flags override them.
    """

    dataset: Literal["digits", "cifar10"]
    architecture: str | None = None
    batch_size: int = 128
    augment: bool = True
    eval_batch_size: int = 1000
    harp: HarpConfig = field(default_factory=lambda: HarpConfig(sparsity=0.9))

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")


# HARP's CIFAR-10 recipe (Zhao and Wressnegger 2023): 20 pruning epochs, 100 fine-tuning epochs,
# PGD-10 with random start at eps 8/255 and step 2/255, SGD with a cosine schedule, weight decay
# 5e-4, gamma 0.01.
_CIFAR_HARP: dict[str, Any] = {
    "objective": "pgd", "strategy": "uniform", "hardware": "params", "prune_epochs": 20,
    "finetune_epochs": 100, "lr": 0.1, "finetune_lr": 0.01, "momentum": 0.9,
    "weight_decay": 5e-4, "gamma": 0.01, "gamma_growth": 2.0, "k_min_factor": 0.1, "eps": 8.0,
    "steps": 10, "step_size": 2.0, "beta": None, "exclude": [], "seed": 0,
}  # fmt: skip

#: Built-in configurations, identical to ``configs/vision/prune-<name>.yaml`` (a test checks this).
PRUNE_PRESETS: dict[str, dict[str, Any]] = {
    "digits": {
        "dataset": "digits", "architecture": "digits_cnn", "batch_size": 64, "augment": True,
        "eval_batch_size": 1000,
        # ERK: at 99% a uniform rate leaves the first convolution 1 of its 144 weights (measured
        # on the PGD-trained digits CNN: clean accuracy 0.30 uniform, 0.85 LAMP, 0.86 ERK)
        "harp": {**_CIFAR_HARP, "prune_epochs": 10, "finetune_epochs": 10, "sparsity": 0.9,
                 "strategy": "erk"},
    },
    "cifar10-resnet20": {
        "dataset": "cifar10", "architecture": "resnet20", "batch_size": 128, "augment": True,
        "eval_batch_size": 1000, "harp": {**_CIFAR_HARP, "sparsity": 0.99},
    },
    "cifar10-resnet18": {
        "dataset": "cifar10", "architecture": "resnet18", "batch_size": 128, "augment": True,
        "eval_batch_size": 1000, "harp": {**_CIFAR_HARP, "sparsity": 0.99},
    },
    "cifar10-vgg16": {
        "dataset": "cifar10", "architecture": "vgg16", "batch_size": 128, "augment": True,
        "eval_batch_size": 1000, "harp": {**_CIFAR_HARP, "sparsity": 0.99},
    },
}  # fmt: skip


def default_prune_config(architecture: str, dataset: str) -> PruneConfig:
    """The built-in preset for a model (``digits``, or ``cifar10-<architecture>``).

    Example:
        >>> default_prune_config("resnet18", "cifar10").harp.finetune_epochs
        100
    """
    key = "digits" if dataset == "digits" else f"{dataset}-{architecture}"
    if key not in PRUNE_PRESETS:
        raise UserError(
            f"no built-in pruning config for a {architecture} on {dataset}; pass --config "
            f"(presets: {', '.join(PRUNE_PRESETS)})"
        )
    return from_dict(PruneConfig, PRUNE_PRESETS[key])


def prune(
    model_dir: str | os.PathLike[str],
    config: PruneConfig,
    out_dir: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    quiet: bool = False,
    resume: bool = False,
    stop: Callable[[], bool] | None = None,
) -> ModelCard:
    """Prune the model in ``model_dir`` as ``config`` says into the model folder ``out_dir``.

    After every epoch the run's checkpoint is saved in ``out_dir/checkpoint/``
    (:mod:`sap_rl.pruning.checkpoint`); with ``resume`` the run continues from it and ends with
    bitwise the model an uninterrupted run gives. It is removed once the model folder is written.

    Args:
        model_dir: the model folder to prune.
        config: the settings.
        out_dir: the pruned model folder.
        data_root: folder of the CIFAR-10 files.
        device: where to compute.
        quiet: no progress lines.
        resume: continue the checkpoint in ``out_dir`` (required if it has one).
        stop: asked after each epoch; ``True`` stops the run with
            :class:`~sap_rl.pruning.HarpStopped`, the checkpoint kept (a time limit).

    Raises:
        UserError: a bad model folder, a model of another data set or architecture than the
            config's, missing data, no prunable layer left after ``harp.exclude``, a missing
            device, another run writing into ``out_dir``, a checkpoint there without ``resume``
            (or ``resume`` without one), or a checkpoint of other settings. All are found before
            anything is written.
        HarpStopped: ``stop()`` returned ``True``.
    """
    out = check_out_dir(out_dir)
    model, card = load_model(model_dir)
    if card.dataset != config.dataset:
        raise UserError(f"the model is for {card.dataset} but the config for {config.dataset}")
    if config.architecture is not None and card.architecture != config.architecture:
        raise UserError(
            f"the model is a {card.architecture} but the config is for {config.architecture}; "
            "choose the matching configs/vision/prune-*.yaml"
        )
    prunable_layers(model, config.harp.exclude)  # no prunable layer is an error, before writing
    dev = resolve_device(device)
    data = load_dataset(config.dataset, data_root)
    with output_lock(out):
        # On resume config.yaml is the checkpoint's; rewritten only once harp_prune has found
        # the settings the same (a refused resume changes nothing).
        resuming = check_resume(out, resume) > 0
        checkpoint = out / CHECKPOINT_DIR
        if not resuming:
            save_config(config, out / "config.yaml")
        history: list[EpochLog] = saved_history(checkpoint)

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            generator = torch.Generator().manual_seed(seed_for(config.harp.seed, "prune", epoch))
            for xb, yb in iterate_batches(data.x_train, data.y_train, config.batch_size,
                                          shuffle=True, generator=generator):  # fmt: skip
                if config.augment:
                    xb = augment(xb, padding=data.crop_padding, flip=data.flip,
                                 generator=generator)  # fmt: skip
                yield xb, yb

        def on_epoch(log: EpochLog) -> None:
            history.append(log)
            _write_history(out, history)
            if not quiet:
                print(f"{log.phase} {log.epoch}: loss {log.loss:.3f}, train accuracy "
                      f"{log.accuracy:.3f}, kept {log.kept:.4f}", file=sys.stderr)  # fmt: skip

        # What the batches depend on besides HARP's settings: a checkpoint of other ones is refused.
        key = {"data": {"dataset": config.dataset, "batch_size": config.batch_size,
                        "augment": config.augment}}  # fmt: skip
        with sigterm_as_interrupt():
            result = harp_prune(model, batches, config.harp, device=dev, on_epoch=on_epoch,
                                checkpoint=checkpoint, checkpoint_key=key, stop=stop)  # fmt: skip
        save_config(config, out / "config.yaml")
        test_acc = accuracy(result.model, data.x_test, data.y_test,
                            batch_size=config.eval_batch_size)  # fmt: skip
        source = {
            "name": card.name,
            "path": str(Path(model_dir)),
            "sha256": card.sha256,
            "adversarial": card.adversarial,
            "clean_accuracy": card.clean_accuracy,
        }
        pruned = dataclasses.replace(
            card,
            name=out.resolve().name,
            adversarial=config.harp.objective,
            epochs=config.harp.prune_epochs + config.harp.finetune_epochs,
            clean_accuracy=test_acc,
            sha256="",
            sap_rl_version=__version__,
            training=to_dict(config),
            trained_on=f"{datetime.date.today().isoformat()} {dev.type}",
            pruning={
                **result.card(config.harp, card.name),
                "source": source,
                "dense_parameters": result.dense_stats.parameters,
            },
        )
        saved = save_model(result.model, out, pruned, masks=result.masks)
        remove_checkpoint(checkpoint)  # the model folder is the result; the checkpoint is big
        return saved


def _write_history(out: Path, history: list[EpochLog]) -> None:
    from sap_rl.report import write_csv

    rows = [[getattr(h, c) for c in HISTORY_COLUMNS] for h in history]
    write_csv(out / "history.csv", HISTORY_COLUMNS, rows)
