"""Accuracy and calibration of a trained classifier under attack, per defense (``sap-rl vision
evaluate``).

For every defense (``dense``, ``sap-<k>``, ``dropout-<p>``, ... see :mod:`sap_rl.defenses`), attack
(``fgsm``, ``pgd-<steps>``, their ``-eot`` and ``-ll`` versions, see :mod:`sap_rl.attacks`) and
budget eps (pixel levels), the test images are attacked batch by batch and classified:

- **Predictions** of a stochastic defense are the mean softmax over ``mc_samples`` passes (100, as
  in the SAP authors' code); a deterministic model gets one pass.
- **Attacks on a stochastic defense.** A plain attack (``fgsm``, ``pgd-10``) follows the SAP paper:
  it differentiates the model's Monte Carlo prediction, i.e. the cross-entropy of the softmax
  averaged over ``grad_samples`` stochastic passes (:class:`ExpectedPrediction`). An ``-eot``
  attack is the adaptive attack of Athalye et al. 2018 (expectation over transformation): it
  averages the gradients of the per-pass losses over ``eot_samples`` passes. For a deterministic
  defense the two coincide, and the EOT version is computed with one pass. A ``transfer-<attack>``
  is made on the dense network (the same weights with the stochastic layers off) and the defended
  model classifies its images: a gradient-masking check.
- Attacks move away from the **true labels** by default (``labels: prediction`` uses the model's own
  clean prediction instead).

Each (defense, attack, eps) cell is one unit of work of the grid engine (:mod:`sap_rl.grid`): it
runs on the ``local`` or ``ray`` backend, in this process or on ``workers`` others, and is saved
under ``cells/`` as soon as it is done (safetensors: per-example correctness, confidence and
prediction), so an interrupted run resumes without redoing finished cells; a cell is reused only
if it was made with the same model and settings. A cell's seed comes from the settings and its
name, so where it runs never changes it.
The outputs (:func:`evaluate`) are ``summary.csv`` / ``summary.json`` (``mean`` = accuracy, ``n`` =
test examples, ``relative`` = accuracy / the same defense's clean accuracy, ``normalized`` =
(acc - 1/C) / (dense clean acc - 1/C)), ``calibration.csv`` (expected calibration error of every
cell), ``accuracy.png`` and ``reliability.png``.

Example:
    >>> cfg = VisionEvalConfig(eps=[0, 4], defenses=["dense"], attacks=["fgsm"], examples=8)
    >>> cfg.eps_values()
    [0.0, 4.0]
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from sap_rl.attacks import AttackSpec, check_eot_samples, parse_attack
from sap_rl.config import save_config, to_dict
from sap_rl.defenses import DefenseSpec, parse_defense
from sap_rl.errors import UserError
from sap_rl.grid import Unit, Work, make_executor, run_grid, split_cell, versions
from sap_rl.grid.executors import BACKENDS, Backend
from sap_rl.grid.store import cell_path
from sap_rl.io import check_out_dir, load_tensors, save_tensors
from sap_rl.lock import output_lock
from sap_rl.report import SummaryRow, plot_accuracy, summarize, write_csv, write_summary
from sap_rl.sanity import DEFAULT_LARGE_EPS, check_large_eps, sanity_checks
from sap_rl.sap import mc_average
from sap_rl.stats import paired_differences, with_worst
from sap_rl.vision.calibration import ReliabilityBins, plot_reliability, reliability_bins
from sap_rl.vision.data import iterate_batches, load_dataset
from sap_rl.vision.models import ModelCard, load_model
from sap_rl.vision.train import resolve_device, seed_for

__all__ = [
    "CellResult",
    "ExpectedPrediction",
    "VisionEvalConfig",
    "evaluate",
    "predict_proba",
]

logger = logging.getLogger(__name__)

CELLS_DIR = "cells"
CLEAN = "clean"
CALIBRATION_COLUMNS = ("defense", "attack", "eps", "n", "accuracy", "ece", "mean_confidence")


@dataclass
class VisionEvalConfig:
    """What :func:`evaluate` measures (also read from YAML: ``configs/vision/eval-*.yaml``).

    Attributes:
        eps: budgets in pixel levels; 0 (clean) is always measured.
        defenses: defense names (see :func:`sap_rl.defenses.parse_defense`).
        attacks: attack names (see :func:`sap_rl.attacks.parse_attack`).
        mc_samples: stochastic passes averaged for each prediction.
        grad_samples: passes averaged into the prediction a plain attack differentiates
            (stochastic defenses only; the SAP paper's attacker).
        eot_samples: passes whose loss gradients an ``-eot`` attack averages (at most
            :data:`sap_rl.attacks.MAX_EOT_SAMPLES`, as ``grad_samples``).
        labels: attack the true ``label`` or the model's clean ``prediction``.
        examples: use the first N test images (``null``: all).
        batch_size: test images per attacked batch.
        max_batch: most rows per forward pass (Monte Carlo copies are chunked to fit).
        seed: seeds every random draw (defense randomness, PGD starts); each cell has its own
            seed derived from it, so cells do not depend on the order they run in.
        bins: confidence bins of the calibration error and reliability diagram.
        large_eps: budgets from which every attack must bring accuracy down to about chance;
            a row that stays above it is flagged (:mod:`sap_rl.sanity`). Only read when the
            summary is made, never part of the fingerprint; ``.inf`` turns it off.
        reliability_eps: attacked budget drawn in ``reliability.png`` beside the clean curve
            (``null``: 8 if measured, else the largest eps).
        backend: where cells run: ``local`` or ``ray`` (:mod:`sap_rl.grid`); only the speed.
        workers: cells computed at the same time, in processes or Ray actors (``null``: 1
            locally, every CPU of a Ray cluster); only the speed.
    """

    eps: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    defenses: list[str] = field(default_factory=lambda: ["dense", "sap-100", "dropout-0.1"])
    attacks: list[str] = field(default_factory=lambda: ["fgsm", "fgsm-eot", "pgd-10"])
    mc_samples: int = 100
    grad_samples: int = 16
    eot_samples: int = 16
    labels: Literal["label", "prediction"] = "label"
    examples: int | None = None
    batch_size: int = 256
    max_batch: int = 16384
    seed: int = 0
    bins: int = 15
    reliability_eps: float | None = None
    large_eps: float = DEFAULT_LARGE_EPS
    backend: Backend = "local"
    workers: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "mc_samples",
            "grad_samples",
            "eot_samples",
            "batch_size",
            "max_batch",
            "bins",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # Each of these passes is paid at every attack step: bounded like sap-rl evaluate's.
        check_eot_samples(self.eot_samples, "eot_samples")
        check_eot_samples(self.grad_samples, "grad_samples")
        if self.examples is not None and self.examples < 1:
            raise ValueError(f"examples must be >= 1, got {self.examples}")
        if any(not math.isfinite(e) or e < 0 for e in self.eps):
            raise ValueError(f"eps values must be finite and >= 0 (pixel levels), got {self.eps}")
        if not self.defenses or not self.attacks:
            raise ValueError("at least one defense and one attack are needed")
        for name in self.attacks:  # a bad name is refused before anything is loaded or written
            if parse_attack(name).timed:
                raise UserError(
                    f"attack {name!r}: timed attacks choose agent steps; they are for sap-rl "
                    "evaluate only"
                )
        self.large_eps = check_large_eps(self.large_eps)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def eps_values(self) -> list[float]:
        """Sorted distinct budgets, 0 included."""
        return sorted({0.0, *(float(e) for e in self.eps)})


@dataclass(frozen=True)
class CellResult:
    """Per-example outcome of one (defense, attack, eps) cell."""

    correct: torch.Tensor
    confidence: torch.Tensor
    prediction: torch.Tensor

    @property
    def accuracy(self) -> float:
        """Fraction of correct predictions."""
        return float(self.correct.double().mean())


class ExpectedPrediction(nn.Module):
    """``log`` of the softmax averaged over ``samples`` stochastic passes of ``model``.

    Cross-entropy on these "logits" is the loss of the Monte Carlo prediction, so an attack on this
    module follows the gradient of the model's averaged prediction (the SAP paper's attacker).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2))
        >>> out = ExpectedPrediction(net, samples=4)(torch.zeros(5, 3))
        >>> bool(torch.allclose(out.exp().sum(dim=1), torch.ones(5)))
        True
    """

    def __init__(self, model: nn.Module, samples: int, max_batch: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.samples = samples
        self.max_batch = max_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = mc_average(self.model, x, self.samples, softmax=True, max_batch=self.max_batch)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def predict_proba(
    model: nn.Module, x: torch.Tensor, *, samples: int = 1, max_batch: int | None = None
) -> torch.Tensor:
    """Class probabilities: the softmax averaged over ``samples`` passes, without gradient.

    Example:
        >>> probs = predict_proba(nn.Linear(3, 4), torch.zeros(2, 3))
        >>> probs.shape, bool(torch.allclose(probs.sum(dim=1), torch.ones(2)))
        (torch.Size([2, 4]), True)
    """
    with torch.no_grad():
        if samples == 1:
            return model(x).float().softmax(dim=-1)
        return mc_average(model, x, samples, softmax=True, max_batch=max_batch).float()


def evaluate(
    model_dir: str | os.PathLike[str],
    config: VisionEvalConfig,
    out_dir: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    quiet: bool = False,
) -> list[SummaryRow]:
    """Measure accuracy and calibration of the model in ``model_dir`` and write the result files.

    Args:
        model_dir: a model folder written by ``sap-rl vision train``.
        config: what to measure.
        out_dir: output folder (``summary.csv``, ``summary.json``, ``calibration.csv``,
            ``accuracy.png``, ``reliability.png``, ``cells/``).
        data_root: folder that holds ``cifar-10-batches-py`` (CIFAR-10 models only).
        device: ``auto``, ``cpu`` or ``cuda``.
        quiet: no progress bar.

    Returns:
        The :class:`sap_rl.report.SummaryRow` s written to ``summary.csv``.

    Raises:
        UserError: bad model folder, missing data, unknown defense/attack names, or another run
            writing into ``out_dir`` (:func:`sap_rl.lock.output_lock`).
    """
    started = time.perf_counter()
    out = check_out_dir(out_dir)
    dev = resolve_device(device)
    defenses = list({spec.name: spec for spec in map(parse_defense, config.defenses)}.values())
    attacks = list({spec.name: spec for spec in map(parse_attack, config.attacks)}.values())
    eps_values = config.eps_values()

    model, card = load_model(model_dir)
    data = load_dataset(card.dataset, data_root)
    if list(data.input_shape) != list(card.input_shape) or data.num_classes != card.num_classes:
        raise UserError(f"{model_dir}: the model's input shape or classes do not match the data")
    n = data.x_test.shape[0] if config.examples is None else min(config.examples, len(data.x_test))
    x, y = data.x_test[:n], data.y_test[:n]
    specs = {
        _cell_name(spec, attack, eps): (spec, attack, eps)
        for spec in defenses
        for attack, eps in [(None, 0.0)] + [(a, e) for a in attacks for e in eps_values if e > 0]
    }
    batches = -(-n // config.batch_size)
    cells = {name: split_cell(name, batches, batches) for name in specs}  # a cell is one unit
    work = Work(CellRunner, (model.cpu(), x, y, config, specs, device), threads=None)
    # The executor first (joining a Ray cluster may fail: then nothing is written). One writer
    # per output folder: two runs would overwrite each other's cells and tables.
    with make_executor(config.backend, config.workers) as executor, output_lock(out):
        save_config(config, out / "eval_config.yaml")
        files = VisionCells(out, _fingerprint(card, config, n, dev))
        run = run_grid(cells, files, work, executor, progress=not quiet, unit_name="batch")
        results: dict[tuple[str, str, float], CellResult] = {}
        for name, cell in run.done.items():
            spec, attack, eps = specs[name]
            results[(spec.name, CLEAN if attack is None else attack.name, eps)] = cell
        reused = len(run.reused)

        # Records: one per test example and cell; the clean cell is eps = 0 of every attack.
        records: list[tuple[str, str, float, float]] = []
        calibration: list[dict[str, Any]] = []
        bins: dict[tuple[str, str, float], ReliabilityBins] = {}
        for spec in defenses:
            for attack in attacks:
                for eps in eps_values:
                    cell = results[(spec.name, CLEAN if eps == 0 else attack.name, eps)]
                    records += [
                        (spec.name, attack.name, eps, float(v)) for v in cell.correct.tolist()
                    ]
                    b = reliability_bins(cell.confidence, cell.correct, n_bins=config.bins)
                    bins[(spec.name, attack.name, eps)] = b
                    calibration.append(
                        {
                            "defense": spec.name,
                            "attack": attack.name,
                            "eps": eps,
                            "n": n,
                            "accuracy": cell.accuracy,
                            "ece": b.ece,
                            "mean_confidence": float(cell.confidence.mean()),
                        }
                    )
        # The worst case over attacks, per test image (every cell classifies the same images).
        records = with_worst(records, [a.name for a in attacks])
        chance = 1.0 / card.num_classes
        dense_clean = results.get(("dense", CLEAN, 0.0))
        baseline = dense_clean.accuracy if dense_clean is not None else card.clean_accuracy
        rows = summarize(records, random_score=chance, baseline_score=baseline)
        differences = paired_differences(records, seed=config.seed)
        # Gradient-masking flags: accuracy above chance at a large budget, a transfer or
        # gradient-free attack beating the white-box ones (paired over the same images).
        checks = sanity_checks(rows, records, floor=chance, large_eps=config.large_eps,
                               floor_name="chance", seed=config.seed)  # fmt: skip

        meta = {
            "model": {
                "path": str(model_dir),
                "name": card.name,
                "architecture": card.architecture,
                "dataset": card.dataset,
                "adversarial": card.adversarial,
                "clean_accuracy": card.clean_accuracy,
                "sha256": card.sha256,
            },
            "config": to_dict(config),
            "examples": n,
            "chance_accuracy": chance,
            "dense_clean_accuracy": baseline,
            "calibration": calibration,
            "paired_differences": [asdict(d) for d in differences],
            "checks": [asdict(c) for c in checks],
            "wall_seconds": round(time.perf_counter() - started, 2),
            "cells": {"computed": len(results) - reused, "reused_from_earlier_run": reused},
            "device": str(dev),
            "versions": versions(),
        }
        write_summary(out, rows, meta)
        write_csv(
            out / "calibration.csv",
            CALIBRATION_COLUMNS,
            ([c[k] for k in CALIBRATION_COLUMNS] for c in calibration),
        )
        title = f"{card.name} ({card.dataset}, {n} test images)"
        plot_accuracy(rows, out / "accuracy.png", title=title)
        shown_eps = _reliability_eps(config, eps_values)
        panels = {
            spec.name: {
                "clean": bins[(spec.name, attacks[0].name, 0.0)],
                **(
                    {
                        f"{a.name} eps={shown_eps:g}": bins[(spec.name, a.name, shown_eps)]
                        for a in attacks
                    }
                    if shown_eps > 0
                    else {}
                ),
            }
            for spec in defenses
        }
        plot_reliability(panels, out / "reliability.png", title=title)
        logger.info("wrote %s in %.1f s", out, time.perf_counter() - started)
        return rows


def _cell_name(spec: DefenseSpec, attack: AttackSpec | None, eps: float) -> str:
    return f"{spec.name}__{CLEAN if attack is None else attack.name}__eps{eps:g}"


class CellRunner:
    """A worker's unit runner: the model and test images, sent once; one cell per unit."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        config: VisionEvalConfig,
        specs: dict[str, tuple[DefenseSpec, AttackSpec | None, float]],
        device: str,
    ) -> None:
        self.model, self.x, self.y, self.config, self.specs = model, x, y, config, specs
        self.device = resolve_device(device)
        self.defended: dict[str, nn.Module] = {}

    def __call__(self, unit: Unit, report: Callable[[int], None]) -> CellResult:
        spec, attack, eps = self.specs[unit.cell]
        if spec.name not in self.defended:  # one defended copy per defense, kept
            self.defended = {spec.name: spec.apply(self.model).to(self.device).eval()}
        defended = self.defended[spec.name]
        return _run_cell(defended, spec, attack, eps, self.x, self.y, self.config, self.device,
                         _Report(report))  # fmt: skip


