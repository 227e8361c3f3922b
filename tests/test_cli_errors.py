"""User mistakes on the command line: one line on stderr, exit code 2, no traceback, no files.

The cheap cases call :func:`sap_rl.cli.main` in this process; a few go through the real
``python -m sap_rl.cli`` in a subprocess (one per command family), because what the user sees
there (exit code, stderr, what is flushed at exit) is the contract.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sap_rl.cli import main

REPO = Path(__file__).resolve().parents[1]

# A path whose parent exists and looks writable, but where no folder can be made (even as root).
UNCREATABLE = "/proc/sap-rl-test/out"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) Pong agent folder."""
    from sap_rl.rl.agent import AgentCard, QNetwork, save_agent

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("agents") / "pong-test"
    save_agent(folder, QNetwork(6), AgentCard(name="pong-test", game="Pong", env_id="ALE/Pong-v5"))
    return folder


@pytest.fixture(scope="module")
def vision_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real digits model folder (one short epoch)."""
    from sap_rl.config import from_dict
    from sap_rl.vision.train import train
    from sap_rl.vision.train_config import TrainConfig

    schedule = [{"epochs": 1, "lr": 0.05}]
    config = from_dict(
        TrainConfig,
        {
            "dataset": "digits",
            "architecture": "digits_cnn",
            "batch_size": 256,
            "schedule": schedule,
        },
    )
    folder = tmp_path_factory.mktemp("models") / "digits-test"
    train(config, folder, quiet=True)
    return folder


@pytest.fixture
def commands(agent: Path, vision_model: Path) -> dict[str, Callable[[str], list[str]]]:
    """The four commands that write an output folder, as argv for a given ``--out``."""
    return {
        "train": lambda out: ["train", "--game", "Pong", "--out", out],
        "evaluate": lambda out: ["evaluate", "--agent", str(agent), "--quiet", "--out", out],
        "vision train": lambda out: ["vision", "train", "--epochs", "1", "--quiet", "--out", out],
        "vision evaluate": lambda out: [
            "vision", "evaluate", "--model", str(vision_model), "--quiet", "--out", out,
        ],
    }  # fmt: skip


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(argv)`` in-process; assert exit code 2 and one stderr line; return that line."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors exit from inside main
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sap_rl.cli", *args], capture_output=True,
                          text=True, check=False, cwd=REPO, timeout=120)  # fmt: skip


def _assert_user_error(proc: subprocess.CompletedProcess[str], match: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sap-rl: error: ") and match in lines[0], lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else b""
            for p in sorted(folder.rglob("*"))}  # fmt: skip


# --------------------------------------------------------------------------- --out


@pytest.mark.parametrize("command", ["train", "evaluate", "vision train", "vision evaluate"])
@pytest.mark.parametrize("where", ["is a file", "under a file", "cannot be created"])
def test_bad_out_is_one_line_and_writes_nothing(
    command: str,
    where: str,
    commands: dict[str, Callable[[str], list[str]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a default output folder would show up here
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    out = {"is a file": str(file), "under a file": f"{file}/sub",
           "cannot be created": UNCREATABLE}[where]  # fmt: skip
    line = _one_line_error(commands[command](out), capsys)
    assert line.startswith("sap-rl: error: ")
    if where == "cannot be created":
        assert "sap-rl-test" in line
        assert not Path(UNCREATABLE).parent.exists()
    else:
        assert "notes.txt is a file, not a folder" in line
    assert _tree(tmp_path) == {"notes.txt": b"keep me"}


def test_bad_out_through_the_real_cli(tmp_path: Path) -> None:
    file = tmp_path / "some-file"
    file.write_text("")
    proc = _cli(["train", "--game", "Pong", "--out", f"{file}/sub"])
    _assert_user_error(proc, "some-file is a file, not a folder")
    assert _tree(tmp_path) == {"some-file": b""}


_READ_ONLY_RUNS = """
import contextlib, io, json, sys
from sap_rl.cli import main

results = {}
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    results[" ".join(argv)] = [code, err.getvalue()]
print(json.dumps(results))
"""


def test_out_on_a_read_only_file_system(
    commands: dict[str, Callable[[str], list[str]]], tmp_path: Path
) -> None:
    """A real read-only mount (EROFS even for root), made in a user namespace where allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a read-only file system")
    mount = tmp_path / "read-only"
    mount.mkdir()
    argvs = [make(out) for make in commands.values() for out in (str(mount), f"{mount}/new/out")]
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         'mount -t tmpfs -o ro none "$1" || exit 99; shift; exec "$@"', "sh", str(mount),
         sys.executable, "-c", _READ_ONLY_RUNS, json.dumps(argvs)],
        capture_output=True, text=True, check=False, cwd=REPO, timeout=120,
    )  # fmt: skip
    if proc.returncode != 0 and not proc.stdout.strip():
        pytest.skip(f"cannot mount a read-only file system here: {proc.stderr.strip()[:200]}")
    results = json.loads(proc.stdout)
    assert len(results) == 8
    for argv, (code, err) in results.items():
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert err.startswith("sap-rl: error: --out ") and "read-only file system" in err, err
    assert list(mount.iterdir()) == []


# --------------------------------------------------------------------------- files read back


def test_run_json_that_is_not_an_object(
    agent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "run.json").write_text("[1, 2]\n")
    line = _one_line_error(
        ["evaluate", "--agent", str(agent), "--quiet", "--out", str(out)], capsys
    )
    assert "run.json: not a run file of sap-rl evaluate" in line
    assert _tree(out) == {"run.json": b"[1, 2]\n"}


# --------------------------------------------------------------------------- validate first


@pytest.mark.parametrize("command", [["vision", "train"], ["vision", "evaluate", "--model", "m"]])
def test_negative_vision_seed_is_refused(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _one_line_error([*command, "--seed=-1", "--out", str(tmp_path / "out")], capsys)
    assert "argument --seed: expected an integer >= 0, got '-1'" in line
    assert list(tmp_path.iterdir()) == []


def test_cifar10_without_data_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "cifar"
    proc = _cli(["vision", "train", "--dataset", "cifar10", "--out", str(out)])
    _assert_user_error(proc, "cifar10 needs --data-root")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_train_on_a_missing_gpu_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    line = _one_line_error(
        ["train", "--game", "Pong", "--device", "cuda", "--out", str(out)], capsys
    )
    assert "cuda" in line
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- closed stdout


@pytest.mark.parametrize("unbuffered", [False, True])
def test_closed_stdout_is_quiet(agent: Path, unbuffered: bool) -> None:
    """``sap-rl agents | head -1``: the reader goes away before sap-rl prints anything."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sap_rl.cli", "agents", str(agent.parent)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 1
    assert err == ""
