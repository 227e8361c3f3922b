"""Tests of the summary tables and plots."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from sap_rl.errors import UserError
from sap_rl.report import (
    REWARD_PANELS,
    _normalized_slope,
    _scaled_sem,
    folder_markdown,
    plot_metric,
    plot_metrics,
    plot_relative_reward,
    read_summary_csv,
    relative_reward_defined,
    replot,
    summarize,
    write_summary,
)

ROOT = Path(__file__).resolve().parents[1]


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


def _figure_of(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Keep the figures that save_figure would write, to inspect their axes."""
    import sap_rl.report as report

    figures: list[Any] = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.append(fig))
    return figures


def test_reward_plot_has_a_panel_on_dense_clean_scale_and_says_sem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = summarize(records(), random_score=-20.5)
    figures = _figure_of(monkeypatch)
    plot_metrics(rows, tmp_path / "x.png", REWARD_PANELS, title="Pong")
    fig = figures[0]
    axes = fig.axes
    assert len(axes) == 2  # one attack, two panels: relative and normalized
    assert "SEM" in fig.get_suptitle()
    assert "dense clean" in axes[1].get_ylabel()
    sap = next(c for c in axes[1].containers if c.get_label() == "sap-100")
    # On the dense scale SAP-100's clean point is below dense's 1.0, not 1.0 as in panel one.
    assert sap.lines[0].get_ydata()[0] == pytest.approx((11.0 + 20.5) / (19.0 + 20.5))
    # Ticks only at the measured budgets: no crowded 0 / 10^-1 symlog labels, no minor ticks.
    assert list(axes[1].get_xticks()) == [0.0, 2.0]
    assert [t.get_text() for t in axes[1].get_xticklabels()] == ["0", "2"]
    assert len(axes[1].xaxis.get_minorticklocs()) == 0


def test_reward_plot_drops_the_relative_row_when_scores_go_below_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    negative = summarize(records(), random_score=-20.5)  # dense falls to -20 under FGSM
    positive = summarize([(d, a, e, r + 21.0) for d, a, e, r in records()], random_score=0.5)
    assert not relative_reward_defined(negative)
    assert relative_reward_defined(positive)
    figures = _figure_of(monkeypatch)
    plot_relative_reward(negative, tmp_path / "x.png", title="Pong")
    plot_relative_reward(positive, tmp_path / "y.png", title="Pong")
    dropped, kept = figures
    assert [ax.get_ylabel() for ax in dropped.axes] == [REWARD_PANELS[1][1]]
    assert "not drawn: scores below 0" in dropped.get_suptitle()
    assert [ax.get_ylabel() for ax in kept.axes] == [label for _, label in REWARD_PANELS]
    assert "not drawn" not in kept.get_suptitle()


def test_error_bars_are_the_sem_on_the_metric_scale() -> None:
    rows = summarize(records(), random_score=-20.5)
    slope = _normalized_slope(rows)
    assert slope == pytest.approx(1.0 / (19.0 + 20.5))
    by_key = {(r.defense, r.eps): r for r in rows}
    sap = by_key[("sap-100", 2.0)]
    assert _scaled_sem(sap, "mean", rows, slope) == sap.sem
    assert _scaled_sem(sap, "normalized", rows, slope) == pytest.approx(sap.sem / 39.5)
    assert _scaled_sem(sap, "relative", rows, slope) == pytest.approx(sap.sem / 11.0)
    zero = summarize([("dense", "fgsm", 0.0, 4.0), ("dense", "fgsm", 1.0, -1.0),
                      ("dense", "fgsm", 1.0, 1.0)], random_score=0.0)  # fmt: skip
    # A mean of 0 with spread still has an error bar (it used to be drawn as 0).
    assert _scaled_sem(zero[1], "relative", zero, _normalized_slope(zero)) == pytest.approx(
        zero[1].sem / 4.0
    )


@pytest.mark.parametrize(
    ("folder", "plot"),
    [("results/rl/roadrunner-ddqn", "relative_reward.png"),
     ("results/vision/digits-dense", "accuracy.png")],
)  # fmt: skip
def test_replot_redraws_a_committed_result_from_its_summary(
    folder: str, plot: str, tmp_path: Path
) -> None:
    for name in ("summary.csv", "summary.json"):
        (tmp_path / name).write_bytes((ROOT / folder / name).read_bytes())
    assert replot(tmp_path) == tmp_path / plot
    assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [plot, "summary.csv", "summary.json"]
    )


