"""Image classification on the shared SAP core: data, models, training and evaluation.

Modules:
    data: CIFAR-10 from the standard ``cifar-10-batches-py`` files, the built-in ``digits`` set,
        batched augmentation.
    models: ResNet-20 (CIFAR-10), a small CNN (digits), safetensors + ``card.json`` model folders.
    train_config, train, adversarial: ``sap-rl vision train`` (clean, ``paper`` and ``kurakin``
        adversarial training).
    evaluate, calibration: ``sap-rl vision evaluate`` (accuracy vs eps per defense and attack,
        expected calibration error, reliability diagrams).

Example:
    >>> from sap_rl.vision import build_model, load_dataset
    >>> data = load_dataset("digits")
    >>> model = build_model("digits_cnn", num_classes=10, input_shape=data.input_shape)
    >>> model(data.x_test[:2].float()).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562) so that ``sap-rl --help``, which imports
# ``sap_rl.vision.commands``, does not pay for torch and scikit-learn. The entry points
# ``sap_rl.vision.train.train`` and ``sap_rl.vision.evaluate.evaluate`` are not re-exported: their
# names are those of their modules.
_EXPORTS = {
    "ReliabilityBins": "calibration",
    "expected_calibration_error": "calibration",
    "plot_reliability": "calibration",
    "reliability_bins": "calibration",
    "ImageDataset": "data",
    "augment": "data",
    "iterate_batches": "data",
    "load_cifar10": "data",
    "load_dataset": "data",
    "load_digits": "data",
    "VisionEvalConfig": "evaluate",
    "ExpectedPrediction": "evaluate",
    "predict_proba": "evaluate",
    "DigitsCNN": "models",
    "ModelCard": "models",
    "ResNet20": "models",
    "build_model": "models",
    "count_parameters": "models",
    "load_model": "models",
    "save_model": "models",
    "accuracy": "train",
    "AdversarialConfig": "train_config",
    "LRStage": "train_config",
    "TrainConfig": "train_config",
    "default_config": "train_config",
}

__all__ = [
    "AdversarialConfig",
    "DigitsCNN",
    "ExpectedPrediction",
    "ImageDataset",
    "LRStage",
    "ModelCard",
    "ReliabilityBins",
    "ResNet20",
    "TrainConfig",
    "VisionEvalConfig",
    "accuracy",
    "augment",
    "build_model",
    "count_parameters",
    "default_config",
    "expected_calibration_error",
    "iterate_batches",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_model",
    "plot_reliability",
    "predict_proba",
    "reliability_bins",
    "save_model",
]

if TYPE_CHECKING:
    from sap_rl.vision.calibration import (
        ReliabilityBins,
        expected_calibration_error,
        plot_reliability,
        reliability_bins,
    )
    from sap_rl.vision.data import (
        ImageDataset,
        augment,
        iterate_batches,
        load_cifar10,
        load_dataset,
        load_digits,
    )
    from sap_rl.vision.evaluate import ExpectedPrediction, VisionEvalConfig, predict_proba
    from sap_rl.vision.models import (
        DigitsCNN,
        ModelCard,
        ResNet20,
        build_model,
        count_parameters,
        load_model,
        save_model,
    )
    from sap_rl.vision.train import accuracy
    from sap_rl.vision.train_config import (
        AdversarialConfig,
        LRStage,
        TrainConfig,
        default_config,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sap_rl.vision' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"sap_rl.vision.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
