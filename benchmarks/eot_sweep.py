"""EOT convergence: a defense's accuracy under an ``-eot`` attack against the draws per gradient.

An ``-eot`` attack averages the loss gradient over ``eot_samples`` draws of a stochastic defense
(Athalye et al. 2018). Too few draws leave gradient noise that the defense gets credit for; the
attack has converged where more draws no longer lower the accuracy. For each draw count this
runs ``sap-rl vision evaluate``'s :func:`~sap_rl.vision.evaluate.evaluate` on one (defense,
attack, eps) with the evaluation config's other settings (the same images, Monte Carlo passes
and seed), each in its own resumable folder ``--work/draws-<k>``, and writes
``--out/eot_sweep.csv`` (and ``eot_sweep.png``):

- ``accuracy``, ``sem``: the cell's accuracy and its standard error over the test images;
- ``diff_to_max``, ``ci_low``, ``ci_high``: accuracy minus that at the largest draw count, paired
  over the same images, with a seeded percentile-bootstrap 95% interval
  (:func:`sap_rl.stats.bootstrap_mean_ci`): an interval that holds 0 means no measured gain from
  the extra draws;
- ``seconds``: the attacked cell's work time (``timings.json``).

Usage (the committed ``results/vision/eot-sweep``)::

    nice -n 10 python benchmarks/eot_sweep.py --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("defense", "attack", "eps", "draws", "n", "accuracy", "sem", "diff_to_max", "ci_low",
           "ci_high", "seconds")  # fmt: skip


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    """Run the sweep, write the CSV and plot and print the table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "results/vision/models/digits-dense")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/vision/eval-digits.yaml")
    parser.add_argument("--defense", default="sap-100")
    parser.add_argument("--attack", default="pgd-10-eot", help="an -eot attack")
    parser.add_argument("--eps", type=float, default=16.0, help="budget in pixel levels")
    parser.add_argument("--draws", type=_ints, default=[1, 4, 16, 64, 256])
    parser.add_argument("--examples", type=int, help="first N test images (default: config's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / "runs/eot-sweep")
    parser.add_argument("--out", type=Path, default=ROOT / "results/vision/eot-sweep")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from sap_rl.attacks import parse_attack
    from sap_rl.config import from_dict, load_yaml
    from sap_rl.grid.store import cell_path
    from sap_rl.io import load_tensors
    from sap_rl.stats import bootstrap_mean_ci
    from sap_rl.vision.evaluate import VisionEvalConfig, evaluate

    if not parse_attack(args.attack).eot:
        parser.error(f"--attack {args.attack!r} has no -eot suffix: draws would change nothing")
    torch.set_num_threads(args.threads)
    draws = sorted(set(args.draws))
    base: dict[str, Any] = load_yaml(args.config)
    base.update(defenses=[args.defense], attacks=[args.attack], eps=[args.eps])
    if args.examples is not None:
        base["examples"] = args.examples
    cell = f"{args.defense}__{args.attack}__eps{args.eps:g}"

    correct: dict[int, Any] = {}
    rows: list[dict[str, Any]] = []
    for k in draws:
        config = from_dict(VisionEvalConfig, {**base, "eot_samples": k})
        work = args.work / f"draws-{k}"
        evaluate(args.model, config, work, quiet=True)
        correct[k] = load_tensors(cell_path(work, cell, ".safetensors"))["correct"].double()
        timings = json.loads((work / "timings.json").read_text())["cells"]
        n = len(correct[k])
        acc = float(correct[k].mean())
        sem = float(correct[k].std(unbiased=True)) / n**0.5
        rows.append({"defense": args.defense, "attack": args.attack, "eps": args.eps,
                     "draws": k, "n": n, "accuracy": acc, "sem": sem,
                     "seconds": timings.get(cell, "")})  # fmt: skip
        print(f"draws {k}: accuracy {acc:.4f} (sem {sem:.4f})", flush=True)
    reference = correct[draws[-1]]
    for row in rows:
        diffs = (correct[row["draws"]] - reference).tolist()
        low, high = bootstrap_mean_ci(diffs, seed=int(base.get("seed", 0)))
        row.update(diff_to_max=sum(diffs) / len(diffs), ci_low=low, ci_high=high)

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "eot_sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    print(f"\n{args.defense}, {args.attack}, eps {args.eps:g}, {rows[0]['n']} images "
          f"(difference to {draws[-1]} draws, paired, bootstrap 95% CI):")  # fmt: skip
    print("| draws | accuracy | sem | difference | 95% CI | seconds |")
    print("|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['draws']} | {r['accuracy']:.3f} | {r['sem']:.3f} | {r['diff_to_max']:+.3f} | "
              f"{r['ci_low']:+.3f} .. {r['ci_high']:+.3f} | {r['seconds']} |")  # fmt: skip
    if not args.no_plot:
        _plot(rows, args.out / "eot_sweep.png")
    print(f"wrote {args.out / 'eot_sweep.csv'}")
    return 0


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.errorbar([r["draws"] for r in rows], [r["accuracy"] for r in rows],
                yerr=[r["sem"] for r in rows], marker="o", capsize=3)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("draws per gradient (eot_samples)")
    ax.set_ylabel("accuracy")
    r = rows[0]
    ax.set_title(f"{r['defense']}, {r['attack']}, eps {r['eps']:g}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