def test_replot_of_a_folder_without_summary_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no summary\.csv"):
        replot(tmp_path)
    (tmp_path / "summary.csv").write_text("defense\n")
    (tmp_path / "summary.json").write_text('{"something": 1}')
    with pytest.raises(UserError, match="neither"):
        replot(tmp_path)


def test_sap_rl_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sap_rl.cli import main

    for name in ("summary.csv", "summary.json"):
        (tmp_path / name).write_bytes((ROOT / "results/rl/krull-ddqn" / name).read_bytes())
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "relative_reward.png").is_file()
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'relative_reward.png'}"
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no summary.csv" in capsys.readouterr().err


def test_readme_tables_are_the_report_command_output() -> None:
    """Every README table marked with a ``sap-rl report --markdown DIR`` comment is that output."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(
        r"<!-- sap-rl report --markdown (\S+) -->\n(.*?)\n<!-- /report -->", readme, re.S
    )
    assert len(blocks) >= 4  # the main job and the three study agents
    for folder, table in blocks:
        expected = folder_markdown(root / folder)
        assert table == expected, f"README table for {folder} is stale: rerun the command"


def test_report_markdown_command(capsys: pytest.CaptureFixture[str]) -> None:
    from sap_rl.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["report", "--markdown", str(root / "results/rl/krull-ddqn")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| defense | attack | clean | 0.5 | 1 | 2 | 4 | 8 |\n")
    assert "| SAP-50 | PGD-10-EOT | 3203 | 4013 | 3424 | 3509 | 3456 | 3315 |" in out


def test_report_markdown_vision_folder_has_accuracies_and_both_dense_pgd_rows() -> None:
    # Accuracies get three decimals; dense PGD-10 and PGD-10-EOT differ in vision (random
    # starts), so both rows stand under their own names.
    table = folder_markdown(ROOT / "results/vision/digits-dense")
    assert "| dense | PGD-10 | 0.989 | 0.983 | 0.981 | 0.972 | 0.922 | 0.680 | 0.117 |" in table
    assert "| dense | PGD-10-EOT | 0.989 | 0.983 | 0.981 | 0.972 | 0.922 | 0.689 | 0.126 |" in table
    assert "| dense | FGSM (= FGSM-EOT) |" in table


def test_report_differences_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import asdict

    from sap_rl.cli import main
    from sap_rl.stats import paired_differences

    recs = [("dense", "fgsm", 1.0, v) for v in (10.0, 20.0)]
    recs += [("sap-100", "fgsm", 1.0, v) for v in (12.0, 22.0)]
    diffs = [asdict(d) for d in paired_differences(recs, resamples=50)]
    write_summary(tmp_path, summarize(recs, random_score=0.0),
                  {"game": "Pong", "paired_differences": diffs})  # fmt: skip
    assert main(["report", "--differences", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| defense | attack | eps | minus dense | 95% CI | n |"
    assert out[2] == "| SAP-100 | FGSM | 1 | 2.0 | [2.0, 2.0] | 2 |"


def test_report_differences_of_an_older_summary_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from sap_rl.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["report", "--differences", str(root / "results/rl/krull-ddqn")]) == 0
    assert "| SAP-50 | PGD-10-EOT | 8 |" in capsys.readouterr().out
    summary = json.loads((root / "results/rl/krull-ddqn/summary.json").read_text())
    del summary["paired_differences"]  # as written before the differences existed
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "summary.csv").write_bytes(
        (root / "results/rl/krull-ddqn/summary.csv").read_bytes()
    )
    assert main(["report", "--differences", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no paired_differences" in err and "\n" not in err


def test_report_markdown_keeps_a_decimal_for_small_game_scores(tmp_path: Path) -> None:
    """Pong's means (-21 to 21) get one decimal; a folder with a mean of 1,000 or more none."""
    pong = [("dense", "pgd-10", 0.0, v) for v in (21.0, 20.0, 21.0)]
    pong += [("dense", "pgd-10", 1.0, v) for v in (-21.0, -20.0, -21.0)]
    write_summary(tmp_path, summarize(pong, random_score=-20.2), {})
    assert folder_markdown(tmp_path).splitlines()[2] == "| dense | PGD-10 | 20.7 | -20.7 |"
    big = [(d, a, e, v * 100) for d, a, e, v in pong]
    write_summary(tmp_path, summarize(big, random_score=-2020.0), {})
    assert folder_markdown(tmp_path).splitlines()[2] == "| dense | PGD-10 | 2067 | -2067 |"
