"""The benchmark scripts run end to end on tiny settings and print their ratios.

These check that the scripts work (their numbers go into the README), not how fast anything is.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_bench(name: str, *args: str) -> str:
    """Run ``benchmarks/<name>.py`` with ``args`` in a fresh interpreter; return its stdout."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def number_after(label: str, text: str) -> float:
    match = re.search(re.escape(label) + r"\s*([0-9.]+)", text)
    assert match is not None, f"{label!r} not in:\n{text}"
    return float(match.group(1))


@pytest.mark.parametrize("backend", ["gymnasium", "ale_vector"])
def test_bench_train_prints_ratio_and_forward_cost(backend: str) -> None:
    out = run_bench(
        "bench_train", "--rounds", "1", "--steps", "40", "--learning-starts", "100",
        "--buffer-size", "400", "--update-reps", "2", "--env-backend", backend,
        *(["--variants", "DoubleDQN"] if backend == "ale_vector" else []),
    )  # fmt: skip
    assert f"envs: {backend}" in out
    ratio = number_after("ratio DoubleDQN/DQN =", out)
    assert 0.0 < ratio < 10.0
    forward = number_after("one no-grad batch-32 forward", out)
    assert forward > 0.0
    assert re.search(r"alone gives .* = [0-9.]+", out)


def test_bench_eval_prints_speedups() -> None:
    out = run_bench(
        "bench_eval", "--rounds", "1", "--max-steps", "15", "--n-envs", "2",
        "--batched-games", "2", "--wrapper-games", "1", "--workers", "1",
    )  # fmt: skip
    assert number_after("batched / wrapper under fgsm:", out) > 0.0
    for mode in ("batched fgsm", "wrapper fgsm", "batched clean", "wrapper clean",
                 "emulators only", "ale_vector fgsm", "ale_vector clean",
                 "ale_vector emulators"):  # fmt: skip
        assert re.search(rf"^{mode}\s+[0-9]+", out, re.MULTILINE), out
    assert number_after("ale_vector / batched under fgsm:", out) > 0.0


@pytest.mark.parametrize("defenses", ["sap-100", "dropout-0.1"])
def test_bench_eot_prints_speedup(defenses: str) -> None:
    out = run_bench(
        "bench_eot", "--defenses", defenses, "--batch", "2", "--samples", "2",
        "--rounds", "1", "--repeats", "1",
    )  # fmt: skip
    row = re.search(rf"^{re.escape(defenses)}\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)x$", out, re.M)
    assert row is not None, out
    assert all(float(value) > 0.0 for value in row.groups())


def test_bench_replay_prints_bytes_and_sampling_time_per_buffer() -> None:
    out = run_bench(
        "bench_replay", "--buffer-size", "1000", "--fill", "60", "--batches", "3",
        "--n-steps", "3",
    )  # fmt: skip
    rows = re.findall(
        r"^(.+?)\s+replay bytes per 100k transitions: ([0-9.]+) GB; sample\(32\): ([0-9.]+) ms$",
        out,
        re.MULTILINE,
    )
    assert len(rows) == 3, out
    gb = {name: float(size) for name, size, _ in rows}
    assert all(float(ms) > 0.0 for _, _, ms in rows)
    assert gb["each frame once (FrameReplayBuffer)"] <= 0.8
    assert gb["each frame once (FrameReplayBuffer)"] < gb["whole stacks (FrameStackReplayBuffer)"]
    assert gb["whole stacks (FrameStackReplayBuffer)"] < gb["SB3 ReplayBuffer"]


def test_bench_attacks_prints_costs_next_to_fgsm() -> None:
    out = run_bench(
        "bench_attacks", "--attacks", "fgsm,apgd-ce-2-eot,square-3,pgd-2-cw-r2", "--rounds", "1",
        "--images", "2", "--frames", "1", "--eot-samples", "2",
    )  # fmt: skip
    for domain in ("ms per image", "ms per agent step"):
        assert domain in out, out
    for name in ("fgsm", "apgd-ce-2-eot", "square-3", "pgd-2-cw-r2"):
        rows = re.findall(rf"^{re.escape(name)}\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)$", out, re.M)
        assert len(rows) == 2, out  # one row per domain
        assert all(float(cost) > 0.0 for cost, _, _ in rows)
    assert re.search(r"^fgsm\s+[0-9.]+\s+1\.0\s", out, re.M)  # the reference's own ratio


def test_eot_sweep_writes_accuracy_against_draws(tmp_path: Path) -> None:
    out = run_bench(
        "eot_sweep", "--draws", "2,1", "--examples", "3", "--eps", "16",
        "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--no-plot",
    )  # fmt: skip
    lines = (tmp_path / "out" / "eot_sweep.csv").read_text().splitlines()
    assert lines[0].startswith("defense,attack,eps,draws,n,accuracy,sem,diff_to_max,ci_low")
    assert [line.split(",")[3] for line in lines[1:]] == ["1", "2"]  # sorted draw counts
    assert lines[2].split(",")[7:10] == ["0.0", "0.0", "0.0"]  # the largest count is the reference
    assert "difference to 2 draws" in out


