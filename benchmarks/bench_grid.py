"""The grid engine's executors side by side, and the critical path of per-cell vs per-game units.

Executors (the default mode): the same small grid of ``sap-rl evaluate`` (by default RoadRunner,
dense and SAP-100, FGSM at eps 0, 1 and 2, 4 games per cell) is run by local 1 worker, local 2
workers and Ray on 2 CPUs, each into its own folder, and the wall times, their ratios and whether
the cell files are byte-identical are printed. Ray's runtime is started (``ray.init(num_cpus=2)``)
before its timed region, as a cluster that is already up; its actors' start (package import,
weights from the object store) is inside it, as the local workers' start is. Then the same grid
on 2 local workers with per-cell and per-game units (below); its games are all capped short, so
this only measures what per-game units lose.

Critical path (``--critical-path``): a grid whose cells last unequally, on real ALE games. By
default RoadRunner's dense agent clean (eps 0: with ``--seed 2`` its 2 games last 973 and 886
agent steps) and under FGSM at eps 8 (103 and 74 steps), 2 games per cell capped at
``--max-steps`` 2000 (a bound these games do not reach), on ``--workers`` 2 local workers. The
unit size is the engine's own setting, ``n_envs`` (:func:`sap_rl.rl.evaluate_cells.units_of`):
``n_envs`` = games per cell gives one unit per cell, so one worker plays both long games while
the other finishes the short cell and idles; ``n_envs 1`` gives one unit per game, and each
worker plays one long game. Per-game units also give up batching a cell's games through one
forward pass, so the ratio is the net of both; it needs cores the workers really get (on a busy
machine the idle worker's core goes to other jobs, not to its partner). With more long games per
cell than workers, batching can win (4 games per cell, seed 0, on 2 busy cores: per-cell
20.9 s, per-game 25.5 s). The two runs alternate order over ``--repeats`` pairs.

Files: unit size is part of a cell file (its ``n_envs`` field) and of a stochastic defense's
draws (each unit seeds its own, docs/evaluation.md), so the critical-path check compares
``episodes.csv`` byte for byte and each deterministic defense's cell file with its ``n_envs``
field left out; use deterministic defenses (dense, the default) to compare every cell.

Examples (a shell)::

    python benchmarks/bench_grid.py --episodes 4 --max-steps 300
    nice python benchmarks/bench_grid.py --critical-path --repeats 5
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXECUTOR_DEFAULTS = {
    "defense": "dense,sap-100",
    "eps": "0,1,2",
    "episodes": 4,
    "max_steps": 300,
    "seed": 0,
}
CRITICAL_DEFAULTS = {"defense": "dense", "eps": "0,8", "episodes": 2, "max_steps": 2000, "seed": 2}


def _cell(path: Path) -> dict[str, Any]:
    """A cell file's content without its ``n_envs`` field (the unit size it was played in)."""
    data: dict[str, Any] = json.loads(path.read_text())
    data.pop("n_envs", None)
    return data


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables; returns 0."""
    from sap_rl.defenses import parse_defense
    from sap_rl.rl.eval_config import AtariEvalConfig
    from sap_rl.rl.evaluate import evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--critical-path",
        action="store_true",
        help="per-cell vs per-game units on a grid of long and short cells",
    )
    parser.add_argument("--agent", default="roadrunner-ddqn")
    parser.add_argument("--defense", help="default: dense,sap-100 (critical path: dense)")
    parser.add_argument("--attack", default="fgsm")
    parser.add_argument("--eps", help="default: 0,1,2 (critical path: 0,8)")
    parser.add_argument("--episodes", type=int, help="games per cell; default 4, critical path 2")
    parser.add_argument(
        "--max-steps", type=int, help="cap per game (agent steps); default 300, critical path 2000"
    )
    parser.add_argument(
        "--seed", type=int, help="base seed (game g: env seed seed + g); default 0, critical path 2"
    )
    parser.add_argument("--workers", type=int, default=2, help="critical path: local workers")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="critical path: pairs of runs, alternating which unit size goes first",
    )
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    parser.add_argument("--keep", action="store_true", help="keep the output folders")
    args = parser.parse_args(argv)
    for name, value in (CRITICAL_DEFAULTS if args.critical_path else EXECUTOR_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    def config(**overrides: object) -> AtariEvalConfig:
        settings: dict = {
            "agent": args.agent, "defenses": args.defense.split(","),
            "attacks": args.attack.split(","), "eps": [float(e) for e in args.eps.split(",")],
            "episodes": args.episodes, "n_envs": args.episodes, "max_steps": args.max_steps,
            "seed": args.seed, "threads": 1,
        }  # fmt: skip
        settings.update(overrides)
        return AtariEvalConfig(**settings)

    root = Path(tempfile.mkdtemp(prefix="bench_grid-"))

    def timed(name: str, cfg: AtariEvalConfig) -> float:
        start = time.perf_counter()
        evaluate(cfg, root / name, progress=False)
        return time.perf_counter() - start

    try:
        if args.critical_path:
            critical_path(args, config, timed, root, parse_defense)
        else:
            executors(args, config, timed, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def executors(args: argparse.Namespace, config: Any, timed: Any, root: Path) -> None:
    """Local 1, local 2 and Ray 2 on one grid, then per-cell vs per-game units on 2 workers.

    Args:
        args: the parsed command line.
        config: makes the grid's ``AtariEvalConfig`` from overrides.
        timed: runs a config into ``root / name`` and returns its wall seconds.
        root: the folder of the runs.
    """
    modes = {"local 1": config(workers=1), "local 2": config(workers=2)}
    walls = {name: timed(name.replace(" ", "-"), cfg) for name, cfg in modes.items()}
    if not args.no_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            walls["ray 2"] = timed("ray-2", config(backend="ray", workers=2))
        finally:
            ray.shutdown()
    cells = sorted(p.name for p in (root / "local-1" / "cells").glob("*.json"))
    print(f"grid: {args.agent}, {args.defense} x {args.attack} at eps {args.eps}, "
          f"{args.episodes} games per cell capped at {args.max_steps} steps, "
          f"{len(cells)} cells, 1 torch thread per worker")  # fmt: skip
    print(f"{'executor':<10} {'wall s':>8}")
    for name, wall in walls.items():
        print(f"{name:<10} {wall:>8.1f}")
    print(f"speedup local 2 / local 1: {walls['local 1'] / walls['local 2']:.2f}x")
    if "ray 2" in walls:
        print(f"ray 2 / local 2 wall: {walls['ray 2'] / walls['local 2']:.2f} "
              "(Ray's overhead at the same CPU count; target <= 1.10)")  # fmt: skip
    for name in walls:
        folder = root / name.replace(" ", "-") / "cells"
        same = all(filecmp.cmp(root / "local-1" / "cells" / c, folder / c, shallow=False)
                   for c in cells)  # fmt: skip
        print(f"cell files of {name} byte-identical to local 1: {'yes' if same else 'NO'}")

    per_cell = timed("per-cell", config(workers=2, n_envs=args.episodes))
    per_game = timed("per-game", config(workers=2, n_envs=1))
    print(f"critical path on 2 local workers: per-cell units {per_cell:.1f} s, per-game units "
          f"{per_game:.1f} s, per-cell / per-game = {per_cell / per_game:.2f}x")  # fmt: skip


def critical_path(
    args: argparse.Namespace, config: Any, timed: Any, root: Path, parse_defense: Any
) -> None:
    """Per-cell vs per-game units on ``args.workers`` local workers, ``args.repeats`` pairs.

    Args:
        args: the parsed command line.
        config: makes the grid's ``AtariEvalConfig`` from overrides.
        timed: runs a config into ``root / name`` and returns its wall seconds.
        root: the folder of the runs.
        parse_defense: :func:`sap_rl.defenses.parse_defense` (imported by ``main``).
    """
    sizes = {"per-cell": args.episodes, "per-game": 1}
    walls: dict[str, list[float]] = {name: [] for name in sizes}
    for r in range(args.repeats):
        order = list(sizes) if r % 2 == 0 else list(reversed(sizes))
        for name in order:
            cfg = config(workers=args.workers, n_envs=sizes[name])
            walls[name].append(timed(f"{name}-{r}", cfg))
    cell_dir = {name: root / f"{name}-0" / "cells" for name in sizes}
    cells = sorted(p.name for p in cell_dir["per-cell"].glob("*.json"))
    print(f"grid: {args.agent}, {args.defense} x {args.attack} at eps {args.eps}, "
          f"{args.episodes} games per cell capped at {args.max_steps} steps, {len(cells)} cells, "
          f"{args.workers} local workers, 1 torch thread per worker")  # fmt: skip
    print(f"{'cell':<24} games' steps")
    for c in cells:
        lengths = [g["length"] for g in _cell(cell_dir["per-cell"] / c)["games"]]
        print(f"{c.removesuffix('.json'):<24} {' '.join(str(n) for n in lengths)}")
    print(f"{'units':<24} {'wall s':>8}")
    for name, runs in walls.items():
        label = f"{name} (n_envs {sizes[name]})"
        print(f"{label:<24} {' '.join(f'{w:>8.1f}' for w in runs)}")
    per_cell, per_game = min(walls["per-cell"]), min(walls["per-game"])
    print(f"critical path on {args.workers} local workers: per-cell units {per_cell:.1f} s, "
          f"per-game units {per_game:.1f} s, per-cell / per-game = {per_cell / per_game:.2f}x"
          f"{' (fastest of each)' if args.repeats > 1 else ''}")  # fmt: skip
    csv = [root / f"{name}-0" / "episodes.csv" for name in sizes]
    same = filecmp.cmp(csv[0], csv[1], shallow=False)
    print(f"episodes.csv of per-game units byte-identical to per-cell: {'yes' if same else 'NO'}")
    defenses = {c: _cell(cell_dir["per-cell"] / c)["defense"] for c in cells}
    compared = [c for c in cells if not parse_defense(defenses[c]).stochastic]
    same = all(_cell(cell_dir["per-cell"] / c) == _cell(cell_dir["per-game"] / c)
               for c in compared)  # fmt: skip
    print(f"cell files of per-game units identical to per-cell but for n_envs "
          f"({len(compared)} of {len(cells)} cells, deterministic defenses): "
          f"{'yes' if same else 'NO'}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
