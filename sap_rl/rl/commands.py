"""``sap-rl train``, ``score`` and ``agents``; ``evaluate`` is in :mod:`sap_rl.rl.evaluate_command`.

Heavy imports (torch, gymnasium, stable-baselines3) happen inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sap_rl.cli_args import non_negative_int, positive_float, positive_int
from sap_rl.errors import UserError
from sap_rl.rl import evaluate_command, prune_command


def register(subparsers: Any) -> None:
    """Add the RL sub-commands to ``subparsers``."""
    _register_train(subparsers)
    _register_score(subparsers)
    _register_agents(subparsers)
    evaluate_command.register(subparsers)
    prune_command.register(subparsers)


def _register_train(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a Double DQN Atari agent and export an agent folder",
        description=(
            "Train a Double DQN agent on an Atari game (ALE, standard DQN preprocessing) with "
            "periodic whole-game evaluation and checkpoints; writes OUT/config.yaml, "
            "OUT/progress.csv, OUT/eval.csv, OUT/checkpoint/ and OUT/agent/ "
            "(model.safetensors + card.json). A sweep (several games or seeds, or --backend/"
            "--workers) trains one such run per game and seed in OUT/<game>-ddqn-<seed>, on "
            "this machine or a Ray cluster, and brings every agent folder back to this machine."
        ),
    )
    parser.add_argument(
        "--game",
        help="Atari game, e.g. Pong (case-insensitive); a list (Pong,Breakout) is a sweep",
    )
    parser.add_argument(
        "--config",
        help="YAML config file or preset name in configs/atari (ddqn, ddqn_cpu); default: ddqn",
    )
    parser.add_argument("--timesteps", type=positive_int, help="total environment steps")
    parser.add_argument(
        "--seed", type=_seeds, help="random seed (default: config); a list (0,1,2) is a sweep"
    )
    parser.add_argument(
        "--out",
        help="run folder (default: runs/<game>-ddqn-<seed>); for a sweep, the folder that holds "
        "its runs (default: runs)",
    )
    parser.add_argument(
        "--device", help="auto, cpu, cuda or cuda:N (default: the config's, normally auto)"
    )
    parser.add_argument(
        "--env-backend",
        choices=["gymnasium", "ale_vector"],
        help="what runs the games (config env.backend): gymnasium wrappers (default) or ale-py's "
        "C++ AtariVectorEnv (same pixels and games)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (its config.yaml is reused; "
        "--timesteps may raise the total)",
    )
    parser.add_argument(
        "--time-limit",
        type=positive_float,
        metavar="MINUTES",
        help="stop learning after MINUTES of wall-clock time and finish the run as usual "
        "(final evaluation, agent folder); --resume continues it",
    )
    parser.add_argument(
        "--backend",
        choices=["local", "ray"],
        help="sweep: where runs train, this machine (default) or a Ray cluster (RAY_ADDRESS, "
        "else a local one; pip install 'sap-rl[ray]')",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="sweep: train N runs at a time, in N processes or Ray actors (default: 1 locally, "
        "every CPU of a Ray cluster)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_train)


def _seeds(text: str) -> list[int]:
    """``--seed``'s type: one seed or a comma-separated list, each an integer >= 0."""
    return [non_negative_int(item.strip()) for item in text.split(",")]


def _train(args: argparse.Namespace) -> int:
    from sap_rl.rl.games import resolve_game
    from sap_rl.rl.sweep import resumed_config
    from sap_rl.rl.train import default_out, train
    from sap_rl.rl.train_config import load_train_config

    overrides: dict[str, Any] = {}
    if args.timesteps is not None:
        overrides["timesteps"] = args.timesteps
    if args.device is not None:
        overrides["device"] = args.device
    if args.no_progress:
        overrides["progress_bar"] = False
    if args.env_backend is not None:
        overrides["env"] = {"backend": args.env_backend}
    games = [g.strip() for g in args.game.split(",")] if args.game is not None else None
    seeds: list[int] | None = args.seed
    time_limit_s = 60.0 * args.time_limit if args.time_limit else 0.0
    if (
        (games is not None and len(games) > 1)
        or (seeds is not None and len(seeds) > 1)
        or (args.backend is not None or args.workers is not None)
    ):
        return _sweep(args, games, seeds, overrides, time_limit_s)
    seed = seeds[0] if seeds else None

    if args.resume:
        if args.out is None:
            raise UserError("--resume needs --out (the run folder to continue)")
        if args.config is not None:
            raise UserError("--resume reuses OUT/config.yaml; do not pass --config")
        game, cfg = resumed_config(args.out, overrides, game=args.game, seed=seed)
        out = Path(args.out)
    else:
        if args.game is None:
            raise UserError("--game is required, e.g. sap-rl train --game Pong")
        game = resolve_game(args.game).name
        if seed is not None:
            overrides["seed"] = seed
        cfg = load_train_config(args.config, game=game, overrides=overrides)
        out = Path(args.out) if args.out else default_out(game, cfg.seed, cfg.algorithm)

    result = train(game, cfg, out=out, resume=args.resume, time_limit_s=time_limit_s)
    card = result.card
    print(f"agent: {result.agent_dir}")
    print(
        f"{card.game}: {card.timesteps} steps in {result.wall_time_s / 60:.1f} min; "
        f"clean score {card.clean_score.mean:.2f} +- {card.clean_score.std:.2f} over "
        f"{card.clean_score.episodes} games (random policy {card.random_score:.2f})"
    )
    return 0


