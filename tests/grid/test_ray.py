"""The ``ray`` backend against a real Ray runtime: same files as local, two nodes, a killed worker.

Ray is in the ``dev`` extra; without it these tests are skipped (the error a user gets then is
tested in ``test_engine.py``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sap_rl.cli import main
from sap_rl.grid import Unit, Work, make_executor, run_grid, split_cell
from sap_rl.grid.engine import JsonCells
from sap_rl.rl.agent import AgentCard, QNetwork, Score, save_agent
from sap_rl.rl.eval_config import AtariEvalConfig
from sap_rl.rl.evaluate import evaluate

ray = pytest.importorskip("ray")

GAME = "Assault"


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("agents") / "assault-ray"
    card = AgentCard(name=folder.name, game=GAME, env_id=f"ALE/{GAME}-v5",
                     clean_score=Score(30.0, 5.0, 3), random_score=-5.0)  # fmt: skip
    save_agent(folder, QNetwork(7).eval(), card)
    return folder


@pytest.fixture
def ray_2cpu() -> Iterator[None]:
    """``ray.init(num_cpus=2)`` in this process, as a user's notebook would do."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _config(agent: Path, **overrides: object) -> AtariEvalConfig:
    # A stochastic defense and an EOT attack: their draws are seeded per unit (2 units per cell).
    settings: dict = {"agent": str(agent), "defenses": ["dense", "sap-100"],
                      "attacks": ["fgsm-eot"], "eps": [0, 2], "episodes": 3, "n_envs": 2,
                      "max_steps": 30, "eot_samples": 2, "threads": 1}  # fmt: skip
    settings.update(overrides)
    return AtariEvalConfig(**settings)


def _cells(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "cells").glob("*.json"))}


def _actor_pids() -> list[int]:
    """Processes of this user whose title says they are sap-rl's Ray actors."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"_UnitWorker" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds actor processes in /proc")
def test_ray_files_equal_local_ones_even_with_a_worker_killed(
    agent_dir: Path, tmp_path: Path, ray_2cpu: None, caplog: pytest.LogCaptureFixture
) -> None:
    # Against one local process only: that 2 local processes write the same cells is tested in
    # tests/rl/test_evaluate.py (workers) and tests/grid/test_engine.py (multi-unit cells, resume),
    # and a run of 2 spawned processes here would add half this test's time.
    one = evaluate(_config(agent_dir), tmp_path / "one", progress=False)
    assert len(_cells(tmp_path / "one")) == 4

    # Ray, with one actor SIGKILLed as soon as the first cell is written: its unit runs again.
    out = tmp_path / "ray"
    killed: list[int] = []

    def kill_one_actor() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if list((out / "cells").glob("*.json")) and (pids := _actor_pids()):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    with caplog.at_level(logging.WARNING, logger="sap_rl.grid.ray_backend"):
        result = evaluate(_config(agent_dir, backend="ray", workers=2), out, progress=False)
    killer.join(timeout=5)
    assert killed, "no actor was found to kill"
    assert result.cells_played == 4 and result.cells_missing == []
    assert _cells(out) == _cells(tmp_path / "one")
    for name in ("episodes.csv", "summary.csv"):
        assert (out / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert one.rows == result.rows
    if "running it again" not in caplog.text:  # the killed actor had no unit left to run
        pytest.skip("the killed actor was idle to the end; retry not exercised this time")


class NodeRunner:
    """Returns the Ray node its unit ran on."""

    def __call__(self, unit: Unit, report: object) -> str:
        time.sleep(0.3)  # long enough that one actor cannot take every unit
        return str(ray.get_runtime_context().get_node_id())


def test_units_run_on_both_nodes_of_a_two_node_cluster(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        cluster.wait_for_nodes()
        grid = {cell: split_cell(cell, 4, 1) for cell in ("a", "b")}
        with make_executor("ray") as executor:
            assert executor.workers == 2  # one actor per CPU of the cluster
            run = run_grid(grid, JsonCells(tmp_path, 0), Work(NodeRunner, ()), executor,
                           progress=False)  # fmt: skip
        nodes = {node for results in run.done.values() for node in results}
        assert len(nodes) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_unreachable_ray_address_is_one_line_and_writes_nothing(
    agent_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    out = tmp_path / "eval"
    start = time.monotonic()
    code = main(["evaluate", "--agent", str(agent_dir), "--backend", "ray", "--out", str(out)])
    assert code == 2 and time.monotonic() - start < 30
    err = capsys.readouterr().err.strip()
    assert "RAY_ADDRESS=127.0.0.1:1: no Ray cluster answers there" in err and "\n" not in err
    assert not out.exists()