class _Report:
    """The progress bar interface ``_run_cell`` updates, forwarded to a runner's report."""

    def __init__(self, report: Callable[[int], None]) -> None:
        self.update = report


class VisionCells:
    """Cells as ``cells/<cell>.safetensors`` (:class:`sap_rl.grid.engine.CellFiles`).

    A cell made with other settings is computed again (its file is replaced).
    """

    def __init__(self, out: Path, fingerprint: str) -> None:
        self.out, self.fingerprint = out, fingerprint

    def load(self, cell: str) -> CellResult | None:
        return _load_cell(cell_path(self.out, cell, ".safetensors"), self.fingerprint)

    def save(self, cell: str, results: list[Any]) -> CellResult:
        (result,) = results
        _save_cell(cell_path(self.out, cell, ".safetensors"), result, self.fingerprint)
        return result


def _run_cell(
    defended: nn.Module,
    spec: DefenseSpec,
    attack: AttackSpec | None,
    eps: float,
    x: torch.Tensor,
    y: torch.Tensor,
    config: VisionEvalConfig,
    device: torch.device,
    bar: Any,
) -> CellResult:
    """Attack (unless clean) and classify every test image for one cell."""
    seed = seed_for(config.seed, spec.name, CLEAN if attack is None else attack.name, f"{eps:g}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    stochastic = spec.stochastic
    attack_model = defended
    # A transfer attack is made on the dense network (AttackSpec.run switches SAP off), so it
    # differentiates the defended model itself, never its Monte Carlo prediction.
    if stochastic and attack is not None and not attack.eot and not attack.transfer:
        attack_model = ExpectedPrediction(defended, config.grad_samples, config.max_batch)
    eot_samples = config.eot_samples if stochastic else 1
    pred_samples = config.mc_samples if stochastic else 1
    correct, confidence, prediction = [], [], []
    for xb, yb in iterate_batches(x, y, config.batch_size):
        xb, yb = xb.to(device), yb.to(device)
        if attack is not None and eps > 0:
            xb = attack.run(
                attack_model,
                xb,
                eps,
                target=yb if config.labels == "label" else None,
                eot_samples=eot_samples,
                generator=generator,
                max_batch=config.max_batch,
            )
        probs = predict_proba(defended, xb, samples=pred_samples, max_batch=config.max_batch)
        conf, pred = probs.max(dim=1)
        correct.append((pred == yb).to(torch.uint8).cpu())
        confidence.append(conf.cpu())
        prediction.append(pred.cpu())
        bar.update(1)
    return CellResult(torch.cat(correct), torch.cat(confidence), torch.cat(prediction))


def _fingerprint(card: ModelCard, config: VisionEvalConfig, n: int, device: torch.device) -> str:
    """Everything a cell's numbers depend on besides its (defense, attack, eps) name."""
    keys = ["mc_samples", "grad_samples", "eot_samples", "labels", "batch_size", "max_batch"]
    keys.append("seed")
    payload = {
        "model": card.sha256,
        "examples": n,
        "device": device.type,
        **{k: getattr(config, k) for k in keys},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _save_cell(path: Path, cell: CellResult, fingerprint: str) -> None:
    tensors = {
        "correct": cell.correct,
        "confidence": cell.confidence,
        "prediction": cell.prediction,
    }
    save_tensors(path, tensors, metadata={"fingerprint": fingerprint})


def _load_cell(path: Path, fingerprint: str) -> CellResult | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("fingerprint") != fingerprint:
                return None
        tensors = load_tensors(path)
        return CellResult(tensors["correct"], tensors["confidence"], tensors["prediction"])
    except (UserError, KeyError, OSError, RuntimeError):
        logger.warning("%s: unreadable cached cell; recomputing it", path)
        return None


def _reliability_eps(config: VisionEvalConfig, eps_values: list[float]) -> float:
    if config.reliability_eps is not None and float(config.reliability_eps) in eps_values:
        return float(config.reliability_eps)
    return 8.0 if 8.0 in eps_values else eps_values[-1]
