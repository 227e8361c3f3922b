"""Perturbed play: attack what an Atari agent sees, batched or as a gymnasium wrapper.

Two forms share one implementation (:class:`ObservationAttack`):

- the **batched path**, used by the evaluator: :meth:`ObservationAttack.act` takes the clean
  float frames of all parallel environments ``(B, 4, 84, 84)``, attacks them in one
  forward/backward pass and returns the defended agent's actions on the perturbed frames;
- :class:`PerturbObservation`, a ``gymnasium.ObservationWrapper`` for users who run their own loop
  (stable-baselines3's ``evaluate_policy`` included): every observation the env returns is replaced
  by its perturbed version.

Semantics
---------
Victim and target
    The model is the *defended* Q-network (e.g. ``apply_defense(net, "sap-100")``). The attack
    moves the frames away from the agent's own greedy action on the clean frames (the SAP paper's
    ``J`` = cross-entropy between ``softmax(Q(x))`` and that action; Huang et al. 2017). For a
    stochastic defense that action is the one it would take this step (one random draw), or the
    argmax of Q-values averaged over ``action_samples`` draws. ``-eot`` attacks average their
    gradient over ``eot_samples`` draws; against a deterministic model every draw is the same, so
    one pass is used (same result, 1/``eot_samples`` of the cost). A ``transfer-<attack>`` is made
    on the dense network (the same weights with the defense's stochastic layers off), away from
    the dense network's clean greedy action, and the defended agent then acts on its frames.
What is perturbed
    ``perturb="stack"`` (default): all four stacked frames, within ``eps`` of the clean stack.
    ``perturb="last"``: only channel 3, the frame the env has just produced (as Huang et al.
    2017 did); the gradient, projection and PGD random start act on that frame alone. The three
    older frames stay clean: the stack is built by the env from clean frames, so a frame that was
    perturbed when it was newest is clean again in the next step's stack.
    ``perturb="online"``: each frame is perturbed once, when the env emits it, and stays so: the
    three older channels are the frames as the agent saw them in the previous steps (perturbed
    then), and the attack acts on the newest frame only, with those older frames fixed. The zero
    frames that pad a stack at a game's start were never emitted and stay zero. It needs to know
    which game each row is (``games``), because the perturbed frames of a game are kept between
    calls.
Budget
    ``eps`` in grey levels of the 0-255 frames; every perturbed frame is within ``eps`` of the clean
    one (L-inf) and inside ``[0, 255]``. ``eps = 0`` returns the clean frames without running the
    attack (``always_attack=True`` runs the whole attack path anyway, which must change nothing).

Fractional eps and integer observations
    The batched path never rounds: the Q-network gets the perturbed float frames, so ``eps=0.5`` is
    a real half-level perturbation. The wrapper picks its observation space from ``eps``:

    - integer ``eps`` (0, 1, 2, ...): ``Box(0, 255, uint8)`` as the env's, so SB3 still sees an
      image. FGSM from integer frames with an integer step gives integer frames, so nothing is
      rounded; iterative attacks (PGD) are rounded to the nearest level, which cannot leave the
      ball because its bounds are integers. FGSM through the wrapper therefore gives exactly the
      frames of the batched path.
    - fractional ``eps``: ``Box(0, 255, float32)``, the float frames unrounded (SB3 policies and our
      ``QNetwork`` accept float frames in pixel units). Asking for ``dtype="uint8"`` with a
      fractional ``eps`` is an error: rounding would either exceed ``eps`` (nearest) or silently
      shrink the budget to ``floor(eps)``.

Example:
    >>> import torch
    >>> from sap_rl.rl.agent import QNetwork
    >>> attack = ObservationAttack(QNetwork(6), "fgsm", eps=2.0)
    >>> x = torch.full((3, 4, 84, 84), 100.0)
    >>> actions, seen = attack.act(x)
    >>> actions.shape, float((seen - x).abs().max())
    (torch.Size([3]), 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from sap_rl.attacks import AttackSpec, parse_attack
from sap_rl.errors import UserError
from sap_rl.sap import mc_average, repeat_rows, stochastic_modules

__all__ = [
    "PERTURB_MODES",
    "ObservationAttack",
    "PerturbMode",
    "PerturbObservation",
    "StepCounts",
    "check_eps",
    "check_timed",
]

PerturbMode = Literal["stack", "last", "online"]
PERTURB_MODES: tuple[str, ...] = ("stack", "last", "online")
ObsDtype = Literal["uint8", "float32"]


def check_eps(eps: float) -> float:
    """Validate a perturbation budget in grey levels (finite, >= 0) and return it as a float.

    Example:
        >>> check_eps(2)
        2.0
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise UserError(f"eps must be a finite number of grey levels, got {eps!r}")
    if eps < 0:
        raise UserError(f"eps must be >= 0 (grey levels of the 0-255 frames), got {eps:g}")
    return float(eps)


