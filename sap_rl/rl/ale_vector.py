"""ale-py's C++ ``AtariVectorEnv`` as an environment backend, with sap-rl's game semantics.

``env.backend: ale_vector`` (training) or ``--env-backend ale_vector`` (``sap-rl evaluate``)
plays games here instead of on the gymnasium/SB3 wrapper stack of :mod:`sap_rl.rl.envs`; the
gymnasium stack stays the default and the reference of every committed result.

What runs where
    ale-py 0.12 (C++, one thread per game) does frame skip, the max-pool over the last two
    frames, grey-scale and the 84x84 ``INTER_AREA`` resize: the same pixels as
    ``MaxAndSkipEnv`` + ``Resize`` (docs/training.md). Everything whose semantics are sap-rl's is
    done here in Python, mirroring the wrappers one by one: fire reset (FIRE, then action 2,
    after every reset, SB3's ``FireResetEnv``), episodic life for training (a lost life ends the
    episode, the next reset presses NOOP instead of restarting the game, ``EpisodicLifeEnv``),
    the evaluation envs' NOOP/FIRE/2 after a lost life (:class:`~sap_rl.rl.envs.FireOnLifeLoss`),
    whole-game scores and lengths (``GameMonitor``), reward clipping and the zero-padded frame
    stack. So the vector env runs with its own fire reset, episodic life, clipping and stack off.
No-op starts
    Matched exactly: game ``g`` reset with seed ``s`` draws its no-op count from the generator
    the gymnasium ``AtariEnv`` would have (``SeedSequence(s)``'s first word, then
    ``integers(1, noop_max + 1)``; later unseeded resets continue it, as in training), and the
    vector env is reset with a seed whose own no-op draws (``mt19937`` + libstdc++'s
    ``uniform_int_distribution``) are that count and, in training, the next two (so two of three
    game starts need no ROM reload, which a seeded reset costs); the ALE's frame counter checks
    every reset. The ALE's own random seed then differs from gymnasium's, which changes nothing
    without sticky actions (pixel tests; training runs are bit-identical).
Game length cap
    A game is truncated when the ALE's episode frame counter (no-ops included, as gymnasium's
    ``max_num_frames_per_episode``) reaches the cap, in the same agent step; the vector env
    finishes that step's 4 frames, so a capped game may score up to 3 frames more.
Parallel games
    Each game is its own one-env ``AtariVectorEnv`` with one C++ thread: a game's extra presses
    (fire reset, a lost life) step that game alone. :func:`step_games` sends every game's action,
    then collects the results, so the games' emulators run at the same time.

Example:
    >>> env = AleGame("Breakout", training=False)
    >>> obs, _ = env.reset(seed=0)
    >>> obs.shape, obs.dtype
    ((4, 84, 84), dtype('uint8'))
    >>> env.close()
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Generator, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from sap_rl.errors import UserError
from sap_rl.rl.envs import AtariPreprocessing, _register, needs_fire_reset
from sap_rl.rl.games import Game, resolve_game

__all__ = ["AleGame", "AleVecEnv", "make_ale_vec_env", "noop_count", "rom_id", "step_games"]

#: One emulator step of a game: (newest 84x84 frame, reward, terminated, truncated, lives).
RawStep = tuple[np.ndarray, float, bool, bool, int]
#: A game's work as a generator: it yields the actions to send and receives each result.
Proc = Generator[int, Any, Any]


def rom_id(game: Game | str) -> str:
    """ale-py's ROM name of a game (``RoadRunner`` -> ``road_runner``).

    Example:
        >>> rom_id("RoadRunner")
        'road_runner'
    """
    resolved = game if isinstance(game, Game) else resolve_game(game)
    _register()
    return str(gym.spec(resolved.env_id).kwargs["game"])


def noop_count(rng: np.random.Generator, noop_max: int) -> int:
    """The next no-op count of SB3's ``NoopResetEnv`` drawn from the env's generator ``rng``.

    Example:
        >>> noop_count(_gymnasium_rng(0), 30) == noop_count(_gymnasium_rng(0), 30)
        True
    """
    return int(rng.integers(1, noop_max + 1)) if noop_max > 0 else 0


def _gymnasium_rng(seed: int | None) -> np.random.Generator:
    """The generator ``ale_py.env.AtariEnv.reset(seed=seed)`` leaves in ``env.np_random``."""
    if seed is None:  # an env never seeded: fresh entropy, as gymnasium does
        return np.random.default_rng()
    np_seed = np.random.SeedSequence(seed).generate_state(n_words=2)[0]
    return np.random.default_rng(int(np_seed))


_MASK = np.uint64(0xFFFFFFFF)


def _cpp_noop_draws(seeds: np.ndarray, span: int, count: int) -> np.ndarray:
    """ale-py's no-op draws of ``count`` resets from a reset with each of ``seeds``: ``(count, n)``.

    C++ ``std::uniform_int_distribution(0, span - 1)`` on ``std::mt19937(seed)``, as libstdc++
    (GCC >= 11, ale-py's wheels) maps words to the range (Lemire's method); -1 where a word would
    be rejected and another drawn (probability span / 2**32; such seeds are never used).
    """
    words = {0: seeds.astype(np.uint64)}
    x = words[0]
    for i in range(1, 397 + count):  # mt19937's seeding; output j needs words j, j+1, j+397
        x = (np.uint64(1812433253) * (x ^ (x >> np.uint64(30))) + np.uint64(i)) & _MASK
        if i <= count or i >= 397:
            words[i] = x
    draws = np.empty((count, len(seeds)), np.int64)
    threshold = np.uint64((2**32 - span) % span)
    for j in range(count):
        y = (words[j] & np.uint64(0x80000000)) | (words[j + 1] & np.uint64(0x7FFFFFFF))
        v = words[j + 397] ^ (y >> np.uint64(1)) ^ ((y & np.uint64(1)) * np.uint64(0x9908B0DF))
        v ^= v >> np.uint64(11)
        v ^= (v << np.uint64(7)) & np.uint64(0x9D2C5680)
        v ^= (v << np.uint64(15)) & np.uint64(0xEFC60000)
        v ^= v >> np.uint64(18)
        product = v * np.uint64(span)
        draws[j] = np.where((product & _MASK) < threshold, -1, (product >> np.uint64(32)))
    return draws


def _cpp_noop_draw(seed: int, span: int) -> int:
    """The no-op draw of ale-py's reset with ``seed`` (:func:`_cpp_noop_draws` of one seed).

    Example:
        >>> _cpp_noop_draw(0, 31)
        17
    """
    return int(_cpp_noop_draws(np.array([seed]), span, 1)[0, 0])


@functools.cache
def _noop_seed_table(noop_max: int, ahead: int) -> dict[tuple[int, ...], int]:
    """Per run of ``ahead`` no-op counts (each 1..noop_max), the smallest vector-env seed whose
    seeded reset and ``ahead - 1`` unseeded resets after it draw them.

    A seeded reset reloads the ROM (about 0.1 s, as a seeded gymnasium reset); an unseeded one
    costs 6-7 ms. Training envs look 3 resets ahead (a table of 27,000 seeds, built in about a
    second), so 2 of 3 game starts are unseeded; evaluation games are each seeded anyway.
    """
    span, start = noop_max + 1, 0
    table: dict[tuple[int, ...], int] = {}
    while len(table) < noop_max**ahead:
        seeds = np.arange(start, start + 2**16)
        draws = _cpp_noop_draws(seeds, span, ahead)
        usable = (draws >= 1).all(axis=0)
        keys = (draws[:, usable] * (span ** np.arange(ahead))[:, None]).sum(axis=0)
        found, first = np.unique(keys, return_index=True)
        for key, seed in zip(found.tolist(), seeds[usable][first].tolist(), strict=True):
            table.setdefault(tuple((key // span**j) % span for j in range(ahead)), seed)
        start += 2**16
    return table


class AleGame:
    """One game on a one-env ``AtariVectorEnv``, with the gymnasium stack's semantics.

    The gym API of :func:`sap_rl.rl.envs.make_env` (``reset(seed=)``, ``step``,
    ``action_space``, ``close``), so :func:`sap_rl.rl.play.play_matched_games` plays it as it
    plays gymnasium envs (and steps many at once through :func:`step_games`).

    Args:
        game: game name or resolved :class:`Game`.
        training: episodic life and clipped rewards (``True``) or whole games, raw scores.
        preprocessing: wrapper settings (``backend`` is not read); ``None``: the standard ones.

    Example:
        >>> env = AleGame("Pong", training=True)
        >>> obs, _ = env.reset(seed=3)
        >>> obs, reward, terminated, truncated, info = env.step(0)
        >>> obs.shape, reward
        ((4, 84, 84), 0.0)
        >>> env.close()
    """

    step_batch: Any = None  # set below to step_games (how play_matched_games batches steps)
    render_mode = None  # what SB3's VecEnv asks of its envs

    def __init__(
        self, game: Game | str, *, training: bool, preprocessing: AtariPreprocessing | None = None
    ) -> None:
        from ale_py.vector_env import AtariVectorEnv

        self.cfg = cfg = preprocessing or AtariPreprocessing()
        self.game = game if isinstance(game, Game) else resolve_game(game)
        self.training = training
        self.fire = needs_fire_reset(self.game)
        self.episodic = training and cfg.terminal_on_life_loss
        self.fire_on_life_loss = not training and self.fire and cfg.terminal_on_life_loss
        self.clip = training and cfg.clip_reward
        # How many game starts one seeded reset of the vector env plans (see _noop_seed_table).
        self._ahead = 3 if training else 1
        self._planned: list[int] = []  # no-op counts the vector env's next unseeded resets draw
        self.vec = AtariVectorEnv(
            rom_id(self.game), 1, num_threads=1, img_height=cfg.screen_size,
            img_width=cfg.screen_size, grayscale=True, stack_num=1, frameskip=cfg.frame_skip,
            maxpool=cfg.frame_skip > 1, noop_max=cfg.noop_max + 1 if cfg.noop_max else 0,
            use_fire_reset=False, episodic_life=False, life_loss_info=False,
            reward_clipping=False, max_num_frames_per_episode=cfg.max_episode_frames,
            repeat_action_probability=0.0, full_action_space=False,
        )  # fmt: skip
        self.action_space = spaces.Discrete(int(self.vec.single_action_space.n))  # type: ignore[attr-defined]
        size = cfg.screen_size
        self.observation_space = spaces.Box(0, 255, (cfg.frame_stack, size, size), np.uint8)
        self._stack = np.zeros((cfg.frame_stack, size, size), np.uint8)
        self._action = np.zeros(1, np.int64)
        self._rng = _gymnasium_rng(None)
        self._started = time.time()
        self._lives = 0
        self._real_done = True
        self._episode_reward = 0.0
        self._episode_length = 0

    # ---- the emulator and the monitor (GameMonitor over MaxAndSkipEnv over NoopResetEnv) ----

    def _raw_step(self, action: int) -> Generator[int, Any, RawStep]:
        obs, reward, terminated, _, info = yield action
        done = bool(terminated[0])
        # gymnasium caps the ALE's episode frames, no-ops included (not the vector env's count)
        capped = int(info["episode_frame_number"][0]) >= self.cfg.max_episode_frames
        lives = int(info["lives"][0])
        return obs[0, -1], float(reward[0]), done, capped and not done, lives

    def _monitor_step(self, action: int) -> Generator[int, Any, tuple[RawStep, dict[str, Any]]]:
        raw = yield from self._raw_step(action)
        _, reward, terminated, truncated, _ = raw
        self._episode_reward += reward
        self._episode_length += 1
        info: dict[str, Any] = {}
        if terminated or truncated:
            info["episode"] = {
                "r": round(self._episode_reward, 6),
                "l": self._episode_length,
                "t": round(time.time() - self._started, 6),
                "truncated": bool(truncated and not terminated),
            }
        return raw, info

    def _monitor_reset(self, seed: int | None) -> RawStep:
        """A new game: the vector env's reset with the no-op count gymnasium would draw."""
        if seed is not None:
            self._rng = _gymnasium_rng(seed)
            self._planned = []
        noops = noop_count(self._rng, self.cfg.noop_max)
        vec_seed: np.ndarray | None = None  # an unseeded reset: the vector env's next draw
        if noops and self._planned[:1] == [noops]:
            self._planned.pop(0)
        elif noops:  # a seeded reset whose draws are this game's and the next ones' no-ops
            peek = copy.deepcopy(self._rng)
            ahead = [noop_count(peek, self.cfg.noop_max) for _ in range(self._ahead - 1)]
            vec_seed = np.array([_noop_seed_table(self.cfg.noop_max, self._ahead)[(noops, *ahead)]])
            self._planned = ahead
        obs, info = self.vec.reset(seed=vec_seed)
        frames = int(info["episode_frame_number"][0])
        if frames != noops:  # another ale-py build maps its seeds to no-ops differently
            raise RuntimeError(f"ale_vector: {frames} no-op frames after a reset, wanted {noops}")
        self._episode_reward, self._episode_length = 0.0, 0
        return obs[0, -1], 0.0, False, False, int(info["lives"][0])

    # ---- life loss: EpisodicLifeEnv (training) or FireOnLifeLoss (evaluation) ----

    def _life_step(self, action: int) -> Generator[int, Any, tuple[RawStep, dict[str, Any]]]:
        (frame, reward, terminated, truncated, lives), info = yield from self._monitor_step(action)
        if self.episodic:
            self._real_done = terminated or truncated
            lost = 0 < lives < self._lives
            self._lives = lives
            return (frame, reward, terminated or lost, truncated, lives), info
        if self.fire_on_life_loss and not (terminated or truncated) and 0 < lives < self._lives:
            for press in (0, 1, 2):
                step, info = yield from self._monitor_step(press)
                frame, more, terminated, truncated, lives = step
                reward += more
                if terminated or truncated:
                    break
        self._lives = lives
        return (frame, reward, terminated, truncated, lives), info

    def _life_reset(self, seed: int | None) -> Generator[int, Any, np.ndarray]:
        if self.episodic and not self._real_done:
            (frame, _, terminated, truncated, lives), _ = yield from self._monitor_step(0)
            if terminated or truncated:
                frame, *_, lives = self._monitor_reset(seed)
        else:
            frame, *_, lives = self._monitor_reset(seed)
        self._lives = lives
        return frame

    # ---- fire reset (FireResetEnv), reward clipping and the frame stack ----

    def _reset_proc(self, seed: int | None) -> Generator[int, Any, np.ndarray]:
        frame = yield from self._life_reset(seed)
        if self.fire:  # as FireResetEnv.reset, which returns the frame after 2 even if it reset
            for press in (1, 2):
                (frame, _, terminated, truncated, _), _ = yield from self._life_step(press)
                if terminated or truncated:
                    yield from self._life_reset(seed)
        self._stack[:] = 0
        self._stack[-1] = frame
        return self._stack.copy()

    def _step_proc(self, action: int) -> Generator[int, Any, Any]:
        (frame, reward, terminated, truncated, _), info = yield from self._life_step(action)
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = frame
        if self.clip:
            reward = float(np.sign(reward))
        return self._stack.copy(), reward, terminated, truncated, info

    def _step_and_reset_proc(self, action: int) -> Generator[int, Any, Any]:
        """A vector env's step: after a done episode, the next one's first observation."""
        obs, reward, terminated, truncated, info = yield from self._step_proc(action)
        if terminated or truncated:
            info["terminal_observation"] = obs
            info["TimeLimit.truncated"] = truncated and not terminated
            obs = yield from self._reset_proc(None)
        return obs, reward, terminated or truncated, info

    # ---- the gym API ----

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode (a new game unless training lost a life); ``seed`` as gymnasium."""
        del options
        (obs,) = _drive([self], [self._reset_proc(seed)])
        return obs, {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One agent step (with its presses after a lost life, in evaluation)."""
        (result,) = step_games([self], [action])
        return result

    def close(self) -> None:
        """Stop the game's C++ thread (only dropping the vector env joins it)."""
        vec = self.__dict__.pop("vec", None)
        if vec is not None:
            vec.close()


