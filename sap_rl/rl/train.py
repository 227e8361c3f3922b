"""Train a Double DQN Atari agent and export it as an agent folder (``sap-rl train``).

Reads top to bottom like a CleanRL script: resolve the config, seed everything, build the
environments, build (or resume) the model, learn with periodic whole-game evaluation and
checkpoints, then evaluate the final network and the random policy on the same seeded games and
write the agent folder.

Output folder (``--out``, default ``runs/<game>-ddqn-<seed>``)::

    config.yaml          resolved TrainConfig (+ game), written before training starts
    progress.csv         SB3 logger output (rollout/, train/, eval/ keys; appended on resume)
    eval.csv             periodic evaluation: timesteps, wall_time_s, mean, std, episodes, ...
    checkpoint/          latest checkpoint for --resume (sap_rl.rl.checkpoint; never pickle):
        policy.safetensors, optimizer.safetensors, replay.npz, state.json
    agent/               model.safetensors + card.json (docs/training.md, "What you get")

Example:
    >>> from sap_rl.rl.train_config import TrainConfig
    >>> cfg = TrainConfig(timesteps=200)  # doctest: +SKIP
    >>> result = train("Breakout", cfg, out="runs/demo")  # doctest: +SKIP
    >>> result.agent_dir  # doctest: +SKIP
    PosixPath('runs/demo/agent')
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import CSVOutputFormat, Logger
from stable_baselines3.common.utils import set_random_seed

from sap_rl.config import from_dict, load_yaml, to_dict
from sap_rl.devices import resolve_device
from sap_rl.errors import UserError
from sap_rl.io import atomic_write_text, check_out_dir
from sap_rl.lock import output_lock
from sap_rl.rl.agent import AgentCard, q_network_from_sb3, save_agent, utc_now
from sap_rl.rl.checkpoint import (
    CHECKPOINT_DIR,
    RunState,
    load_checkpoint_state,
    restore_checkpoint,
    save_checkpoint,
)
from sap_rl.rl.dqn import DoubleDQN, describe_optimizer
from sap_rl.rl.envs import make_vec_env
from sap_rl.rl.games import Game, resolve_game
from sap_rl.rl.play import game_progress
from sap_rl.rl.replay import FrameReplayBuffer
from sap_rl.rl.scoring import SCORING, agent_games, eval_seed, random_score, score_of
from sap_rl.rl.train_config import TrainConfig
from sap_rl.signals import sigterm_as_interrupt

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
AGENT_DIR = "agent"
EVAL_COLUMNS = ["timesteps", "wall_time_s", "mean", "std", "min", "max", "episodes", "mean_length"]


@dataclass
class TrainResult:
    """What a finished run produced."""

    out: Path
    agent_dir: Path
    card: AgentCard
    timesteps: int
    wall_time_s: float


def default_out(game: str, seed: int, algorithm: str = "DDQN") -> Path:
    """``runs/<game>-<algo>-<seed>`` with a lower-case game name.

    Example:
        >>> default_out("SpaceInvaders", 3).as_posix()
        'runs/spaceinvaders-ddqn-3'
    """
    return Path("runs") / f"{resolve_game(game).name.lower()}-{algorithm.lower()}-{seed}"


# --------------------------------------------------------------------------------------------
# Small pieces used by `train` (callbacks, checkpoint files, evaluation).
# --------------------------------------------------------------------------------------------


class _AppendingCSV(CSVOutputFormat):
    """SB3's CSV logger output, but continuing an existing file (for ``--resume``)."""

    def __init__(self, filename: str) -> None:
        path = Path(filename)
        if path.is_file() and path.stat().st_size > 0:
            self.file = open(path, "r+")  # noqa: SIM115 - closed by the logger
            header = self.file.readline().rstrip("\n")
            self.keys = header.split(",") if header else []
            self.file.seek(0, os.SEEK_END)
            self.separator = ","
            self.quotechar = '"'
        else:
            super().__init__(filename)