def check_timed(threshold: float, budget: float) -> None:
    """Validate a timed attack's threshold (finite, >= 0) and budget (in (0, 1]).

    Example:
        >>> check_timed(0.1, 0.5)
        >>> check_timed(0.1, 0)
        Traceback (most recent call last):
        ...
        sap_rl.errors.UserError: timed-budget must be in (0, 1] (a fraction of steps), got 0
    """
    for name, value in (("timed-threshold", threshold), ("timed-budget", budget)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(threshold) or threshold < 0:
        raise UserError(f"timed-threshold must be a finite number >= 0, got {threshold:g}")
    if not 0 < budget <= 1:
        raise UserError(f"timed-budget must be in (0, 1] (a fraction of steps), got {budget:g}")


@dataclass
class StepCounts:
    """One game's steps under attack: all, attacked, and with a changed action (see ``act``)."""

    steps: int = 0
    attacked: int = 0
    changed: int = 0


class _NewestFrame(nn.Module):
    """``newest -> model(cat(older, newest))``: a model of the newest frame with the rest fixed.

    Attacks call it on ``k`` stacked copies of the batch (EOT); the older frames are repeated to
    match (copy-major order, as :mod:`sap_rl.attacks` stacks them).
    """

    def __init__(self, model: nn.Module, older: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.older = older.detach()

    def forward(self, newest: torch.Tensor) -> torch.Tensor:
        older = repeat_rows(self.older, newest.shape[0] // self.older.shape[0])
        return self.model(torch.cat([older, newest], dim=1))

    def rows(self, index: torch.Tensor) -> _NewestFrame:
        """This model for the rows ``index`` of the batch (for attacks that work on subsets)."""
        return _NewestFrame(self.model, self.older[index])


class ObservationAttack:
    """Attacks a batch of frame stacks against a (defended) Q-network: the batched path.

    Args:
        model: defended Q-network; float ``(B, 4, 84, 84)`` in ``[0, 255]`` -> ``(B, A)``.
        attack: attack name (``fgsm``, ``pgd-10``, ``fgsm-eot``...), parsed spec, or ``None``
            for clean play.
        eps: budget in grey levels (>= 0).
        perturb: ``"stack"`` (all four frames), ``"last"`` (only the newest frame) or
            ``"online"`` (the newest frame, older frames as perturbed when they were newest).
        eot_samples: draws averaged by ``-eot`` attacks (stochastic models only).
        action_samples: draws whose Q-values are averaged to choose actions (stochastic models).
        generator: CPU generator for PGD random starts (defense draws use the layers' own
            generators, or torch's global one).
        always_attack: run the attack even when ``eps == 0`` (a check that the path is exact).
        record: count, per game, steps attacked and actions changed by the attack (:meth:`act`).
        timed_threshold: a ``timed-`` attack attacks a step when the agent's preference, its
            softmax's largest minus smallest action probability, exceeds this (>= 0).
        timed_budget: a ``timed-`` attack attacks at most this fraction of a game's steps so far,
            in (0, 1] (1: every step above the threshold).

    Example:
        >>> from sap_rl.rl.agent import QNetwork
        >>> from sap_rl.defenses import apply_defense
        >>> defended = apply_defense(QNetwork(4), "sap-100")
        >>> attack = ObservationAttack(defended, "fgsm-eot", 1.0, eot_samples=4, perturb="last")
        >>> x = torch.full((2, 4, 84, 84), 50.0)
        >>> seen = attack.perturb(x)
        >>> torch.equal(seen[:, :3], x[:, :3]), float((seen - x).abs().max())
        (True, 1.0)
    """

    def __init__(
        self,
        model: nn.Module,
        attack: str | AttackSpec | None,
        eps: float,
        *,
        perturb: PerturbMode = "stack",
        eot_samples: int = 16,
        action_samples: int = 1,
        generator: torch.Generator | None = None,
        always_attack: bool = False,
        record: bool = False,
        timed_threshold: float = 0.0,
        timed_budget: float = 1.0,
    ) -> None:
        check_timed(timed_threshold, timed_budget)
        if perturb not in PERTURB_MODES:
            raise UserError(f"perturb must be one of {', '.join(PERTURB_MODES)}, got {perturb!r}")
        for name, value in (("eot_samples", eot_samples), ("action_samples", action_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be an integer >= 1, got {value!r}")
        self.model = model
        self.spec = parse_attack(attack) if isinstance(attack, str) else attack
        self.eps = check_eps(eps)
        self.perturb_mode: PerturbMode = perturb
        self.stochastic = any(layer.enabled for layer in stochastic_modules(model))
        self.eot_samples = eot_samples if self.stochastic else 1
        self.action_samples = action_samples if self.stochastic else 1
        self.generator = generator
        self.always_attack = always_attack
        # online mode: each game's three newest frames as the agent saw them (perturbed or not)
        self._seen: dict[int, torch.Tensor] = {}
        self.record = record
        self.timed_threshold = float(timed_threshold)
        self.timed_budget = float(timed_budget)
        #: Per game: steps, steps attacked, steps whose action changed (see :meth:`act`).
        self.counts: dict[int, StepCounts] = {}

    @property
    def active(self) -> bool:
        """Whether :meth:`perturb` changes anything (an attack and ``eps > 0``, or forced)."""
        return self.spec is not None and (self.eps > 0 or self.always_attack)

    def q_values(self, x: torch.Tensor) -> torch.Tensor:
        """Q-values of the defended model (mean over ``action_samples`` draws), no gradient."""
        with torch.no_grad():
            if self.action_samples > 1:
                return mc_average(self.model, x, self.action_samples)
            return self.model(x)

    def greedy(self, x: torch.Tensor) -> torch.Tensor:
        """The defended agent's greedy actions ``(B,)`` on frames ``x``."""
        return self.q_values(x).argmax(dim=1)

    def perturb(
        self,
        x: torch.Tensor,
        target: torch.Tensor | None = None,
        *,
        games: Sequence[int] | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Perturbed float frames (not rounded) within ``eps`` of ``x`` and inside ``[0, 255]``.

        Args:
            x: clean float frames ``(B, 4, 84, 84)`` in pixel units.
            target: the agent's greedy actions on ``x`` if already known (saves a forward pass);
                by default computed with :meth:`greedy` for a stochastic model, and by the attack
                itself (the same actions) for a deterministic one.
            games: the game of each row (``online`` mode: required; a game not seen in the
                previous call starts afresh, and games absent from this call are forgotten).
            rows: boolean ``(B,)``, the rows to attack (default all); the others keep the clean
                newest frame (and, ``online``, their older frames as seen before).

        Returns:
            ``x`` itself when the attack is inactive, else a new tensor.
        """
        if not self.active:
            return x
        assert self.spec is not None
        if self.perturb_mode == "online":
            if games is None or len(games) != x.shape[0]:
                raise ValueError("perturb='online' needs the game of each row (games=...)")
            return self._perturb_online(x, target, list(games), rows)
        if rows is not None and not bool(rows.all()):
            seen = x.clone()
            if bool(rows.any()):
                part = None if target is None else target[rows]
                seen[rows] = self.perturb(x[rows], part)
            return seen
        if self.spec.transfer:
            # Made on the dense network, away from the dense network's own clean greedy action
            # (which the attack computes itself), whatever the defended agent would do.
            target = None
        elif target is None and self.stochastic and not self.spec.least_likely:
            target = self.greedy(x)  # a deterministic model's attack predicts the same itself
        eps: float | torch.Tensor = self.eps
        if self.eps == 0:  # AttackSpec.run short-cuts a zero float; a tensor runs the full path
            eps = torch.zeros((), dtype=x.dtype, device=x.device)
        if self.perturb_mode == "stack":
            return self.spec.run(
                self.model, x, eps, target=target, eot_samples=self.eot_samples,
                generator=self.generator,
            )  # fmt: skip
        newest_model = _NewestFrame(self.model, x[:, :-1])
        newest = self.spec.run(
            newest_model, x[:, -1:], eps, target=target, eot_samples=self.eot_samples,
            generator=self.generator,
        )  # fmt: skip
        return torch.cat([x[:, :-1], newest], dim=1)

    def forget(self) -> None:
        """Drop the frames kept for ``online`` mode (every game starts afresh)."""
        self._seen = {}

    def _perturb_online(
        self,
        x: torch.Tensor,
        target: torch.Tensor | None,
        games: list[int],
        rows: torch.Tensor | None,
    ) -> torch.Tensor:
        """``online`` mode: older frames as the agent saw them, the newest attacked once."""
        assert self.spec is not None
        older = torch.stack([self._seen.get(g, x[i, :-1]) for i, g in enumerate(games)])
        seen = torch.cat([older, x[:, -1:]], dim=1)
        # The older frames are fixed inputs: _NewestFrame's gradient reaches the newest only.
        last = ObservationAttack(
            self.model, self.spec, self.eps, perturb="last", eot_samples=self.eot_samples,
            action_samples=self.action_samples, generator=self.generator,
            always_attack=self.always_attack,
        )  # fmt: skip
        if target is None and not self.spec.least_likely and not self.spec.transfer:
            # Away from the agent's action on the clean frames, as in the other modes (left to
            # the attack, it would predict on the older perturbed frames instead).
            target = self.greedy(x)
        seen = last.perturb(seen, target, rows=rows)
        self._seen = {g: seen[i, 1:].detach() for i, g in enumerate(games)}
        return seen

    def act(
        self, x: torch.Tensor, games: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of perturbed play: the agent's actions on the perturbed frames.

        The attack's target is the agent's greedy action on the clean frames. A stochastic agent's
        is computed here (with its ``action_samples`` draws) and passed to the attack; against a
        deterministic model the attack predicts the same action itself, and FGSM reads it from its
        gradient forward pass (one pass fewer). Returns ``(actions (B,), frames the
        agent saw (B, 4, 84, 84))``. ``games``: the game of each row (``online`` mode and the
        per-game :attr:`counts` need it; rows stand for games ``0..B-1`` without it).

        With ``record`` (or a timed attack) the clean Q-values are computed here for every step
        (for a stochastic agent they are the target's pass anyway; for a deterministic one it is
        one forward pass more), and :attr:`counts` gets, per game, the steps, the steps attacked
        and the steps whose greedy action on the perturbed frames differs from the one on the
        clean frames. A ``timed-`` attack attacks the rows where ``softmax(Q)``'s largest minus
        smallest probability exceeds ``timed_threshold`` (Lin et al. 2017), while the game's
        attacked steps stay within ``timed_budget`` of its steps so far.
        """
        if not self.active:
            return self.greedy(x), x
        spec = self.spec
        assert spec is not None
        rows_games = list(range(x.shape[0])) if games is None else list(games)
        q = None
        if self.record or spec.timed or (self.stochastic and not spec.transfer):
            q = self.q_values(x)  # the clean pass: target, timing, action change
        clean = None if q is None else q.argmax(dim=1)
        # A deterministic model's attack predicts the same target itself (kept so: same frames
        # as before); online mode always gets it (else it would predict on older perturbed
        # frames).
        known = not spec.transfer and (self.stochastic or self.perturb_mode == "online")
        rows = self._timed_rows(q, rows_games) if spec.timed else None
        seen = self.perturb(x, target=clean if known else None, games=games, rows=rows)
        actions = self.greedy(seen)
        if clean is not None:
            attacked = [True] * len(rows_games) if rows is None else rows.tolist()
            changed = actions.ne(clean).tolist()
            for g, hit, moved in zip(rows_games, attacked, changed, strict=True):
                count = self.counts.setdefault(g, StepCounts())
                count.steps += 1
                count.attacked += int(hit)
                count.changed += int(moved)
        return actions, seen

    def _timed_rows(self, q: torch.Tensor | None, games: list[int]) -> torch.Tensor:
        """The rows a timed attack attacks: preference above the threshold, within the budget."""
        assert q is not None
        probs = torch.softmax(q.double(), dim=1)
        preference = probs.max(dim=1).values - probs.min(dim=1).values
        rows = preference > self.timed_threshold
        for i, g in enumerate(games):
            count = self.counts.get(g, StepCounts())
            # attacked steps / steps so far stays <= budget (a tiny tolerance for 0.1 * 10 == 1)
            if count.attacked + 1 > self.timed_budget * (count.steps + 1) + 1e-9:
                rows[i] = False
        return rows


class PerturbObservation(gym.ObservationWrapper):
    """A gymnasium wrapper that replaces each observation by its attacked version.

    Wrap an evaluation env from :func:`sap_rl.rl.envs.make_env` (observations ``(4, 84, 84)``
    uint8); the agent then acts on the perturbed frames. The clean observation of the latest
    step stays available as :attr:`clean_observation`.

    Args:
        env: env with ``(4, 84, 84)`` frame-stack observations in ``[0, 255]``.
        model: the defended Q-network under attack (the victim).
        attack: attack name or spec (``fgsm``, ``pgd-10``, ``fgsm-eot``...).
        eps: budget in grey levels.
        perturb: ``"stack"``, ``"last"`` or ``"online"`` (see the module docstring).
        eot_samples: draws per gradient for ``-eot`` attacks.
        action_samples: draws averaged to find the agent's action, the attack's target.
        dtype: observation dtype; ``None`` picks ``uint8`` for an integer ``eps`` and ``float32``
            otherwise (see "Fractional eps" in the module docstring).
        seed: seed of the PGD random-start generator (defense draws come from the model's layers).
        device: where the model lives.

    Example:
        >>> from sap_rl.rl.agent import QNetwork
        >>> from sap_rl.rl.envs import make_env
        >>> net = QNetwork(6)
        >>> env = PerturbObservation(make_env("Pong", seed=0, training=False), net, "fgsm", 2)
        >>> obs, _ = env.reset()
        >>> obs.dtype, int(np.abs(obs.astype(int) - env.clean_observation).max()) <= 2
        (dtype('uint8'), True)
        >>> env.close()

        With stable-baselines3 (``q_network_from_sb3`` turns a DQN's ``policy.q_net`` into the
        pixel-unit model the attack needs)::

            env = PerturbObservation(make_env("Pong", seed=0, training=False),
                                     q_network_from_sb3(model.policy.q_net), "fgsm", eps=1)
            evaluate_policy(model, env, n_eval_episodes=10)
    """

    def __init__(
        self,
        env: gym.Env,
        model: nn.Module,
        attack: str | AttackSpec = "fgsm",
        eps: float = 1.0,
        *,
        perturb: PerturbMode = "stack",
        eot_samples: int = 16,
        action_samples: int = 1,
        dtype: ObsDtype | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(env)
        eps = check_eps(eps)
        integral = float(eps).is_integer()
        if dtype is None:
            dtype = "uint8" if integral else "float32"
        if dtype not in ("uint8", "float32"):
            raise UserError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")
        if dtype == "uint8" and not integral:
            raise UserError(
                f"eps={eps:g} is not a whole number of grey levels: uint8 observations cannot hold "
                "it without exceeding eps or shrinking the budget; use dtype='float32'"
            )
        shape = env.observation_space.shape
        if shape is None or len(shape) != 3:
            raise UserError(f"expected (frames, H, W) observations, got shape {shape}")
        self.dtype: ObsDtype = dtype
        self.device = torch.device(device)
        self.attack = ObservationAttack(
            model,
            attack,
            eps,
            perturb=perturb,
            eot_samples=eot_samples,
            action_samples=action_samples,
            generator=torch.Generator().manual_seed(seed),
        )
        self.observation_space = spaces.Box(0, 255, shape, dtype=np.dtype(dtype))
        self.clean_observation: np.ndarray | None = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Reset the env; a new game starts with no perturbed frames kept (``online``)."""
        self.attack.forget()
        return super().reset(**kwargs)

    def observation(self, observation: Any) -> np.ndarray:
        """Attack one observation; returns it with this wrapper's dtype."""
        clean = np.asarray(observation)
        self.clean_observation = clean
        x = torch.as_tensor(clean, device=self.device).to(torch.float32).unsqueeze(0)
        seen = self.attack.perturb(x, games=[0])[0].detach().cpu().numpy()
        if self.dtype == "float32":
            return seen.astype(np.float32, copy=False)
        return np.clip(np.rint(seen), 0, 255).astype(np.uint8)