def _drive(games: Sequence[AleGame], procs: Sequence[Proc]) -> list[Any]:
    """Run each game's generator to its end; every round, all sends go out before any recv."""
    results: list[Any] = [None] * len(games)
    pending: dict[int, int] = {}
    for i, proc in enumerate(procs):
        try:
            pending[i] = next(proc)
        except StopIteration as stop:
            results[i] = stop.value
    while pending:
        for i, action in pending.items():
            games[i]._action[0] = action
            games[i].vec.send(games[i]._action)
        for i in list(pending):
            out = games[i].vec.recv()
            try:
                pending[i] = procs[i].send(out)
            except StopIteration as stop:
                results[i] = stop.value
                del pending[i]
    return results


def step_games(
    games: Sequence[AleGame], actions: Sequence[int] | np.ndarray
) -> list[tuple[np.ndarray, float, bool, bool, dict[str, Any]]]:
    """Step several games at once (their emulators run in parallel); gym step results.

    Example:
        >>> games = [AleGame("Pong", training=False) for _ in range(2)]
        >>> _ = [g.reset(seed=i) for i, g in enumerate(games)]
        >>> [r[0].shape for r in step_games(games, [0, 1])]
        [(4, 84, 84), (4, 84, 84)]
        >>> for g in games:
        ...     g.close()
    """
    return _drive(games, [g._step_proc(int(a)) for g, a in zip(games, actions, strict=True)])


