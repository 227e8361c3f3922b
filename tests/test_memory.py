"""Tests of the process-level malloc setting."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_applies_and_values_are_unchanged() -> None:
    # A fresh interpreter: the setting is process-wide, so it must not leak into this one.
    code = (
        "import torch; from sap_rl.memory import keep_freed_memory\n"
        "x = torch.arange(2_000_000, dtype=torch.float32)\n"
        "before = (x.float() / 255.0).sum().item()\n"
        "assert keep_freed_memory()\n"
        "after = [(x.float() / 255.0).sum().item() for _ in range(3)]\n"
        "print(before, *after)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    values = out.stdout.split()
    assert len(values) == 4 and len(set(values)) == 1
    assert float(values[0]) == pytest.approx(float((torch.arange(2_000_000) / 255.0).sum()))
