"""``sap-rl evaluate``: relative reward of a trained agent under attack, per defense.

Settings come from the built-in defaults, then ``--config FILE`` (an
:class:`~sap_rl.rl.eval_config.AtariEvalConfig` YAML,
e.g. ``configs/eval/default.yaml``), then the flags given on the command line. The work is done by
:func:`sap_rl.rl.evaluate.evaluate`; this module parses, runs and prints the summary table.

Example::

    sap-rl evaluate --agent agents/krull-ddqn --eps 0,1,2,4,8 --defense dense,sap-100 --attack fgsm
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from sap_rl.attacks.names import ATTACK_NAMES_HELP
from sap_rl.errors import UserError

_EXAMPLES = """\
examples:
  sap-rl evaluate                                   # best shipped agent, default grid
  sap-rl evaluate --agent krull-ddqn --eps 0,1,2,4,8 --defense dense,sap-100 --attack fgsm
  sap-rl evaluate --agent agents/kungfumaster-ddqn --attack fgsm-eot,pgd-10-eot --episodes 30
  sap-rl evaluate --config configs/eval/full.yaml --out runs/roadrunner-full
  sap-rl evaluate --agent roadrunner-ddqn --config configs/eval/study.yaml --workers 2
  RAY_ADDRESS=head:6379 sap-rl evaluate --agent roadrunner-ddqn --backend ray --n-envs 1
"""


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="relative reward of an agent under attack, per defense",
        description=(
            "Play matched whole games for every (defense, attack, eps) cell and report how much\n"
            "reward survives (episodes.csv, summary.csv/json, relative_reward.png)."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--agent", help="agent folder or name under agents/ (default: the shipped agent with the "
        "best human-normalized clean score)")  # fmt: skip
    add("--game", help="check that the agent was trained on this game")
    add("--config", metavar="FILE", help="YAML config (configs/eval/*.yaml); flags override it")
    add("--defense", metavar="LIST", help="comma-separated: dense, sap-<k>[-fast], dropout-<p>, "
        "noise-<sigma> (default: dense,sap-100)")  # fmt: skip
    add("--attack", metavar="LIST", help=f"comma-separated: {ATTACK_NAMES_HELP} (default: fgsm)")
    add("--eps", metavar="LIST", help="budgets in grey levels of the 0-255 frames; 0 is always "
        "added (default: 0,1,2,4,8)")  # fmt: skip
    add("--episodes", type=int, metavar="N", help="whole games per cell (default: 4)")
    add("--n-envs", type=int, metavar="N", help="parallel environments (default: 4)")
    add("--seed", type=int, metavar="S", help="game g of every cell uses env seed S+g (default 0)")
    add("--eot-samples", type=int, metavar="N", help="draws per -eot gradient (default: 16)")
    add("--action-samples", type=int, metavar="N",
        help="average Q-values over N draws of a stochastic defense (default: 1 draw)")  # fmt: skip
    add("--perturb", choices=["stack", "last", "online"],
        help="stack: rewrite all 4 stacked frames every step (default); last: only the "
        "newest, clean again in later stacks; online: each frame once, when emitted, kept so "
        "later")  # fmt: skip
    add("--epsilon", type=float, metavar="P", help="random-action probability (default: 0)")
    add("--max-steps", type=int, metavar="N", help="cap games at about N agent steps "
        "(default: the env's 27,000)")  # fmt: skip
    add("--random-episodes", type=int, metavar="N",
        help="games for the random-policy score if the card has none (default: 10)")  # fmt: skip
    add("--device", help="auto (default), cpu, cuda")
    add("--threads", type=int, metavar="N",
        help="CPU threads of torch and SAP (default: as is; 1 is best on busy CPUs)")  # fmt: skip
    add(
        "--backend",
        choices=["local", "ray"],
        help="where units of games run: this machine "
        "(default) or a Ray cluster (RAY_ADDRESS, else a local one; pip install 'sap-rl[ray]')",
    )
    add("--workers", type=int, metavar="N", help="play N units (n-envs games each) at a time, in "
        "N processes or Ray actors; changes only the speed (default: 1 locally, every CPU of a "
        "Ray cluster)")  # fmt: skip
    add("--env-backend", choices=["gymnasium", "ale_vector"],
        help="what runs the games: gymnasium wrappers (default, the reference) or ale-py's "
        "C++ AtariVectorEnv (same pixels and games)")  # fmt: skip
    add("--time-limit", type=float, metavar="MINUTES",
        help="start no new unit after MINUTES; the summary covers the finished cells and "
        "rerunning the same command plays the rest")  # fmt: skip
    add("--checkpoint-every", type=float, metavar="SECONDS",
        help="a unit's games are checkpointed this often, and on Ctrl-C or SIGTERM, so a "
        "stopped run continues inside its units (default: 300; local backend)")  # fmt: skip
    add("--out", metavar="DIR", help="output folder (default: runs/evaluate/<agent>)")
    add("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _list(text: str, flag: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"{flag} needs a comma-separated list, got {text!r}")
    return items


def _floats(text: str, flag: str) -> list[float]:
    values = []
    for item in _list(text, flag):
        try:
            values.append(float(item))
        except ValueError:
            raise UserError(f"{flag}: {item!r} is not a number") from None
    return values


_PLAIN_KEYS = (
    "agent", "game", "episodes", "n_envs", "seed", "eot_samples", "action_samples", "perturb",
    "epsilon", "max_steps", "random_episodes", "device", "threads", "backend", "workers",
    "env_backend", "checkpoint_every",
)  # fmt: skip


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~sap_rl.rl.eval_config.AtariEvalConfig` keys given as flags (unset: omitted)."""
    given: dict[str, Any] = {}
    if args.defense is not None:
        given["defenses"] = _list(args.defense, "--defense")
    if args.attack is not None:
        given["attacks"] = _list(args.attack, "--attack")
    if args.eps is not None:
        given["eps"] = _floats(args.eps, "--eps")
    for key in _PLAIN_KEYS:
        value = getattr(args, key)
        if value is not None:
            given[key] = value
    return given


