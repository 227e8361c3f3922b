"""Tests of the command-line shell: help, version, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sap_rl.cli import main


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("sap-rl ")


def test_unknown_command_is_one_line_with_exit_code_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sap_rl.cli", "frobnicate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
