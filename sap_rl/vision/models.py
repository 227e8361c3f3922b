"""Classifiers for the vision study and their on-disk format (safetensors weights + JSON card).

- :class:`ResNet20` — He et al. 2016's CIFAR-10 network: a 3x3 convolution, 3 stages of 3 basic
  blocks with 16/32/64 channels, identity shortcuts that zero-pad the extra channels and
  subsample (option A), global average pooling and a linear layer: about 0.27M parameters.
- :class:`ResNet18` — the CIFAR-10 ResNet-18 of the robust-pruning literature (HYDRA, HARP): a
  3x3 stem, 4 stages of 2 basic blocks with 64/128/256/512 channels and 1x1 projection shortcuts
  (option B), about 11.2M parameters.
- :class:`VGG16` — VGG-16 with batch norm for 32x32 images: 13 3x3 convolutions (four max-pools),
  then three linear layers (2048 -> 256 -> 256 -> classes), about 15M parameters.
- :class:`DigitsCNN` — a small CNN for the 8x8 ``digits`` images.

All take float input in pixel units [0, 255] (normalization is the first layer, so attacks work in
pixel units), return logits, and use ``nn.ReLU`` *modules* for every activation so that
:func:`sap_rl.sap.apply_sap` and the dropout defense can find them.

A model folder holds ``model.safetensors`` and ``card.json`` (:class:`ModelCard`); loading checks
the card, the weights' SHA-256 and the tensor names, and never unpickles. A pruned model
(``sap-rl vision prune``) is such a folder too: its pruned weights are zeros, its weights file
also holds the masks (``mask/<layer>.weight``, checked on load) and its card a ``pruning``
section (what it was pruned from, sparsity, kept parameters and FLOPs, per-layer rates).

Example:
    >>> model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> round(count_parameters(model) / 1e6, 2)
    0.27
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sap_rl.config import from_dict, to_dict
from sap_rl.errors import UserError
from sap_rl.io import atomic_write_json, load_tensors, read_json, save_tensors, sha256_file

__all__ = [
    "ARCHITECTURES",
    "CARD_FORMAT",
    "VGG16",
    "DigitsCNN",
    "ModelCard",
    "Normalize",
    "PadShortcut",
    "ResNet18",
    "ResNet20",
    "ResidualBlock",
    "build_model",
    "count_parameters",
    "load_model",
    "save_model",
]

logger = logging.getLogger(__name__)

CARD_FORMAT = "sap-rl-vision-model/1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"

#: Per-channel mean and standard deviation in pixel units used by each data set's models.
_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((125.307, 122.950, 113.865), (62.993, 62.089, 66.705)),
    "digits": ((77.9,), (95.9,)),
}


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the constants stored as buffers (pixel units in)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PadShortcut(nn.Module):
    """Option A of He et al.: subsample by ``stride`` and zero-pad the new channels (no weights).

    Example:
        >>> PadShortcut(stride=2, extra_channels=16)(torch.ones(1, 16, 8, 8)).shape
        torch.Size([1, 32, 4, 4])
    """

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels > 0:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut, as in He et al. (2016).

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: the first convolution's stride (2 halves the feature map).
        shortcut: where the shape changes, ``"pad"`` (option A: subsample and zero-pad, no
            weights; ResNet-20) or ``"conv"`` (option B: a strided 1x1 conv-BN; ResNet-18).

    Example:
        >>> ResidualBlock(16, 32, stride=2)(torch.zeros(1, 16, 8, 8)).shape
        torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "pad") -> None:
        super().__init__()
        if shortcut not in ("pad", "conv"):
            raise ValueError(f"shortcut must be 'pad' or 'conv', got {shortcut!r}")
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = (
                PadShortcut(stride, planes - in_planes)
                if shortcut == "pad"
                else nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 images (He et al. 2016, section 4.2): 6n+2 layers with n = 3.

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        mean, std: per-channel normalization constants in pixel units.

    Example:
        >>> net = ResNet20()
        >>> sum(isinstance(m, nn.ReLU) for m in net.modules())
        19
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        mean: Sequence[float] = _NORMALIZATION["cifar10"][0],
        std: Sequence[float] = _NORMALIZATION["cifar10"][1],
        blocks_per_stage: int = 3,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(ResidualBlock(in_planes, planes, stride, "pad"))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.pool(out), 1))


class DigitsCNN(nn.Module):
    """A small CNN for 1x8x8 digits: conv 3x3 -> max-pool 2x2 -> conv 3x3 -> hidden linear layer.

    Kept small (about 40k parameters, 1.6k activations per image) because stochastic defenses
    are evaluated with 100 Monte Carlo passes per prediction.

    Example:
        >>> DigitsCNN()(torch.zeros(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        *,
        mean: Sequence[float] = _NORMALIZATION["digits"][0],
        std: Sequence[float] = _NORMALIZATION["digits"][1],
        image_size: int = 8,
        width: int = 16,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
        )
        side = image_size // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images (the CIFAR variant: 3x3 stem, no max-pool).

    Example:
        >>> net = ResNet18()
        >>> net(torch.zeros(1, 3, 32, 32)).shape, round(count_parameters(net) / 1e6, 1)
        (torch.Size([1, 10]), 11.2)
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        mean: Sequence[float] = _NORMALIZATION["cifar10"][0],
        std: Sequence[float] = _NORMALIZATION["cifar10"][1],
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        in_planes = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(ResidualBlock(in_planes, planes, stride, "conv"),
                                        ResidualBlock(planes, planes, 1, "conv")))  # fmt: skip
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


