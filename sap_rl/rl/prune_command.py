"""``sap-rl prune``: HARP on an agent by robust distillation (:mod:`sap_rl.rl.prune`).

Example (shell)::

    sap-rl prune --agent agents/roadrunner-ddqn --sparsity 0.9 --out runs/roadrunner-harp-90

Heavy imports (torch, gymnasium) happen inside the handler.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sap_rl.cli_args import positive_float, positive_int
from sap_rl.errors import UserError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``sap-rl prune`` to ``subparsers``."""
    from sap_rl.pruning.cli import add_harp_arguments, add_resume_arguments

    parser = subparsers.add_parser(
        "prune",
        help="prune an agent with HARP (robust distillation on its own states)",
        description=(
            "Play the agent (seeded) to collect frames, then prune its Q-network with HARP so "
            "that it keeps the dense agent's greedy action on PGD-perturbed frames; writes an "
            "agent folder (pruned weights are zeros, masks stored beside them) whose card says "
            "what it was pruned from, how, and its kept parameters and FLOPs."
        ),
    )
    parser.add_argument("--agent", type=Path, required=True, help="agent folder to prune")
    add_harp_arguments(parser)
    parser.add_argument("--config", type=Path, help="YAML pruning config (flags override it)")
    parser.add_argument("--frames", type=positive_int, help="states to collect (default 4000)")
    parser.add_argument(
        "--eps", type=positive_float, help="PGD budget in pixel levels while pruning (default 1)"
    )
    parser.add_argument(
        "--out", type=Path, help="pruned agent folder (default: runs/<agent>-harp-<sparsity>)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    add_resume_arguments(parser)
    parser.set_defaults(func=_prune)


def _prune(args: argparse.Namespace) -> int:
    from sap_rl.config import load_yaml
    from sap_rl.pruning import HarpStopped
    from sap_rl.pruning.cli import harp_overrides, run_stoppable, stopped_message, time_limit
    from sap_rl.rl.prune import agent_prune_config, prune_agent

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    data = load_yaml(args.config) if args.config else {}
    if not isinstance(data.setdefault("harp", {}), dict):
        raise UserError(f"{args.config}: the 'harp' section must be a mapping")
    overrides = harp_overrides(args)
    if "seed" in overrides:
        data["seed"] = overrides.pop("seed")
    data["harp"].update(overrides)
    if args.eps is not None:
        data["harp"]["eps"] = args.eps
    if args.frames is not None:
        data["frames"] = args.frames
    config = agent_prune_config(data)
    out = args.out or Path("runs") / f"{args.agent.resolve().name}-harp-{config.harp.sparsity:g}"
    started = time.perf_counter()
    try:
        card = run_stoppable(out, lambda: prune_agent(
            args.agent, config, out, device=args.device, quiet=args.quiet, resume=args.resume,
            stop=time_limit(args.time_limit)))  # fmt: skip
    except HarpStopped as stopped:
        print(stopped_message(out, stopped.epochs_done, stopped.epochs, "time limit reached"))
        return 0
    info = card.pruning
    agree = info["distillation"]
    print(
        f"{out}: {card.game} agent pruned to sparsity {info['achieved_sparsity']:.4f} "
        f"({info['kept_weights']} of {info['prunable_weights']} weights); held-out action "
        f"agreement with {info['pruned_from']}: clean {agree['heldout_agreement_clean']:.3f}, "
        f"PGD eps {config.harp.eps:g} {agree['heldout_agreement_pgd']:.3f} "
        f"({time.perf_counter() - started:.0f} s); measure its score with: sap-rl score {out} "
        "--write"
    )
    return 0
