"""Tests of the summary tables and plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from sap_rl.report import plot_metric, read_summary_csv, summarize, write_summary


def records() -> list[tuple[str, str, float, float]]:
    out = []
    for reward in (20.0, 18.0, 19.0):
        out.append(("dense", "fgsm", 0.0, reward))
    for reward in (-21.0, -19.0):
        out.append(("dense", "fgsm", 2.0, reward))
    for reward in (10.0, 12.0):
        out.append(("sap-100", "fgsm", 0.0, reward))
        out.append(("sap-100", "fgsm", 2.0, reward / 2))
    return out


def test_summary_statistics_relative_and_normalized() -> None:
    rows = summarize(records(), random_score=-20.5)
    by_key = {(r.defense, r.eps): r for r in rows}
    clean = by_key[("dense", 0.0)]
    assert clean.n == 3 and clean.mean == 19.0
    assert clean.std == pytest.approx(1.0)
    assert clean.sem == pytest.approx(1.0 / math.sqrt(3))
    attacked = by_key[("dense", 2.0)]
    assert attacked.relative == pytest.approx(-20.0 / 19.0)
    assert attacked.normalized == pytest.approx((-20.0 + 20.5) / (19.0 + 20.5))
    sap = by_key[("sap-100", 2.0)]
    assert sap.relative == pytest.approx(0.5)  # relative to SAP's own clean score
    assert sap.normalized == pytest.approx((5.5 + 20.5) / (19.0 + 20.5))
    assert [r.defense for r in rows] == ["dense", "dense", "sap-100", "sap-100"]


def test_missing_baselines_give_nan_not_errors() -> None:
    rows = summarize([("sap-100", "pgd-10", 4.0, 3.0)], random_score=0.0)
    assert math.isnan(rows[0].relative) and math.isnan(rows[0].normalized)
    zero = summarize([("dense", "fgsm", 0.0, 0.0), ("dense", "fgsm", 1.0, 0.0)], random_score=0.0)
    assert math.isnan(zero[1].relative)
    assert rows[0].std == 0.0


def test_write_summary_and_read_it_back(tmp_path: Path) -> None:
    rows = summarize(records(), random_score=-20.5)
    write_summary(tmp_path, rows, {"config": {"game": "Pong"}})
    assert read_summary_csv(tmp_path / "summary.csv") == rows
    with open(tmp_path / "summary.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == [
        "defense",
        "attack",
        "eps",
        "n",
        "mean",
        "std",
        "sem",
        "relative",
        "normalized",
    ]
    payload = json.loads((tmp_path / "summary.json").read_text())
    assert payload["config"]["game"] == "Pong" and len(payload["summary"]) == len(rows)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rows = summarize(records(), random_score=-20.5)
    plot_metric(rows, tmp_path / "relative_reward.png", metric="relative", title="Pong")
    data = (tmp_path / "relative_reward.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="metric"):
        plot_metric(rows, tmp_path / "x.png", metric="median")