class _Progress(BaseCallback):
    """A tqdm progress bar over environment steps with the latest evaluation score.

    (SB3's own ``progress_bar=True`` needs the optional ``rich`` package; this one only tqdm.)
    """

    def __init__(self, total: int, enabled: bool) -> None:
        super().__init__()
        self.total = total
        self.enabled = enabled
        self.bar: Any = None

    def _on_training_start(self) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total, initial=self.model.num_timesteps, unit="step", dynamic_ncols=True
            )

    def _on_step(self) -> bool:
        if self.bar is not None:
            self.bar.update(self.num_timesteps - self.bar.n)
        return True

    def set_score(self, score: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(eval=f"{score:.1f}")

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _EvalAndCheckpoint(BaseCallback):
    """Every ``eval_freq`` steps: play whole games; every ``checkpoint_freq``: save a checkpoint."""

    def __init__(
        self,
        *,
        game: Game,
        cfg: TrainConfig,
        out: Path,
        state: RunState,
        clock_start: float,
        progress: _Progress,
    ) -> None:
        super().__init__()
        self.game, self.cfg, self.out, self.state = game, cfg, out, state
        self.clock_start = clock_start
        self.base_wall_time = state.wall_time_s
        self.progress = progress
        self.next_eval = _next_multiple(state.timesteps, cfg.eval.freq)
        self.next_checkpoint = _next_multiple(state.timesteps, cfg.checkpoint_freq)

    def _dqn(self) -> DQN:
        assert isinstance(self.model, DQN)
        return self.model

    def wall_time(self) -> float:
        return self.base_wall_time + (time.perf_counter() - self.clock_start)

    def _on_step(self) -> bool:
        if self.next_eval and self.num_timesteps >= self.next_eval:
            self.next_eval = _next_multiple(self.num_timesteps, self.cfg.eval.freq)
            self.evaluate()
        if self.next_checkpoint and self.num_timesteps >= self.next_checkpoint:
            self.next_checkpoint = _next_multiple(self.num_timesteps, self.cfg.checkpoint_freq)
            self.checkpoint()
        return True

    def evaluate(self) -> dict[str, float]:
        games = agent_games(self._dqn().q_net, self.game, self.cfg, episodes=self.cfg.eval.episodes)
        score = score_of(games)
        rewards = [g.reward for g in games]
        row = {
            "timesteps": float(self.num_timesteps),
            "wall_time_s": round(self.wall_time(), 1),
            "mean": score.mean,
            "std": score.std,
            "min": float(min(rewards)),
            "max": float(max(rewards)),
            "episodes": float(score.episodes),
            "mean_length": float(np.mean([g.length for g in games])),
        }
        self.state.evaluations.append(row)
        _write_eval_csv(self.out, self.state.evaluations)
        self.logger.record("eval/mean_reward", row["mean"])
        self.logger.record("eval/std_reward", row["std"])
        self.logger.record("eval/mean_ep_length", row["mean_length"])
        self.progress.set_score(row["mean"])
        logger.info("eval at %d steps: %.2f +- %.2f", self.num_timesteps, row["mean"], row["std"])
        return row

    def checkpoint(self) -> None:
        self.state.timesteps = int(self.num_timesteps)
        save_checkpoint(self._dqn(), self.out, self.state, self.wall_time())


class _TimeLimit(BaseCallback):
    """Stop learning once this invocation has trained ``seconds`` (wall clock); 0 = no limit.

    The run then ends as if ``timesteps`` were reached: checkpoint, final evaluation, agent folder.
    """

    def __init__(self, seconds: float, clock_start: float) -> None:
        super().__init__()
        self.seconds, self.clock_start = seconds, clock_start
        self.hit = False

    def _on_step(self) -> bool:
        if self.seconds > 0 and time.perf_counter() - self.clock_start >= self.seconds:
            if not self.hit:
                logger.warning(
                    "time limit of %.0f s reached at %d steps; finishing the run",
                    self.seconds, self.num_timesteps,
                )  # fmt: skip
            self.hit = True
            return False
        return True


def _next_multiple(current: int, every: int) -> int:
    """The next multiple of ``every`` strictly above ``current`` (0 if ``every`` is 0)."""
    return 0 if every <= 0 else (current // every + 1) * every


def _write_eval_csv(out: Path, rows: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EVAL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: (int(v) if k in ("timesteps", "episodes") else v) for k, v in row.items()}
        )
    atomic_write_text(out / "eval.csv", buffer.getvalue())


def _build_model(game: Game, cfg: TrainConfig, env: Any, device: str) -> DQN:
    cls = DoubleDQN if cfg.algorithm == "DDQN" else DQN
    kwargs = cfg.dqn.sb3_kwargs()
    # Each frame stored once (0.75 GB per 100k transitions), n-step returns as SB3 computes them.
    kwargs["replay_buffer_kwargs"] = {"n_steps": cfg.dqn.n_steps, "gamma": cfg.dqn.gamma}
    if cls is DoubleDQN and not cfg.dqn.fast_kernels:
        # SB3's updates bit for bit: the multi-tensor Adam loop and NCHW convolutions.
        kwargs["policy_kwargs"]["optimizer_kwargs"]["foreach"] = True
        kwargs["channels_last"] = False
    return cls(
        "CnnPolicy",
        env,
        replay_buffer_class=FrameReplayBuffer,
        seed=cfg.seed,
        device=device,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# The training run.
# --------------------------------------------------------------------------------------------


def train(
    game: str,
    cfg: TrainConfig,
    *,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    time_limit_s: float = 0.0,
) -> TrainResult:
    """Train ``cfg.algorithm`` on ``game`` and write the run folder (see the module docstring).

    Args:
        game: game name (``"Pong"``; case-insensitive).
        cfg: resolved training configuration.
        out: run folder; default ``runs/<game>-ddqn-<seed>``.
        resume: continue from ``out/checkpoint`` (required if a checkpoint exists).
        time_limit_s: stop learning after this many seconds of this call (0: no limit) and
            finish the run as usual (final checkpoint, evaluation and agent folder); the card
            records the steps actually trained. ``--resume`` can continue it later.

    Raises:
        UserError: unknown game, existing checkpoint without ``resume``, ``resume`` without one,
            or another run writing into ``out`` (:func:`sap_rl.lock.output_lock`).
    """
    # 1. Resolve the game, the output folder and the configuration.
    resolved = resolve_game(game)
    out_dir = check_out_dir(
        Path(out) if out is not None else default_out(resolved.name, cfg.seed, cfg.algorithm)
    )
    device = str(resolve_device(cfg.device))  # validate before writing anything
    # One writer per run folder: a second run would overwrite this one's checkpoints. What the
    # folder holds is checked under the lock, so no other run changes it meanwhile.
    with output_lock(out_dir):
        return _train_in(resolved, cfg, out_dir, device, resume=resume, time_limit_s=time_limit_s)


def _train_in(
    resolved: Game,
    cfg: TrainConfig,
    out_dir: Path,
    device: str,
    *,
    resume: bool,
    time_limit_s: float,
) -> TrainResult:
    """:func:`train` in ``out_dir``, whose output lock the caller holds."""
    state = load_checkpoint_state(out_dir)
    if state is not None and not resume:
        raise UserError(
            f"{out_dir} already has a checkpoint at {state.timesteps} steps; "
            "pass --resume to continue it or choose another --out"
        )
    if resume and state is None:
        raise UserError(f"--resume: no checkpoint in {out_dir / CHECKPOINT_DIR}")
    state = state or RunState()
    # Learning is over once the checkpoint reaches --timesteps; a run interrupted during its final
    # evaluation has no agent for that checkpoint yet, and resuming it only finishes that part.
    learned = state.timesteps >= cfg.timesteps
    if learned and _agent_timesteps(out_dir) == state.timesteps:
        raise UserError(
            f"{out_dir}: the checkpoint is at {state.timesteps} steps, already >= --timesteps "
            f"{cfg.timesteps}; raise --timesteps to train further"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(out_dir, resolved.name, cfg)

    # 2. Seed everything; limit CPU threads if asked (shared machines).
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    set_random_seed(cfg.seed + state.timesteps)

    # 3. Training environments (episodic life, clipped rewards); a fresh seed stream on resume.
    env = make_vec_env(
        resolved,
        cfg.n_envs,
        seed=cfg.seed + state.timesteps,
        training=True,
        preprocessing=cfg.env,
        vec_env=cfg.vec_env,
    )

    # 4. The model, built from the config; on resume the checkpoint's weights, optimizer state,
    #    counters and replay buffer are loaded into it (no pickle: sap_rl.rl.checkpoint).
    model = _build_model(resolved, cfg, env, device)
    if state.timesteps > 0:
        try:
            restore_checkpoint(model, out_dir, state)
        except BaseException:
            env.close()
            raise
        logger.info("resuming %s from %d steps", out_dir, state.timesteps)
    model.set_logger(
        Logger(folder=str(out_dir), output_formats=[_AppendingCSV(str(out_dir / "progress.csv"))])
    )

    # 5. Learn, with a progress bar, periodic evaluation and checkpoints.
    clock = time.perf_counter()
    progress = _Progress(cfg.timesteps, cfg.progress_bar)
    periodic = _EvalAndCheckpoint(
        game=resolved, cfg=cfg, out=out_dir, state=state, clock_start=clock, progress=progress
    )
    limit = _TimeLimit(time_limit_s, clock)
    with sigterm_as_interrupt():
        try:
            if not learned:
                model.learn(
                    total_timesteps=cfg.timesteps - state.timesteps,
                    callback=CallbackList([progress, periodic, limit]),
                    reset_num_timesteps=state.timesteps == 0,
                    log_interval=10,
                )
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep the work done so far
            logger.warning("interrupted at %d steps; saving a checkpoint", model.num_timesteps)
            if threading.current_thread() is threading.main_thread():
                # a second SIGTERM must not cut the checkpoint short
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            save_checkpoint(model, out_dir, state, periodic.wall_time())
            raise
        finally:
            env.close()
    if not learned:
        model.logger.record("time/total_timesteps", model.num_timesteps)
        model.logger.dump(step=model.num_timesteps)  # flush the last evaluation into progress.csv
        save_checkpoint(model, out_dir, state, periodic.wall_time())
    wall_time = periodic.wall_time()

    # 6. Final evaluation of the last network and of a random policy on the same seeded games.
    q_net = q_network_from_sb3(model.policy.q_net).to(device)
    episodes = cfg.eval.final_episodes
    # Each phase plays minutes of whole games: report them game by game.
    with game_progress(episodes, "final games: agent", bar=cfg.progress_bar) as on_game:
        clean = score_of(agent_games(q_net, resolved, cfg, episodes=episodes, on_game=on_game))
    with game_progress(episodes, "final games: random policy", bar=cfg.progress_bar) as on_game:
        rand = random_score(resolved, cfg, episodes=episodes, on_game=on_game)
    logger.info("final score %.2f (random %.2f) over %d games", clean.mean, rand.mean, episodes)

    # 7. The agent folder: weights (safetensors) + card.
    card = AgentCard(
        name=out_dir.name,
        game=resolved.name,
        env_id=resolved.env_id,
        algorithm=cfg.algorithm,
        timesteps=int(model.num_timesteps),
        hyperparameters={
            **to_dict(cfg.dqn),
            "timesteps": cfg.timesteps,
            "n_envs": cfg.n_envs,
            "policy": "CnnPolicy (Nature CNN)",
            "optimizer": describe_optimizer(model.policy.optimizer),
        },
        wrappers=cfg.env.describe(resolved),
        clean_score=clean,
        random_score=rand.mean,
        trained_on=utc_now(),
        seed=cfg.seed,
        evaluation={
            "episodes": episodes,
            "policy": "greedy" if cfg.eval.epsilon == 0 else f"epsilon-greedy {cfg.eval.epsilon}",
            "epsilon": cfg.eval.epsilon,
            "seed": eval_seed(cfg),
            **SCORING,
            "n_envs": min(cfg.eval.n_envs, episodes),
            "random_policy_std": rand.std,
            "whole_games": True,
            "unclipped_rewards": True,
            "max_episode_frames": cfg.env.max_episode_frames,
            "wall_time_s": round(wall_time, 1),
            "device": device,
            "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}",
        },
    )
    agent_dir = out_dir / AGENT_DIR
    card = save_agent(agent_dir, q_net.cpu(), card.with_reference_scores())
    return TrainResult(
        out=out_dir, agent_dir=agent_dir, card=card, timesteps=card.timesteps, wall_time_s=wall_time
    )


def _agent_timesteps(out: Path) -> int | None:
    """Steps recorded in ``out/agent/card.json``, or ``None`` if there is no readable card."""
    try:
        card = json.loads((out / AGENT_DIR / "card.json").read_text(encoding="utf-8"))
        return int(card["timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_run_config(out: Path, game: str, cfg: TrainConfig) -> None:
    """Write the resolved configuration (and the game) to ``out/config.yaml``."""
    atomic_write_text(
        out / CONFIG_FILE, yaml.safe_dump({"game": game, **to_dict(cfg)}, sort_keys=False)
    )


def load_run_config(out: str | os.PathLike[str]) -> tuple[str, TrainConfig]:
    """Read ``config.yaml`` of a run folder back into ``(game, TrainConfig)`` (for ``--resume``)."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"--resume: {path} not found")
    data = load_yaml(path)
    game = data.pop("game", None)
    if not isinstance(game, str):
        raise UserError(f"{path}: missing 'game'")
    try:
        return game, from_dict(TrainConfig, data)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