def run(args: argparse.Namespace) -> int:
    """Handler of ``sap-rl evaluate``."""
    from sap_rl.config import from_dict, load_config
    from sap_rl.rl.eval_config import AtariEvalConfig
    from sap_rl.rl.evaluate import evaluate
    from sap_rl.sanity import warning_lines

    overrides = overrides_from_args(args)
    if args.config:
        config = load_config(AtariEvalConfig, args.config, overrides)
    else:
        config = from_dict(AtariEvalConfig, overrides)
    limit = args.time_limit
    if limit is not None and (not math.isfinite(limit) or limit <= 0):
        raise UserError(f"--time-limit must be a positive number of minutes, got {limit}")
    result = evaluate(config, args.out, progress=not args.quiet,
                      time_limit_s=60.0 * limit if limit else 0.0)  # fmt: skip
    print(format_table(result.rows))
    skipped = f", {result.cells_skipped} reused" if result.cells_skipped else ""
    print(f"{result.cells_played} cells played{skipped}; results in {result.out}")
    if result.cells_missing:
        print(f"time limit reached: {len(result.cells_missing)} cells not played; "
              "rerun the same command to play them")  # fmt: skip
    for line in warning_lines(result.meta.get("checks", [])):  # gradient-masking flags, last
        print(line, file=sys.stderr)
    return 0


def format_table(rows: Any) -> str:
    """The summary rows as an aligned text table.

    Example:
        >>> from sap_rl.report import SummaryRow
        >>> print(format_table([SummaryRow("dense", "fgsm", 0.0, 2, 20.0, 1.0, 0.7, 1.0, 1.0)]))
        defense  attack  eps  n   mean   std   sem  relative  normalized
        dense    fgsm      0  2  20.00  1.00  0.70     1.000       1.000
    """
    header = ("defense", "attack", "eps", "n", "mean", "std", "sem", "relative", "normalized")
    body = [
        (r.defense, r.attack, f"{r.eps:g}", str(r.n), f"{r.mean:.2f}", f"{r.std:.2f}",
         f"{r.sem:.2f}", _fmt(r.relative), _fmt(r.normalized))
        for r in rows
    ]  # fmt: skip
    widths = [max([len(h), *(len(row[i]) for row in body)]) for i, h in enumerate(header)]
    left = {0, 1}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(row) for row in body)])


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"
