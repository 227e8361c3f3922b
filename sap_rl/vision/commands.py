"""``sap-rl vision train``, ``sap-rl vision evaluate`` and ``sap-rl vision prune``.

Examples (shell)::

    sap-rl vision train --dataset digits --config configs/vision/digits.yaml --out runs/digits
    sap-rl vision train --dataset digits --adversarial kurakin --out runs/digits-kurakin
    sap-rl vision train --dataset cifar10 --data-root ~/data --config configs/vision/cifar10.yaml
    sap-rl vision evaluate --model runs/digits --defense dense,sap-100 --attack fgsm,pgd-10-eot
    sap-rl vision prune --model runs/digits-pgd --sparsity 0.99 --objective pgd --out runs/p99

Heavy imports (torch, scikit-learn) happen inside the handlers so that ``sap-rl --help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from sap_rl.attacks.names import VISION_ATTACK_NAMES_HELP
from sap_rl.cli_args import non_negative_int, positive_int
from sap_rl.errors import UserError

__all__ = ["register"]

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``vision`` sub-command group (``train``, ``evaluate``) to ``subparsers``."""
    vision = subparsers.add_parser(
        "vision",
        help="image classifiers: train (optionally adversarially), evaluate defenses vs attacks",
        description="Image classification on the SAP core: digits (built in) and CIFAR-10.",
    )
    sub = vision.add_subparsers(dest="vision_command", metavar="COMMAND")
    sub.required = True
    _add_train(sub)
    _add_evaluate(sub)
    _add_prune(sub)


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _eps_list(text: str) -> list[float]:
    try:
        return [float(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0,1,2,4, got {text!r}") from None


# ------------------------------------------------------------------------------------- train


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a classifier (SAP paper recipe for CIFAR-10, a short one for digits)",
        description="Train ResNet-20 (CIFAR-10) or a small CNN (digits); writes model.safetensors"
        " + card.json, config.yaml, history.csv and checkpoints/ into --out, and resumes there.",
    )
    p.add_argument(
        "--dataset",
        choices=["digits", "cifar10"],
        help="data set (default: the config's, or digits)",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="YAML training config (default: the built-in "
        "preset of --dataset, same as configs/vision/<dataset>.yaml)",
    )
    p.add_argument(
        "--data-root", type=Path, help="folder containing cifar-10-batches-py/ (CIFAR-10 only)"
    )
    p.add_argument(
        "--adversarial",
        choices=["none", "paper", "kurakin", "pgd", "trades", "mart"],
        help="adversarial training (overrides the config's adversarial.mode): paper, kurakin, "
        "pgd (Madry et al.), trades, mart",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        help="keep only the first N epochs of the schedule (quick runs)",
    )
    p.add_argument("--batch-size", type=positive_int, help="override batch_size")
    p.add_argument("--seed", type=non_negative_int, help="override the config's seed")
    p.add_argument(
        "--out", type=Path, help="model folder (default: runs/vision/<dataset>-<adversarial>)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--no-resume", action="store_true", help="start over even if --out holds a checkpoint"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _train(args: argparse.Namespace) -> int:
    from sap_rl.config import from_dict, load_yaml, to_dict
    from sap_rl.vision.train import train
    from sap_rl.vision.train_config import TrainConfig, default_config

    _set_threads(args.threads)
    if args.config is None:
        config = default_config(args.dataset or "digits")
    else:
        config = from_dict(TrainConfig, load_yaml(args.config))
        if args.dataset is not None and config.dataset != args.dataset:
            raise UserError(f"--dataset {args.dataset} but {args.config} is for {config.dataset}")
    data = to_dict(config)
    if args.adversarial:
        data["adversarial"]["mode"] = args.adversarial
    if args.batch_size:
        data["batch_size"] = args.batch_size
    if args.seed is not None:
        data["seed"] = args.seed
    if args.epochs:
        data["schedule"] = _truncate(data["schedule"], args.epochs)
    config = from_dict(TrainConfig, data)
    out = args.out or Path("runs/vision") / f"{config.dataset}-{_mode_name(config)}"
    started = time.perf_counter()
    card = train(
        config,
        out,
        data_root=args.data_root,
        device=args.device,
        quiet=args.quiet,
        resume=not args.no_resume,
    )
    print(
        f"{out}: {card.architecture} on {card.dataset} ({card.adversarial}), {card.epochs} epochs, "
        f"clean test accuracy {card.clean_accuracy:.4f} ({time.perf_counter() - started:.0f} s)"
    )
    return 0


def _mode_name(config: Any) -> str:
    mode = config.adversarial.mode
    return "dense" if mode == "none" else f"{mode}-adv"


def _truncate(schedule: list[dict[str, Any]], epochs: int) -> list[dict[str, Any]]:
    kept, left = [], epochs
    for stage in schedule:
        if left <= 0:
            break
        kept.append({"epochs": min(stage["epochs"], left), "lr": stage["lr"]})
        left -= kept[-1]["epochs"]
    return kept


# ------------------------------------------------------------------------------------- prune


def _add_prune(sub: Any) -> None:
    from sap_rl.pruning.cli import add_harp_arguments, add_resume_arguments

    p = sub.add_parser(
        "prune",
        help="prune a trained classifier with HARP (adversarially robust, learned layer rates)",
        description="Prune a model folder with HARP: learned importance scores and per-layer "
        "keep rates under a PGD-AT, TRADES or MART objective, then fine-tuning. Writes a model "
        "folder (pruned weights are zeros; masks, kept parameters and FLOPs recorded) that "
        "'sap-rl vision evaluate' reads like any other.",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder to prune")
    add_harp_arguments(p)
    p.add_argument("--config", type=Path, help="YAML pruning config (default: the built-in "
                   "preset for the model, same as configs/vision/prune-*.yaml)")  # fmt: skip
    p.add_argument(
        "--data-root", type=Path, help="folder containing cifar-10-batches-py/ (CIFAR-10 only)"
    )
    p.add_argument("--out", type=Path, help="pruned model folder "
                   "(default: runs/vision/<model>-harp-<sparsity>)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_resume_arguments(p)
    p.set_defaults(func=_prune)


def _prune(args: argparse.Namespace) -> int:
    from sap_rl.config import from_dict, load_yaml, to_dict
    from sap_rl.pruning import HarpStopped
    from sap_rl.pruning.cli import harp_overrides, run_stoppable, stopped_message, time_limit
    from sap_rl.vision.models import load_model
    from sap_rl.vision.prune import PruneConfig, default_prune_config, prune

    _set_threads(args.threads)
    if args.config is not None:
        data = load_yaml(args.config)
        if not isinstance(data.setdefault("harp", {}), dict):
            raise UserError(f"{args.config}: the 'harp' section must be a mapping")
        data["harp"].update(harp_overrides(args))
    else:
        _, card = load_model(args.model)
        data = to_dict(default_prune_config(card.architecture, card.dataset))
        data["harp"].update(harp_overrides(args))
    config = from_dict(PruneConfig, data)
    name = f"{args.model.resolve().name}-harp-{config.harp.sparsity:g}"
    out = args.out or Path("runs/vision") / name
    started = time.perf_counter()
    try:
        card = run_stoppable(out, lambda: prune(
            args.model, config, out, data_root=args.data_root, device=args.device,
            quiet=args.quiet, resume=args.resume, stop=time_limit(args.time_limit)))  # fmt: skip
    except HarpStopped as stopped:
        print(stopped_message(out, stopped.epochs_done, stopped.epochs, "time limit reached"))
        return 0
    info = card.pruning
    print(
        f"{out}: {card.architecture} pruned to sparsity {info['achieved_sparsity']:.4f} "
        f"({info['kept_weights']} of {info['prunable_weights']} weights, "
        f"{info['flops']} of {info['dense_flops']} FLOPs), clean test accuracy "
        f"{card.clean_accuracy:.4f} ({time.perf_counter() - started:.0f} s)"
    )
    return 0


# ---------------------------------------------------------------------------------- evaluate


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy and calibration vs eps for defenses under attacks",
        description="Attack the test set of a trained model for every defense x attack x eps; "
        "writes summary.csv/json, calibration.csv, accuracy.png and reliability.png into --out "
        "(an interrupted run resumes without redoing finished cells).",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder (card.json + weights)")
    p.add_argument("--config", type=Path, help="YAML evaluation config (flags override it)")
    p.add_argument(
        "--eps", type=_eps_list, help="budgets in pixel levels (default: 0,1,2,4,8,16,32)"
    )
    p.add_argument(
        "--defense",
        type=_csv,
        help="dense, sap-<k>, sap-<k>-fast, dropout-<p>, noise-<sigma> "
        "(default: dense,sap-100,dropout-0.1)",
    )
    p.add_argument(
        "--attack",
        type=_csv,
        help=f"comma-separated: {VISION_ATTACK_NAMES_HELP} (default: fgsm,fgsm-eot,pgd-10)",
    )
    p.add_argument(
        "--mc-samples",
        type=positive_int,
        help="passes averaged per prediction of a stochastic defense (default: 100)",
    )
    p.add_argument(
        "--grad-samples",
        type=positive_int,
        help="passes averaged into the prediction a plain attack differentiates (default: 16)",
    )
    p.add_argument(
        "--eot-samples",
        type=positive_int,
        help="passes whose loss gradients an -eot attack averages (default: 16)",
    )
    p.add_argument(
        "--labels",
        choices=["label", "prediction"],
        help="attack the true label (default) or the clean prediction",
    )
    p.add_argument("--examples", type=positive_int, help="use the first N test images")
    p.add_argument("--batch-size", type=positive_int, help="test images per batch (default: 256)")
    p.add_argument("--seed", type=non_negative_int, help="seed (default: 0)")
    p.add_argument(
        "--data-root", type=Path, help="folder containing cifar-10-batches-py/ (CIFAR-10 models)"
    )
    p.add_argument(
        "--out", type=Path, help="output folder (default: runs/vision-eval/<model name>)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--backend",
        choices=["local", "ray"],
        help="where cells run: this machine (default) or a Ray cluster (RAY_ADDRESS, else a "
        "local one; pip install 'sap-rl[ray]')",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        help="cells computed at a time, in processes or Ray actors; only the speed "
        "(default: 1 locally, every CPU of a Ray cluster)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_evaluate)


_EVAL_FLAGS = {
    "eps": "eps",
    "defense": "defenses",
    "attack": "attacks",
    "mc_samples": "mc_samples",
    "grad_samples": "grad_samples",
    "eot_samples": "eot_samples",
    "labels": "labels",
    "examples": "examples",
    "batch_size": "batch_size",
    "seed": "seed",
    "backend": "backend",
    "workers": "workers",
}


def _evaluate(args: argparse.Namespace) -> int:
    from sap_rl.config import from_dict, load_yaml
    from sap_rl.report import read_checks
    from sap_rl.sanity import warning_lines
    from sap_rl.vision.evaluate import VisionEvalConfig, evaluate

    _set_threads(args.threads)
    data: dict[str, Any] = load_yaml(args.config) if args.config else {}
    for flag, key in _EVAL_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            data[key] = value
    config = from_dict(VisionEvalConfig, data)
    out = args.out or Path("runs/vision-eval") / args.model.resolve().name
    started = time.perf_counter()
    rows = evaluate(
        args.model, config, out, data_root=args.data_root, device=args.device, quiet=args.quiet
    )
    width = max(len(r.defense) for r in rows)
    for row in rows:
        if row.eps == max(r.eps for r in rows if r.attack == row.attack) or row.eps == 0:
            print(
                f"{row.defense:<{width}}  {row.attack:<12} eps={row.eps:<5g} "
                f"accuracy={row.mean:.4f}"
            )
    print(f"wrote {out}/summary.csv ({time.perf_counter() - started:.0f} s)")
    for line in warning_lines(read_checks(out)):  # gradient-masking flags, last
        print(line, file=sys.stderr)
    return 0
