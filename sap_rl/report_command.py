"""``sap-rl report``: redraw the plots of finished evaluations from their summary files.

Example::

    sap-rl report results/rl/roadrunner-ddqn results/vision/digits-dense
"""

from __future__ import annotations

import argparse
from typing import Any

_EXAMPLES = """\
examples:
  sap-rl report results/rl/roadrunner-ddqn          # relative_reward.png from summary.csv/json
  sap-rl report results/rl/* results/vision/digits-*
  sap-rl report --markdown results/rl/krull-ddqn    # the README's table, printed
  sap-rl report --differences runs/evaluate/krull  # each defense minus dense, bootstrap 95% CIs
  sap-rl report --literature results/rl/roadrunner-ddqn  # beside SA-DQN's and RADIAL's scores
"""


def register(subparsers: Any) -> None:
    """Add the ``report`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "report",
        help="redraw the plot of finished evaluations from their summary files",
        description=(
            "Redraw relative_reward.png (sap-rl evaluate) or accuracy.png (sap-rl vision\n"
            "evaluate) in each DIR from its summary.csv and summary.json; nothing is played."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="an evaluation's --out folder")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print each folder's table of mean scores in Markdown instead of redrawing plots",
    )
    parser.add_argument(
        "--differences",
        action="store_true",
        help="print each defense's mean difference to dense per attack and eps over the matched "
        "games or images, with its paired bootstrap 95%% CI (summary.json)",
    )
    parser.add_argument(
        "--literature",
        action="store_true",
        help="print one Markdown table of all folders' PGD scores beside SA-DQN's and "
        "RADIAL-DQN's published ones (Pong, Freeway, BankHeist, RoadRunner)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Redraw every folder's plot; a folder without summary files is a one-line error."""
    from pathlib import Path

    from sap_rl.report import folder_markdown, read_differences, replot
    from sap_rl.rl.literature import literature_table
    from sap_rl.stats import differences_table

    if args.literature:
        print(literature_table(args.dirs))
        return 0
    for folder in args.dirs:
        if args.differences:
            diffs, vision = read_differences(Path(folder))
            print(differences_table(diffs, digits=3 if vision else 1))
        elif args.markdown:
            print(folder_markdown(Path(folder)))
        else:
            print(f"wrote {replot(folder)}")
    return 0