def _cell_times(work: Path) -> dict[str, int]:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in work.glob("*/cells/*.json")}


def _check_resumes(name: str, args: tuple[str, ...], work: Path, csv: Path) -> list[str]:
    """Rerun a finished sweep: every cell file is reused untouched and the table is the same;
    returns the work folders."""
    cells, before = _cell_times(work), csv.read_text()
    run_bench(name, *args)
    assert _cell_times(work) == cells
    assert csv.read_text() == before
    return sorted({name.split("/")[0] for name in cells})


def _refused(name: str, *args: str) -> str:
    """Run a benchmark that must refuse its arguments (exit code 2); its last stderr line."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


def test_eot_sweep_atari_writes_reward_against_draws_and_resumes(tmp_path: Path) -> None:
    args = ("--draws", "2,1", "--episodes", "1", "--max-steps", "30", "--work",
            str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--no-plot")  # fmt: skip
    out = run_bench("eot_sweep_atari", *args)
    csv = tmp_path / "out" / "eot_sweep.csv"
    lines = [line.split(",") for line in csv.read_text().splitlines()]
    assert lines[0] == ["defense", "attack", "eps", "draws", "n", "mean", "sem", "diff_to_max",
                        "ci_low", "ci_high", "action_change_rate", "seconds"]  # fmt: skip
    assert [(r[0], r[1], r[3]) for r in lines[1:]] == [
        ("sap-100", "pgd-10-eot", "1"), ("sap-100", "pgd-10-eot", "2"),  # sorted draw counts
        ("sap-100", "clean", ""), ("dense", "clean", ""), ("dense", "pgd-10-eot", ""),
    ]  # fmt: skip
    assert lines[2][7:10] == ["0.0", "0.0", "0.0"]  # the largest count is the reference
    assert 0.0 <= float(lines[1][10]) <= 1.0 and float(lines[1][11]) > 0.0  # rate, seconds
    assert "difference to 2 draws" in out
    folders = _check_resumes("eot_sweep_atari", args, tmp_path / "work", csv)
    assert folders == ["dense", "draws-1", "draws-2"]


def test_eot_sweep_atari_refuses_an_attack_without_eot(tmp_path: Path) -> None:
    line = _refused("eot_sweep_atari", "--attack", "pgd-10", "--work", str(tmp_path / "work"))
    assert line.endswith("has no -eot suffix: draws would change nothing")
    assert not (tmp_path / "work").exists()


def test_timed_sweep_writes_reward_against_attacked_fraction_and_resumes(tmp_path: Path) -> None:
    args = ("--thresholds", "0.06,0", "--episodes", "1", "--max-steps", "30", "--work",
            str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--no-plot")  # fmt: skip
    out = run_bench("timed_sweep", *args)
    csv = tmp_path / "out" / "timed_sweep.csv"
    lines = [line.split(",") for line in csv.read_text().splitlines()]
    assert lines[0] == ["defense", "attack", "eps", "threshold", "budget", "n", "mean", "sem",
                        "attacked_fraction", "action_change_rate", "seconds"]  # fmt: skip
    assert [(r[0], r[1], r[3]) for r in lines[1:]] == [
        ("dense", "timed-pgd-10-eot", "0.0"), ("sap-100", "timed-pgd-10-eot", "0.0"),
        ("dense", "timed-pgd-10-eot", "0.06"), ("sap-100", "timed-pgd-10-eot", "0.06"),
        ("dense", "clean", ""), ("sap-100", "clean", ""),
    ]  # fmt: skip
    fractions = [float(r[8]) for r in lines[1:]]
    assert fractions[:2] == [1.0, 1.0]  # threshold 0, budget 1: every step (the untimed attack)
    assert all(0.0 <= f <= 1.0 for f in fractions) and fractions[4:] == [0.0, 0.0]
    assert "timed-pgd-10-eot, eps 1, 1 games" in out
    folders = _check_resumes("timed_sweep", args, tmp_path / "work", csv)
    assert folders == ["threshold-0-budget-1", "threshold-0.06-budget-1"]


def test_timed_sweep_refuses_sap_without_eot(tmp_path: Path) -> None:
    line = _refused("timed_sweep", "--attack", "pgd-10", "--work", str(tmp_path / "work"))
    assert "has no -eot suffix" in line
    assert not (tmp_path / "work").exists()


def test_compare_ale_vector_prints_equal_frames_per_game_and_fire_reset() -> None:
    out = run_bench("compare_ale_vector", "--games", "Breakout", "--steps", "20")
    rows = re.findall(r"^Breakout\s+fire reset (on |off)\s+newest frames equal (\d+)/(\d+)", out,
                      re.MULTILINE)  # fmt: skip
    assert [r[0] for r in rows] == ["on ", "off"], out
    # without fire reset the two stacks give the same pixels (measured: 300 steps, 3 games)
    assert rows[1][1] == rows[1][2]