AleGame.step_batch = staticmethod(step_games)


class AleVecEnv(VecEnv):
    """A stable-baselines3 ``VecEnv`` of :class:`AleGame` s: :func:`~sap_rl.rl.envs.make_vec_env`
    for ``backend: ale_vector``.

    Same contract as the gymnasium path: env ``i`` is seeded with ``seed + i`` at its first reset
    (later resets continue its no-op stream), ``uint8`` observations ``(n_envs, 4, 84, 84)``,
    SB3 auto-reset (``infos[i]["terminal_observation"]``, ``"TimeLimit.truncated"``) and
    ``infos[i]["episode"]`` at the end of each whole game.

    Example:
        >>> venv = AleVecEnv("Breakout", 2, seed=0, training=True)
        >>> venv.reset().shape
        (2, 4, 84, 84)
        >>> venv.close()
    """

    def __init__(
        self,
        game: Game | str,
        n_envs: int,
        *,
        seed: int,
        training: bool,
        preprocessing: AtariPreprocessing | None = None,
    ) -> None:
        self.games = [AleGame(game, training=training, preprocessing=preprocessing)
                      for _ in range(n_envs)]  # fmt: skip
        first = self.games[0]
        super().__init__(n_envs, first.observation_space, first.action_space)
        self._actions = np.zeros(n_envs, np.int64)
        self.seed(seed)
        self.action_space.seed(seed)  # as DummyVecEnv's, which is env 0's space seeded seed + 0

    def reset(self) -> VecEnvObs:
        """Reset every game (seeded by the last :meth:`seed`, once)."""
        obs = _drive(self.games, [g._reset_proc(s) for g, s in zip(self.games, self._seeds,
                                                                    strict=True)])  # fmt: skip
        self._reset_seeds()
        return np.stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        procs = [g._step_and_reset_proc(int(a)) for g, a in zip(self.games, self._actions,
                                                                strict=True)]  # fmt: skip
        results = _drive(self.games, procs)
        obs, rewards, dones, infos = zip(*results, strict=True)
        return (np.stack(obs), np.array(rewards, np.float32), np.array(dones, bool), list(infos))

    def close(self) -> None:
        for game in self.games:
            game.close()

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:  # len(games): SB3's VecEnv.__init__ asks before it sets num_envs
            return list(range(len(self.games)))
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.games[i], attr_name) for i in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._indices(indices):
            setattr(self.games[i], attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        return [getattr(self.games[i], method_name)(*method_args, **kwargs)
                for i in self._indices(indices)]  # fmt: skip

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        # The games record whole-game episodes as SB3's Monitor does (infos[i]["episode"]).
        from stable_baselines3.common.monitor import Monitor

        return [issubclass(Monitor, wrapper_class) for _ in self._indices(indices)]


def make_ale_vec_env(
    game: Game | str,
    n_envs: int = 1,
    *,
    seed: int,
    training: bool,
    preprocessing: AtariPreprocessing | None = None,
) -> AleVecEnv:
    """The ``ale_vector`` twin of :func:`sap_rl.rl.envs.make_vec_env` (e.g. for a benchmark).

    Example:
        >>> venv = make_ale_vec_env("Pong", 2, seed=0, training=True)
        >>> venv.reset().shape
        (2, 4, 84, 84)
        >>> venv.close()
    """
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise UserError(f"n_envs must be a positive integer, got {n_envs!r}")
    return AleVecEnv(game, n_envs, seed=seed, training=training, preprocessing=preprocessing)
