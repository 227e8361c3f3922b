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
import json
import sys
from pathlib import Path
from typing import Any

from sweep_common import errorbar_plot, ints, mean_sem, paired_to_reference, write_rows

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("defense", "attack", "eps", "draws", "n", "accuracy", "sem", "diff_to_max", "ci_low",
           "ci_high", "seconds")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the sweep, write the CSV and plot and print the table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "results/vision/models/digits-dense")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/vision/eval-digits.yaml")
    parser.add_argument("--defense", default="sap-100")
    parser.add_argument("--attack", default="pgd-10-eot", help="an -eot attack")
    parser.add_argument("--eps", type=float, default=16.0, help="budget in pixel levels")
    parser.add_argument("--draws", type=ints, default=[1, 4, 16, 64, 256])
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

    correct: dict[int, list[float]] = {}
    rows: list[dict[str, Any]] = []
    for k in draws:
        config = from_dict(VisionEvalConfig, {**base, "eot_samples": k})
        work = args.work / f"draws-{k}"
        evaluate(args.model, config, work, quiet=True)
        tensors = load_tensors(cell_path(work, cell, ".safetensors"))
        correct[k] = tensors["correct"].double().tolist()
        timings = json.loads((work / "timings.json").read_text())["cells"]
        n = len(correct[k])
        acc, sem = mean_sem(correct[k])
        rows.append({"defense": args.defense, "attack": args.attack, "eps": args.eps,
                     "draws": k, "n": n, "accuracy": acc, "sem": sem,
                     "seconds": timings.get(cell, "")})  # fmt: skip
        print(f"draws {k}: accuracy {acc:.4f} (sem {sem:.4f})", flush=True)
    diffs = paired_to_reference(correct, draws[-1], seed=int(base.get("seed", 0)))
    for row in rows:
        row.update(zip(("diff_to_max", "ci_low", "ci_high"), diffs[row["draws"]], strict=True))
    write_rows(args.out / "eot_sweep.csv", COLUMNS, rows)
    print(f"\n{args.defense}, {args.attack}, eps {args.eps:g}, {rows[0]['n']} images "
          f"(difference to {draws[-1]} draws, paired, bootstrap 95% CI):")  # fmt: skip
    print("| draws | accuracy | sem | difference | 95% CI | seconds |")
    print("|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['draws']} | {r['accuracy']:.3f} | {r['sem']:.3f} | {r['diff_to_max']:+.3f} | "
              f"{r['ci_low']:+.3f} .. {r['ci_high']:+.3f} | {r['seconds']} |")  # fmt: skip
    if not args.no_plot:
        errorbar_plot(args.out / "eot_sweep.png",
                      {"": ([r["draws"] for r in rows], [r["accuracy"] for r in rows],
                            [r["sem"] for r in rows])},
                      xlabel="draws per gradient (eot_samples)", ylabel="accuracy",
                      title=f"{args.defense}, {args.attack}, eps {args.eps:g}",
                      logx=True)  # fmt: skip
    print(f"wrote {args.out / 'eot_sweep.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