#: VGG-16's convolution widths; "M" is a 2x2 max-pool (the fifth pool is left out for 32x32).
_VGG16_LAYERS: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip


class VGG16(nn.Module):
    """VGG-16 with batch norm for 32x32 images: 13 convolutions and 3 linear layers.

    Example:
        >>> net = VGG16()
        >>> net(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        mean: Sequence[float] = _NORMALIZATION["cifar10"][0],
        std: Sequence[float] = _NORMALIZATION["cifar10"][1],
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _VGG16_LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                width = int(item)
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False),
                           nn.BatchNorm2d(width), nn.ReLU()]  # fmt: skip
                channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(512 * 4, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(self.normalize(x))))


def _normalization(dataset: str, channels: int) -> tuple[Sequence[float], Sequence[float]]:
    mean, std = _NORMALIZATION.get(dataset, _NORMALIZATION["cifar10"])
    if len(mean) != channels:
        mean, std = (mean[0],) * channels, (std[0],) * channels
    return mean, std


def _resnet18(num_classes: int, input_shape: tuple[int, int, int], dataset: str) -> nn.Module:
    mean, std = _normalization(dataset, input_shape[0])
    return ResNet18(num_classes, input_shape[0], mean=mean, std=std)


def _vgg16(num_classes: int, input_shape: tuple[int, int, int], dataset: str) -> nn.Module:
    if min(input_shape[1:]) < 16:
        raise UserError(f"vgg16 needs images of at least 16x16 pixels, got {input_shape}")
    mean, std = _normalization(dataset, input_shape[0])
    return VGG16(num_classes, input_shape[0], mean=mean, std=std)


def _resnet20(num_classes: int, input_shape: tuple[int, int, int], dataset: str) -> nn.Module:
    mean, std = _normalization(dataset, input_shape[0])
    return ResNet20(num_classes, input_shape[0], mean=mean, std=std)


def _digits_cnn(num_classes: int, input_shape: tuple[int, int, int], dataset: str) -> nn.Module:
    mean, std = _NORMALIZATION.get(dataset, _NORMALIZATION["digits"])
    if len(mean) != input_shape[0]:
        mean, std = (mean[0],) * input_shape[0], (std[0],) * input_shape[0]
    if input_shape[1] != input_shape[2] or input_shape[1] % 2:
        raise UserError(f"digits_cnn needs square images of even size, got {input_shape}")
    return DigitsCNN(num_classes, input_shape[0], mean=mean, std=std, image_size=input_shape[1])


#: Architecture name -> builder ``(num_classes, input_shape, dataset) -> nn.Module``.
ARCHITECTURES: dict[str, Callable[[int, tuple[int, int, int], str], nn.Module]] = {
    "resnet20": _resnet20,
    "resnet18": _resnet18,
    "vgg16": _vgg16,
    "digits_cnn": _digits_cnn,
}


def build_model(
    architecture: str,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    dataset: str = "",
) -> nn.Module:
    """Build an untrained model by architecture name (a key of :data:`ARCHITECTURES`).

    Raises:
        UserError: unknown architecture name.
    """
    builder = ARCHITECTURES.get(architecture)
    if builder is None:
        raise UserError(
            f"unknown architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}"
        )
    c, h, w = (int(v) for v in input_shape)
    return builder(num_classes, (c, h, w), dataset)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class ModelCard:
    """``card.json`` of a trained classifier.

    Attributes:
        name: folder / model name.
        architecture: a key of :data:`ARCHITECTURES`.
        dataset: ``digits`` or ``cifar10``.
        num_classes: number of logits.
        input_shape: (C, H, W) of one float image in pixel units [0, 255].
        classes: class names.
        adversarial: adversarial training mode (``none``, ``paper``, ``kurakin``, ``pgd``,
            ``trades``, ``mart``; for a pruned model, the pruning objective).
        epochs: epochs trained.
        clean_accuracy: accuracy on the test split.
        test_examples: size of the test split.
        training: the resolved training configuration.
        sha256: SHA-256 of ``model.safetensors``.
        sap_rl_version: package version that wrote the card.
        trained_on: ISO date and device of the training run.
        pruning: empty for a dense model; for a pruned one what it was pruned from and how
            (:meth:`sap_rl.pruning.HarpResult.card`): sparsity, kept weights and parameters,
            FLOPs, per-layer keep rates.
        format: card format tag.
    """

    name: str
    architecture: str
    dataset: str
    num_classes: int
    input_shape: list[int]
    classes: list[str]
    adversarial: str
    epochs: int
    clean_accuracy: float
    test_examples: int
    sha256: str
    sap_rl_version: str
    training: dict[str, Any] = field(default_factory=dict)
    trained_on: str = ""
    pruning: dict[str, Any] = field(default_factory=dict)
    format: str = CARD_FORMAT

    def __post_init__(self) -> None:
        if self.format != CARD_FORMAT:
            raise ValueError(f"unsupported card format {self.format!r} (expected {CARD_FORMAT})")
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape must be [C, H, W], got {self.input_shape}")
        if self.num_classes < 2 or len(self.classes) != self.num_classes:
            raise ValueError("num_classes must be >= 2 and match the number of class names")


def save_model(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    card: Mapping[str, Any] | ModelCard,
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> ModelCard:
    """Write ``model.safetensors`` and ``card.json`` into ``out_dir`` (atomically, weights first).

    ``card`` may omit ``sha256`` (it is computed here). ``masks`` (a pruned model's
    ``{"<layer>.weight": bool}``) go into the weights file beside the weights. Returns the
    written card.
    """
    from sap_rl.pruning.export import mask_tensors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    state.update(mask_tensors(masks or {}))
    save_tensors(out / WEIGHTS_FILE, state, metadata={"format": CARD_FORMAT})
    data = to_dict(card) if isinstance(card, ModelCard) else dict(card)
    data["sha256"] = sha256_file(out / WEIGHTS_FILE)
    written = from_dict(ModelCard, data)
    atomic_write_json(out / CARD_FILE, to_dict(written))
    return written


def load_model(path: str | os.PathLike[str], *, verify: bool = True) -> tuple[nn.Module, ModelCard]:
    """Load a model folder written by :func:`save_model`; returns ``(model in eval mode, card)``.

    Args:
        path: the model folder (or its ``card.json``).
        verify: check the weights' SHA-256 against the card.

    Raises:
        UserError: missing files, an invalid card, a checksum mismatch or weights that do not fit
            the card's architecture. Nothing is unpickled.
    """
    folder = Path(path)
    if folder.name == CARD_FILE:
        folder = folder.parent
    if not (folder / CARD_FILE).is_file():
        raise UserError(f"{folder}: not a model folder (no {CARD_FILE}); train one with "
                        "'sap-rl vision train'")  # fmt: skip
    raw = read_json(folder / CARD_FILE)
    if not isinstance(raw, dict):
        raise UserError(f"{folder / CARD_FILE}: expected a JSON object")
    try:
        card = from_dict(ModelCard, raw)
    except UserError as err:
        raise UserError(f"{folder / CARD_FILE}: {err}") from None
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{weights}: weights file not found")
    if verify and sha256_file(weights) != card.sha256:
        raise UserError(f"{weights}: SHA-256 does not match {CARD_FILE}; the file was changed")
    model = build_model(
        card.architecture,
        num_classes=card.num_classes,
        input_shape=card.input_shape,
        dataset=card.dataset,
    )
    from sap_rl.pruning.export import check_masks, split_masks

    state, masks = split_masks(load_tensors(weights))
    check_masks(state, masks, str(weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise UserError(
            f"{weights}: weights do not fit a {card.architecture} "
            f"({first[1].strip() if len(first) > 1 else first[0]})"
        ) from None
    return model.eval(), card
