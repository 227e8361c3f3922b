"""EOT convergence on an Atari agent: reward under an ``-eot`` attack against draws per gradient.

The Atari counterpart of ``eot_sweep.py``: an ``-eot`` attack averages the loss gradient over
``eot_samples`` draws of a stochastic defense (Athalye et al. 2018); too few draws leave gradient
noise that the defense gets credit for, and the attack has converged where more draws no longer
lower the reward. For each draw count this runs ``sap-rl evaluate``'s
:func:`~sap_rl.rl.evaluate.evaluate` on one (defense, attack, eps) with the eval config's other
settings (``configs/eval/study.yaml``: the same 10 matched games, seed and ``n_envs``), each in its
own resumable folder ``--work/draws-<k>`` (stop it and rerun the same command: finished cells and
units are reused), plus the dense agent under the same attack in ``--work/dense`` as a reference
(one pass per gradient whatever the draws: cheap; ``--no-dense`` skips it). It writes
``--out/eot_sweep.csv`` (and ``eot_sweep.png``), one row per draw count and then the references
(the defense's and dense's clean cells, dense attacked; their ``draws`` is empty):

- ``mean``, ``sem``: the cell's mean game score and its standard error over the games;
- ``diff_to_max``, ``ci_low``, ``ci_high``: the mean minus that at the largest draw count, paired
  over the same games, with a seeded percentile-bootstrap 95% interval
  (:func:`sap_rl.stats.bootstrap_mean_ci`): an interval that holds 0 means no measured gain from
  the extra draws;
- ``action_change_rate``: the fraction of the agent's steps whose action the attack changed;
- ``seconds``: the cell's work time (``timings.json``).

Usage (``results/rl/eot-sweep``; about an hour on the 2-core CPU, most of it the 64 draws)::

    nice -n 10 python benchmarks/eot_sweep_atari.py --threads 1
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from sweep_common import (
    add_atari_args,
    atari_base,
    atari_cell,
    atari_config,
    cell_row,
    errorbar_plot,
    ints,
    markdown_table,
    paired_to_reference,
    write_rows,
)

COLUMNS = ("defense", "attack", "eps", "draws", "n", "mean", "sem", "diff_to_max", "ci_low",
           "ci_high", "action_change_rate", "seconds")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the sweep, write the CSV and plot and print the table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defense", default="sap-100", help="a stochastic defense")
    parser.add_argument("--attack", default="pgd-10-eot", help="an -eot attack")
    parser.add_argument("--draws", type=ints, default=[1, 4, 16, 64], help="e.g. 1,4,16,64")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    add_atari_args(parser, work="runs/eot-sweep-atari", out="results/rl/eot-sweep")
    args = parser.parse_args(argv)

    from sap_rl.attacks import parse_attack
    from sap_rl.defenses import parse_defense
    from sap_rl.errors import UserError
    from sap_rl.rl.evaluate import evaluate

    try:
        attack, defense = parse_attack(args.attack), parse_defense(args.defense)
    except UserError as err:
        parser.error(str(err))
    if not attack.eot:
        parser.error(f"--attack {args.attack!r} has no -eot suffix: draws would change nothing")
    if not defense.stochastic:
        parser.error(f"--defense {args.defense!r} is deterministic: draws would change nothing")
    if not args.draws or min(args.draws) < 1:
        parser.error(f"--draws must be counts >= 1, got {args.draws}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    draws = sorted(set(args.draws))
    base = atari_base(args, attacks=[attack.name])
    # Every config first: a bad value is an error before any game is played.
    configs = {k: atari_config(parser, base, defenses=[defense.name], eot_samples=k)
               for k in draws}  # fmt: skip
    dense = None if args.no_dense else atari_config(parser, base, defenses=["dense"])

    rewards: dict[int, list[float]] = {}
    rows: list[dict[str, Any]] = []
    for k, config in configs.items():
        work = args.work / f"draws-{k}"
        evaluate(config, work, progress=False)
        cell = atari_cell(work, defense.name, attack.name, args.eps)
        rewards[k] = cell["rewards"]
        rows.append(cell_row(cell, defense=defense.name, attack=attack.name, eps=args.eps, draws=k))
        print(f"draws {k}: mean reward {rows[-1]['mean']:.1f} (sem {rows[-1]['sem']:.1f})",
              flush=True)  # fmt: skip
    diffs = paired_to_reference(rewards, draws[-1], seed=int(base.get("seed", 0)))
    for r in rows:
        r.update(zip(("diff_to_max", "ci_low", "ci_high"), diffs[r["draws"]], strict=True))
    # Clean cells do not depend on the draws (no attack runs): the last folder's stands for all.
    clean = atari_cell(args.work / f"draws-{draws[-1]}", defense.name, None, 0.0)
    references = [cell_row(clean, defense=defense.name, attack="clean", eps=0.0)]
    if dense is not None:
        work = args.work / "dense"
        evaluate(dense, work, progress=False)
        dense_clean = atari_cell(work, "dense", None, 0.0)
        references += [
            cell_row(dense_clean, defense="dense", attack="clean", eps=0.0),
            cell_row(atari_cell(work, "dense", attack.name, args.eps), defense="dense",
                     attack=attack.name, eps=args.eps),
        ]  # fmt: skip
    rows += references
    write_rows(args.out / "eot_sweep.csv", COLUMNS, rows)

    print(f"\n{args.agent}: {defense.name}, {attack.name}, eps {args.eps:g}, {rows[0]['n']} games "
          f"(difference to {draws[-1]} draws, paired, bootstrap 95% CI):")  # fmt: skip
    print(markdown_table(rows, [("defense", "defense", ""), ("attack", "attack", ""),
                                ("draws", "draws", ""), ("mean", "mean", ".1f"),
                                ("sem", "sem", ".1f"), ("difference", "diff_to_max", "+.1f"),
                                ("CI low", "ci_low", "+.1f"), ("CI high", "ci_high", "+.1f"),
                                ("action change", "action_change_rate", ".3f"),
                                ("seconds", "seconds", "")]))  # fmt: skip
    if not args.no_plot:
        swept = rows[: len(draws)]
        errorbar_plot(args.out / "eot_sweep.png",
                      {"": ([r["draws"] for r in swept], [r["mean"] for r in swept],
                            [r["sem"] for r in swept])},
                      xlabel="draws per gradient (eot_samples)", ylabel="mean reward",
                      title=f"{args.agent}: {defense.name}, {attack.name}, eps {args.eps:g}",
                      logx=True,
                      references={f"{r['defense']} {r['attack']}": r["mean"]
                                  for r in references})  # fmt: skip
    print(f"wrote {args.out / 'eot_sweep.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