def _sweep(
    args: argparse.Namespace,
    games: list[str] | None,
    seeds: list[int] | None,
    overrides: dict[str, Any],
    time_limit_s: float,
) -> int:
    """``sap-rl train`` over several games and seeds (:mod:`sap_rl.rl.sweep`)."""
    from sap_rl.rl.sweep import plan_sweep, run_sweep
    from sap_rl.rl.train_config import load_train_config

    if games is None:
        raise UserError("--game is required, e.g. sap-rl train --game Pong,Breakout --seed 0,1")
    if seeds is None:
        seeds = [load_train_config(args.config, game=games[0], overrides=overrides).seed]
    out = args.out if args.out is not None else "runs"
    runs = plan_sweep(games, seeds, config=args.config, overrides=overrides, out=out,
                      resume=args.resume)  # fmt: skip
    done = run_sweep(runs, out, backend=args.backend or "local", workers=args.workers,
                     time_limit_s=time_limit_s, progress=not args.no_progress)  # fmt: skip
    for name, summary in done.items():
        clean = summary["clean_score"]
        print(
            f"{name}: {summary['timesteps']} steps, clean score {clean['mean']:.2f} +- "
            f"{clean['std']:.2f} over {clean['episodes']} games "
            f"(random policy {summary['random_score']:.2f}); agent: {summary['agent']}"
        )
    return 0


def _register_score(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "score",
        help="re-score an agent on more whole games (updates its card only with --write)",
        description=(
            "Play EPISODES whole games (greedy, unclipped rewards, the card's preprocessing and "
            "evaluation seeds) with the agent and with a seeded random policy on the same games, "
            "print both scores and what would change in AGENT/card.json (clean mean, std and "
            "games, random score, human-normalized score). The card is replaced only with "
            "--write, atomically, and never by a score over fewer games than it has unless "
            "--force is also given. The weights are not touched."
        ),
    )
    parser.add_argument("agent", help="agent folder (model.safetensors + card.json)")
    parser.add_argument(
        "--episodes", type=positive_int, default=30, help="whole games to play (default: 30)"
    )
    parser.add_argument(
        "--n-envs", type=positive_int, default=5, help="games played in parallel (default: 5)"
    )
    parser.add_argument(
        "--write", action="store_true", help="replace AGENT/card.json with the measured scores"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --write: replace the card even if its score is over more games than EPISODES",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_score)


def _score(args: argparse.Namespace) -> int:
    from sap_rl.rl.score import card_changes, score_agent

    if args.force and not args.write:
        raise UserError("--force only applies with --write")
    result = score_agent(
        args.agent,
        episodes=args.episodes,
        n_envs=args.n_envs,
        write=args.write,
        force=args.force,
        progress=not args.no_progress,
    )
    card = result.after
    line = (
        f"{card.name} ({card.game}): {card.clean_score.mean:.2f} +- {card.clean_score.std:.2f} "
        f"over {card.clean_score.episodes} games; random policy {card.random_score:.2f}"
    )
    if card.human_normalized is not None:
        line += f"; human-normalized {card.human_normalized:.2f}"
    print(line)
    changes = card_changes(result.before, result.after)
    if result.written:
        print(f"wrote {result.card_path}:")
    else:
        print(f"{result.card_path} not written; with --write it would change:")
    for change in changes:
        print(f"  {change}")
    had = result.before.clean_score.episodes
    if not result.written and args.episodes < had:
        print(f"(its score is over {had} games: --write needs --force to replace it)")
    return 0


def _register_agents(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agents",
        help="list agent folders with their clean scores",
        description="List agent folders (card.json + model.safetensors) under DIR.",
    )
    parser.add_argument("dir", nargs="?", default="agents", help="folder to scan (default: agents)")
    parser.set_defaults(func=_agents)


def _agents(args: argparse.Namespace) -> int:
    from sap_rl.rl.agent import CARD_FILE, read_card

    root = Path(args.dir)
    if not root.is_dir():
        raise UserError(f"no agent folder {root}/ (train one with: sap-rl train --game Pong)")
    cards = sorted(root.rglob(CARD_FILE))
    if not cards:
        print(f"no agents in {root}/")
        return 0
    header = f"{'agent':32s} {'game':16s} {'steps':>10s} {'clean score':>18s} {'games':>5s}"
    print(f"{header} {'random':>9s} {'human-norm':>10s}")
    for path in cards:
        folder = path.parent.relative_to(root).as_posix()
        # One bad card (not UTF-8, not JSON, an unknown game) is a row, not the end of the list.
        try:
            card = read_card(path)
            norm = card.with_reference_scores().human_normalized
        except UserError as err:
            print(f"{folder:32s} (unreadable card: {err})")
            continue
        score = f"{card.clean_score.mean:.1f} +- {card.clean_score.std:.1f}"
        rand = "-" if card.random_score is None else f"{card.random_score:.1f}"
        norm_text = "-" if norm is None else f"{norm:.2f}"
        print(
            f"{folder:32s} {card.game:16s} {card.timesteps:>10d} {score:>18s} "
            f"{card.clean_score.episodes:>5d} {rand:>9s} {norm_text:>10s}"
        )
    return 0
