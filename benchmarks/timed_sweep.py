"""Strategically timed attack (Lin et al. 2017): reward against the fraction of steps attacked.

A ``timed-<attack>`` attacks only the steps where the agent's preference, the largest minus the
smallest probability of ``softmax(Q)`` on the clean frames, exceeds ``timed_threshold``, and
only while the game's attacked steps stay within ``timed_budget`` of its steps so far
(docs/evaluation.md). For each (threshold, budget) this runs ``sap-rl evaluate``'s
:func:`~sap_rl.rl.evaluate.evaluate` on the defenses (default dense and SAP-100) under
``timed-<attack>`` at one eps, with the eval config's other settings (``configs/eval/study.yaml``:
the same 10 matched games, seed and ``n_envs``), each in its own resumable folder
``--work/threshold-<t>-budget-<b>`` (the threshold and budget are part of the cells'
fingerprint; stop it and rerun the same command: finished cells and units are reused). It writes
``--out/timed_sweep.csv`` (and ``timed_sweep.png``, reward against attacked fraction), one row
per (defense, threshold, budget), then each defense's clean cell (attack ``clean``, attacked
fraction 0, no action-change rate):

- ``mean``, ``sem``: the cell's mean game score and its standard error over the games;
- ``attacked_fraction``: attacked steps / the agent's steps over the cell's games;
- ``action_change_rate``: steps whose action the attack changed / the agent's steps;
- ``seconds``: the cell's work time (``timings.json``).

Threshold 0 with budget 1 attacks every step (a preference is 0 only if all Q-values are
equal): the untimed attack, the other end from clean. The default thresholds come from the
dense RoadRunner agent's preferences on two clean games (1,455 steps, 2026-11-30): 0.02, 0.04,
0.06, 0.1 and 0.15 leave 85%, 58%, 34%, 13% and 4% of them above; none was above 0.25.

Usage (``results/rl/timed-sweep``; one to two hours on the 2-core CPU, most of it SAP-100)::

    nice -n 10 python benchmarks/timed_sweep.py --threads 1
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
    floats,
    markdown_table,
    write_rows,
)

COLUMNS = ("defense", "attack", "eps", "threshold", "budget", "n", "mean", "sem",
           "attacked_fraction", "action_change_rate", "seconds")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the sweep, write the CSV and plot and print the table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defenses", default="dense,sap-100", help="comma-separated")
    parser.add_argument("--attack", default="pgd-10-eot",
                        help="the attack to time (timed- is added); -eot for SAP")  # fmt: skip
    parser.add_argument("--thresholds", type=floats, default=[0.0, 0.02, 0.04, 0.06, 0.1, 0.15],
                        help="preference thresholds, >= 0")  # fmt: skip
    parser.add_argument("--budgets", type=floats, default=[1.0],
                        help="largest fractions of steps attacked, in (0, 1]; each with each "
                        "threshold")  # fmt: skip
    add_atari_args(parser, work="runs/timed-sweep", out="results/rl/timed-sweep")
    args = parser.parse_args(argv)

    from sap_rl.attacks import parse_attack
    from sap_rl.defenses import parse_defense
    from sap_rl.errors import UserError
    from sap_rl.rl.evaluate import evaluate

    name = args.attack if args.attack.startswith("timed-") else f"timed-{args.attack}"
    try:
        attack = parse_attack(name)
        defenses = [parse_defense(d) for d in args.defenses.split(",") if d.strip()]
    except UserError as err:
        parser.error(str(err))
    if not defenses or not args.thresholds or not args.budgets:
        parser.error("--defenses, --thresholds and --budgets need at least one value each")
    if not attack.eot and not attack.transfer and any(d.stochastic for d in defenses):
        # Without EOT a stochastic defense is credited with its gradient noise.
        parser.error(f"--attack {args.attack!r} has no -eot suffix, needed for a stochastic "
                     "defense (e.g. pgd-10-eot; against dense it costs no more)")  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = atari_base(args, defenses=[d.name for d in defenses], attacks=[attack.name])
    settings = [(t, b) for t in sorted(set(args.thresholds)) for b in sorted(set(args.budgets))]
    # Every config first: a bad threshold or budget is an error before any game is played.
    configs = {(t, b): atari_config(parser, base, timed_threshold=t, timed_budget=b)
               for t, b in settings}  # fmt: skip

    rows: list[dict[str, Any]] = []
    for (t, b), config in configs.items():
        work = args.work / f"threshold-{t:g}-budget-{b:g}"
        evaluate(config, work, progress=False)
        for d in defenses:
            cell = atari_cell(work, d.name, attack.name, args.eps)
            rows.append(cell_row(cell, defense=d.name, attack=attack.name, eps=args.eps,
                                 threshold=t, budget=b))  # fmt: skip
            print(f"{d.name}, threshold {t:g}, budget {b:g}: mean reward {rows[-1]['mean']:.1f}, "
                  f"attacked fraction {rows[-1]['attacked_fraction']:.3f}", flush=True)  # fmt: skip
    # Clean cells do not depend on the threshold (no attack runs): the first folder's stands.
    first = args.work / f"threshold-{settings[0][0]:g}-budget-{settings[0][1]:g}"
    for d in defenses:
        clean = cell_row(atari_cell(first, d.name, None, 0.0), defense=d.name, attack="clean",
                         eps=0.0)  # fmt: skip
        # Nothing attacked; the action-change rate is not measured on clean cells (a stochastic
        # defense's would not be 0: its clean and acting passes are different draws).
        rows.append({**clean, "attacked_fraction": 0.0, "action_change_rate": ""})
    write_rows(args.out / "timed_sweep.csv", COLUMNS, rows)

    print(f"\n{args.agent}: {attack.name}, eps {args.eps:g}, {rows[0]['n']} games:")
    print(markdown_table(rows, [("defense", "defense", ""), ("attack", "attack", ""),
                                ("threshold", "threshold", "g"),
                                ("budget", "budget", "g"), ("mean", "mean", ".1f"),
                                ("sem", "sem", ".1f"),
                                ("attacked fraction", "attacked_fraction", ".3f"),
                                ("action change", "action_change_rate", ".3f"),
                                ("seconds", "seconds", "")]))  # fmt: skip
    if not args.no_plot:
        series = {}
        for d in defenses:
            points = sorted((r for r in rows if r["defense"] == d.name),
                            key=lambda r: r["attacked_fraction"])  # fmt: skip
            series[d.name] = ([r["attacked_fraction"] for r in points],
                              [r["mean"] for r in points], [r["sem"] for r in points])  # fmt: skip
        errorbar_plot(args.out / "timed_sweep.png", series, xlabel="fraction of steps attacked",
                      ylabel="mean reward",
                      title=f"{args.agent}: {attack.name}, eps {args.eps:g}")  # fmt: skip
    print(f"wrote {args.out / 'timed_sweep.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
