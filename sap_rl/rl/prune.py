"""Prune an Atari agent with HARP by robust distillation (``sap-rl prune``).

A Q-network has no labelled data set, so the objective is robust distillation on the agent's own
states:

1. play the dense agent (epsilon-greedy with a small epsilon for varied states, seeded games and
   exploration) and keep every ``every``-th stacked frame until ``frames`` are collected;
2. label each frame with the dense agent's greedy action on it (clean);
3. run :func:`sap_rl.pruning.harp_prune` with an adversarial objective (PGD-AT by default;
   TRADES and MART also work with actions as labels): the pruned network learns to keep the
   dense agent's greedy action, cross-entropy over its Q-values divided by a ``temperature``
   (policy distillation, Rusu et al. 2016), on PGD-perturbed frames (eps in pixel levels, like
   ``sap-rl evaluate --eps``). The Q-values of one state differ by little, so a softmax over
   raw Q-values is nearly uniform and its cross-entropy hardly separates the actions: at
   temperature 1 the pruned RoadRunner network fell back to one action; at 0.01 it learned;
4. measure agreement with the dense agent's actions on held-out frames (the last ``holdout``
   share), clean and under the same PGD attack;
5. write an agent folder (:func:`sap_rl.rl.agent.save_agent`): pruned weights are zeros, the masks
   are stored beside them, and the card's ``pruning`` section says what it was pruned from, how,
   and its kept parameters and FLOPs. Its ``clean_score`` is left unmeasured (0 games): measure it
   with ``sap-rl score DIR --write``.

After every epoch the run's checkpoint goes to ``checkpoint/`` in the output folder; ``resume``
(``--resume``) continues an interrupted run from it, bitwise as if it had never stopped. The
frames are not in the checkpoint: they are collected again (seeded games, the same frames; their
SHA-256 is part of the checkpoint's settings, so a run that would see other frames is refused).
The checkpoint is deleted once the pruned agent is written.

Example:
    >>> cfg = agent_prune_config({"frames": 64, "harp": {"sparsity": 0.8}})
    >>> cfg.harp.sparsity, cfg.harp.objective, cfg.harp.eps, cfg.frames
    (0.8, 'pgd', 1.0, 64)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sap_rl.config import deep_merge, from_dict, save_config, to_dict
from sap_rl.io import check_out_dir
from sap_rl.lock import output_lock
from sap_rl.pruning import EpochLog, HarpConfig, harp_prune, prunable_layers
from sap_rl.pruning.checkpoint import remove_checkpoint
from sap_rl.pruning.cli import CHECKPOINT_DIR, check_resume
from sap_rl.signals import sigterm_as_interrupt

__all__ = ["AgentPruneConfig", "agent_prune_config", "collect_frames", "prune_agent"]

logger = logging.getLogger(__name__)


def _default_harp() -> HarpConfig:
    # PGD-5 at eps 1 pixel level (the middle budget of the Atari study) with step 0.5. Adam at
    # the rates of DQN training, no weight decay: the Q-network was trained with Adam and has no
    # batch norm, and SGD at HARP's CIFAR rates (0.1, then 0.01) lost most of its actions.
    return HarpConfig(sparsity=0.9, prune_epochs=5, finetune_epochs=10, eps=1.0, steps=5,
                      step_size=0.5, optimizer="adam", lr=1e-3, finetune_lr=1e-4,
                      weight_decay=0.0)  # fmt: skip


@dataclass
class AgentPruneConfig:
    """Settings of ``sap-rl prune``; saved as ``prune.yaml`` beside the pruned agent.

    Attributes:
        frames: stacked frames (states) to collect by playing the dense agent.
        every: keep every k-th state (consecutive states are nearly identical).
        epsilon: exploration while collecting (labels are always the greedy action).
        n_envs: games played side by side while collecting.
        seed: seeds the games, the exploration and HARP (``harp.seed`` is set from it).
        batch_size: frames per minibatch.
        holdout: share of the frames (the last ones) kept out of training to measure agreement.
        temperature: the Q-values are divided by it before the cross-entropy (policy
            distillation; 0.01 as in Rusu et al. 2016). The saved agent's Q-values are not.
        harp: HARP's settings (the objective must be ``pgd``: cross-entropy to the dense
            agent's action on PGD frames).
    """

    frames: int = 4000
    every: int = 2
    epsilon: float = 0.05
    n_envs: int = 4
    seed: int = 0
    batch_size: int = 64
    holdout: float = 0.1
    temperature: float = 0.01
    harp: HarpConfig = field(default_factory=_default_harp)

    def __post_init__(self) -> None:
        if self.frames < 2 or self.every < 1 or self.n_envs < 1 or self.batch_size < 1:
            raise ValueError("frames must be >= 2; every, n_envs and batch_size >= 1")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.harp.objective != "pgd":
            raise ValueError(
                "agents are pruned by robust distillation, the pgd objective; "
                f"{self.harp.objective} needs class labels with a meaning beyond the action"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


def agent_prune_config(data: dict[str, Any] | None) -> AgentPruneConfig:
    """:class:`AgentPruneConfig` from YAML values laid over the defaults (the ``harp`` section
    too, so a partial one keeps the agent defaults such as eps 1 rather than HARP's CIFAR ones).

    Raises:
        UserError: an unknown key or a bad value (one line).
    """
    return from_dict(AgentPruneConfig, deep_merge(to_dict(AgentPruneConfig()), data or {}))


def collect_frames(
    q_net: torch.nn.Module,
    game: str,
    *,
    frames: int,
    every: int,
    epsilon: float,
    n_envs: int,
    seed: int,
    preprocessing: Any = None,
) -> torch.Tensor:
    """Play ``q_net`` epsilon-greedily and return ``frames`` stacked frames (uint8, NCHW).

    Games are seeded ``seed, seed + 1, ...`` (one per env) and the exploration by ``seed``, so
    the frames are the same on every run.
    """
    from sap_rl.rl.envs import make_vec_env
    from sap_rl.rl.play import greedy_policy

    venv = make_vec_env(game, n_envs, seed=seed, training=False, preprocessing=preprocessing)
    policy = greedy_policy(q_net, epsilon=epsilon, seed=seed)
    kept: list[np.ndarray] = []
    count, step = 0, 0
    try:
        obs = np.asarray(venv.reset())
        while count < frames:
            if step % every == 0:
                take = obs[: frames - count]
                kept.append(take.copy())
                count += take.shape[0]
            # rows are envs: env i explores with its own seeded stream, whatever the others do
            next_obs, _, _, _ = venv.step(policy(obs, range(n_envs)))
            obs = np.asarray(next_obs)
            step += 1
    finally:
        venv.close()
    return torch.from_numpy(np.concatenate(kept)[:frames])


def _greedy(q_net: torch.nn.Module, frames: torch.Tensor, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([q_net(frames[i : i + batch].float()).argmax(dim=1)
                          for i in range(0, frames.shape[0], batch)])  # fmt: skip


def _agreement(
    q_net: torch.nn.Module,
    frames: torch.Tensor,
    labels: torch.Tensor,
    harp: HarpConfig,
) -> tuple[float, float]:
    """Share of frames where ``q_net`` picks ``labels``: clean, and under PGD towards another."""
    from sap_rl.attacks import pgd

    if frames.shape[0] == 0:
        return float("nan"), float("nan")
    clean = float((_greedy(q_net, frames) == labels).float().mean())
    generator = torch.Generator().manual_seed(harp.seed)
    hits = 0
    for i in range(0, frames.shape[0], 128):
        x, y = frames[i : i + 128].float(), labels[i : i + 128]
        x_adv = pgd(q_net, x, harp.eps, steps=harp.steps, step_size=harp.step_size, target=y,
                    generator=generator)  # fmt: skip
        hits += int((_greedy(q_net, x_adv) == y).sum())
    return clean, hits / frames.shape[0]


def _sharpened(q_net: torch.nn.Module, temperature: float) -> torch.nn.Module:
    """A copy of ``q_net`` whose outputs are divided by ``temperature``.

    A forward hook rather than a wrapping module, so that the layer names (masks, ``exclude``
    patterns, the card's per-layer rates) stay those of the agent's network.
    """
    import copy

    sharp = copy.deepcopy(q_net)
    sharp.register_forward_hook(lambda _module, _inputs, out: out / temperature)
    return sharp


def prune_agent(
    agent_dir: str | os.PathLike[str],
    config: AgentPruneConfig,
    out_dir: str | os.PathLike[str],
    *,
    device: str = "cpu",
    quiet: bool = False,
    resume: bool = False,
    stop: Callable[[], bool] | None = None,
) -> Any:
    """Prune the agent in ``agent_dir`` into the agent folder ``out_dir``; returns its card.

    Args:
        agent_dir: the agent folder to prune.
        config: the settings.
        out_dir: the pruned agent folder (and ``checkpoint/`` while the run lasts).
        device: where to compute.
        quiet: no progress lines.
        resume: continue the checkpoint in ``out_dir`` (required if it has one).
        stop: asked after each epoch; ``True`` stops the run with
            :class:`~sap_rl.pruning.HarpStopped`, the checkpoint kept (a time limit).

    Raises:
        UserError: a bad agent folder, no prunable layer after ``harp.exclude``, a missing
            device, another run writing into ``out_dir``, a checkpoint there without ``resume``
            (or ``resume`` without one), all before anything is written; a checkpoint of other
            settings or other frames.
        HarpStopped: ``stop()`` returned ``True``.
    """
    from sap_rl.devices import resolve_device
    from sap_rl.rl.agent import AgentCard, Score, load_agent, save_agent
    from sap_rl.rl.envs import AtariPreprocessing

    out = check_out_dir(out_dir)
    q_net, card = load_agent(agent_dir)
    prunable_layers(q_net, config.harp.exclude)
    dev = resolve_device(device)
    fields = {f.name for f in dataclasses.fields(AtariPreprocessing)}
    preprocessing = from_dict(AtariPreprocessing,
                              {k: v for k, v in card.wrappers.items() if k in fields})  # fmt: skip
    harp = dataclasses.replace(config.harp, seed=config.seed)
    with output_lock(out):
        # On resume prune.yaml is the checkpoint's; rewritten only once harp_prune has found
        # the settings the same (a refused resume changes nothing).
        resuming = check_resume(out, resume) > 0
        if not resuming:
            save_config(config, out / "prune.yaml")
        frames = collect_frames(q_net, card.game, frames=config.frames, every=config.every,
                                epsilon=config.epsilon, n_envs=config.n_envs, seed=config.seed,
                                preprocessing=preprocessing)  # fmt: skip
        labels = _greedy(q_net, frames)
        n_train = max(1, frames.shape[0] - int(config.holdout * frames.shape[0]))
        train_x, train_y = frames[:n_train], labels[:n_train]

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            order = torch.randperm(n_train, generator=generator)
            for i in range(0, n_train, config.batch_size):
                index = order[i : i + config.batch_size]
                yield train_x[index].float(), train_y[index]

        def on_epoch(log: EpochLog) -> None:
            if not quiet:
                print(f"{log.phase} {log.epoch}: loss {log.loss:.3f}, action agreement under "
                      f"PGD {log.accuracy:.3f}, kept {log.kept:.4f}", file=sys.stderr)  # fmt: skip

        # What the batches depend on besides HARP's settings (the seed is harp.seed).
        key = {"distillation": {"frames": config.frames, "every": config.every,
                                "epsilon": config.epsilon, "n_envs": config.n_envs,
                                "batch_size": config.batch_size, "holdout": config.holdout,
                                "temperature": config.temperature,
                                "frames_sha256": _sha256(frames)}}  # fmt: skip
        with sigterm_as_interrupt():
            result = harp_prune(_sharpened(q_net, config.temperature), batches, harp, device=dev,
                                on_epoch=on_epoch, checkpoint=out / CHECKPOINT_DIR,
                                checkpoint_key=key, stop=stop)  # fmt: skip
        save_config(config, out / "prune.yaml")
        result.model._forward_hooks.clear()  # the copy's temperature hook; Q-values stay Q-values
        clean, robust = _agreement(result.model, frames[n_train:], labels[n_train:], harp)
        pruning: dict[str, Any] = {
            **result.card(harp, card.name),
            "method": "harp robust distillation",
            "source": {"name": card.name, "path": str(Path(agent_dir)), "sha256": card.sha256},
            "distillation": {
                "frames": int(frames.shape[0]), "train_frames": n_train, "every": config.every,
                "epsilon": config.epsilon, "seed": config.seed,
                "temperature": config.temperature,
                "loss": "cross-entropy of Q / temperature to the dense agent's greedy action on "
                        "PGD frames",
                "heldout_agreement_clean": clean, "heldout_agreement_pgd": robust,
            },
        }  # fmt: skip
        pruned = AgentCard(
            name=out.resolve().name, game=card.game, env_id=card.env_id,
            algorithm=f"{card.algorithm} + HARP", timesteps=card.timesteps,
            hyperparameters=card.hyperparameters, wrappers=card.wrappers, clean_score=Score(),
            random_score=card.random_score, seed=card.seed, evaluation=card.evaluation,
            pruning=pruning,
        )  # fmt: skip
        saved = save_agent(out, result.model, pruned, masks=result.masks)
        remove_checkpoint(out / CHECKPOINT_DIR)  # the agent folder is the result
        return saved


def _sha256(frames: torch.Tensor) -> str:
    """SHA-256 of the collected frames: a resumed run must train on the same ones."""
    import hashlib

    return hashlib.sha256(frames.contiguous().numpy().tobytes()).hexdigest()
