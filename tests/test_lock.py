"""The output-folder lock (:mod:`sap_rl.lock`), with real second processes holding it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sap_rl.errors import UserError
from sap_rl.lock import LOCK_FILE, _acquire_by_pid, _release, output_lock, read_owner

REPO = Path(__file__).resolve().parents[1]
Holder = Callable[[Path], "subprocess.Popen[str]"]


def test_a_second_writer_is_refused_until_the_holder_is_killed(
    tmp_path: Path, lock_holder: Holder
) -> None:
    out = tmp_path / "out"
    holder = lock_holder(out)
    assert read_owner(out)["pid"] == holder.pid
    with pytest.raises(UserError, match=f"pid {holder.pid} on ") as err, output_lock(out):
        pass
    assert str(out) in str(err.value) and "\n" not in str(err.value)

    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    # The killed holder's file is still there, but the kernel dropped its flock: it is stale.
    assert read_owner(out)["pid"] == holder.pid
    with output_lock(out):
        assert read_owner(out)["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--agent", str(REPO / "agents" / "krull-ddqn"), "--quiet"],
        ["train", "--game", "Breakout", "--device", "cpu"],
        ["vision", "train", "--dataset", "digits", "--quiet"],
    ],
    ids=["evaluate", "train", "vision-train"],
)
def test_commands_refuse_a_locked_out_with_exit_code_2(
    tmp_path: Path, lock_holder: Holder, argv: list[str]
) -> None:
    out = tmp_path / "out"
    holder = lock_holder(out)
    result = subprocess.run(
        [sys.executable, "-m", "sap_rl.cli", *argv, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"pid {holder.pid}" in result.stderr
    assert str(out) in result.stderr
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing written beside the lock


def test_lock_file_names_the_owner_and_goes_on_exit(tmp_path: Path) -> None:
    with output_lock(tmp_path) as folder:
        owner = json.loads((folder / LOCK_FILE).read_text())
        assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
    assert folder == tmp_path and not (tmp_path / LOCK_FILE).exists()


def test_folders_it_created_go_unless_something_was_written(tmp_path: Path) -> None:
    with output_lock(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a").exists()  # a refused run leaves nothing behind
    with output_lock(tmp_path / "a" / "b") as folder:
        (folder / "result.json").write_text("{}")
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["result.json"]


def test_released_on_an_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), output_lock(tmp_path):
        raise RuntimeError("the run failed")
    with output_lock(tmp_path):  # free again
        pass


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"), output_lock(tmp_path / "f"):
        pass
    with (
        pytest.raises(UserError, match="cannot create the folder"),
        output_lock(tmp_path / "f" / "sub"),
    ):
        pass


def test_without_flock_a_dead_pid_is_stale_and_a_live_one_is_not(tmp_path: Path) -> None:
    # The fallback for file systems without flock: the pid recorded in the file decides.
    path = tmp_path / LOCK_FILE
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    host = socket.gethostname()
    path.write_text(json.dumps({"pid": int(exited.stdout), "host": host}))
    fd = _acquire_by_pid(path)
    assert read_owner(tmp_path)["pid"] == os.getpid()
    _release(path, fd)
    assert not path.exists()

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        path.write_text(json.dumps({"pid": sleeper.pid, "host": host}))
        with pytest.raises(UserError, match=f"pid {sleeper.pid} on {host}"):
            _acquire_by_pid(path)
        assert read_owner(tmp_path)["pid"] == sleeper.pid  # left alone
    finally:
        sleeper.kill()
        sleeper.wait()
