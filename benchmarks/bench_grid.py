"""The grid engine's executors side by side: local 1 worker, local 2 workers, Ray on 2 CPUs.

The same small grid of ``sap-rl evaluate`` (by default RoadRunner, dense and SAP-100, FGSM at
eps 0, 1 and 2, 4 games per cell) is run by each executor into its own folder, and the wall
times, their ratios and whether the cell files are byte-identical are printed. Ray's runtime is
started (``ray.init(num_cpus=2)``) before its timed region, as a cluster that is already up;
its actors' start (package import, weights from the object store) is inside it, as the local
workers' start is.

Then the critical path: the same grid on 2 local workers with units of a whole cell (``n_envs``
= games per cell: one unit per cell) and units of one game (``n_envs 1``). Cells whose games last
unequally (a clean RoadRunner game lasts far longer than one under attack) leave a worker idle
with per-cell units; per-game units keep both busy. Per-game units also give up the batching of a
cell's games in one forward pass, so the figure is the net effect of both.

Example (a shell)::

    python benchmarks/bench_grid.py --episodes 4 --max-steps 300
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables; returns 0."""
    from sap_rl.rl.eval_config import AtariEvalConfig
    from sap_rl.rl.evaluate import evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="roadrunner-ddqn")
    parser.add_argument("--defense", default="dense,sap-100")
    parser.add_argument("--attack", default="fgsm")
    parser.add_argument("--eps", default="0,1,2")
    parser.add_argument("--episodes", type=int, default=4, help="games per cell")
    parser.add_argument("--max-steps", type=int, default=300, help="cap per game (agent steps)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    args = parser.parse_args(argv)

    def config(**overrides: object) -> AtariEvalConfig:
        settings: dict = {
            "agent": args.agent, "defenses": args.defense.split(","),
            "attacks": args.attack.split(","), "eps": [float(e) for e in args.eps.split(",")],
            "episodes": args.episodes, "n_envs": args.episodes, "max_steps": args.max_steps,
            "threads": 1,
        }  # fmt: skip
        settings.update(overrides)
        return AtariEvalConfig(**settings)

    root = Path(tempfile.mkdtemp(prefix="bench_grid-"))

    def timed(name: str, cfg: AtariEvalConfig) -> float:
        start = time.perf_counter()
        evaluate(cfg, root / name, progress=False)
        return time.perf_counter() - start

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
