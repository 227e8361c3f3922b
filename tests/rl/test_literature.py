"""The literature table (``sap-rl report --literature``) on the committed RoadRunner study."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from sap_rl.cli import main
from sap_rl.errors import UserError
from sap_rl.report import read_summary
from sap_rl.rl.literature import PUBLISHED, literature_table

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "results" / "rl" / "roadrunner-ddqn"


def _row(table: str, game: str, label: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == [game, label]:
            return cells[2:]
    raise AssertionError(f"no row {game} {label} in\n{table}")


def test_table_has_the_study_means_and_the_published_scores() -> None:
    rows = {(r.defense, r.attack, r.eps): r.mean for r in read_summary(STUDY)}
    table = literature_table([STUDY])
    games, dense, dense50, sap100, sap50, vanilla, sa_dqn, radial = _row(table, "RoadRunner", "1")
    assert games == "10"  # the study plays 10 games in every cell
    # The dense network is deterministic: its PGD-10-EOT cell is PGD-10.
    assert dense == f"{rows[('dense', 'pgd-10-eot', 1.0)]:.0f}"
    assert dense50 == "-"  # the study ran no PGD-50
    assert sap100 == f"{rows[('sap-100', 'pgd-10-eot', 1.0)]:.0f}"
    assert sap50 == f"{rows[('sap-50', 'pgd-10-eot', 1.0)]:.0f}"
    published = PUBLISHED["RoadRunner"]
    assert (vanilla, sa_dqn, radial) == tuple(
        f"{v:g}" for v in (published.vanilla_pgd10, published.sa_dqn_pgd10, published.radial_pgd_1)
    )
    clean = _row(table, "RoadRunner", "clean")
    assert clean[1] == f"{rows[('dense', 'fgsm', 0.0)]:.0f}"
    # Only the literature's budgets: the study's 0.5, 2, 4 and 8 are left out.
    assert [line.split("|")[2].strip() for line in table.splitlines()[2:]] == ["clean", "1"]


def _split(folder: Path, defenses: set[str], out: Path) -> Path:
    """A copy of ``folder``'s summary with only ``defenses``' rows (as two runs would write)."""
    out.mkdir()
    shutil.copy(folder / "run.json", out / "run.json")
    with open(folder / "summary.csv", newline="") as src, open(out / "summary.csv", "w") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, reader.fieldnames or [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(r for r in reader if r["defense"] in defenses)
    return out


def test_a_games_dense_and_sap_folders_merge_into_one_row(tmp_path: Path) -> None:
    dense = _split(STUDY, {"dense"}, tmp_path / "dense")
    sap = _split(STUDY, {"sap-100", "sap-50"}, tmp_path / "sap")
    assert literature_table([dense, sap]) == literature_table([STUDY])


def test_small_scores_keep_a_decimal_and_published_ones_their_own(tmp_path: Path) -> None:
    folder = _split(STUDY, {"dense"}, tmp_path / "freeway")
    text = (folder / "run.json").read_text().replace('"RoadRunner"', '"Freeway"')
    (folder / "run.json").write_text(text)
    rows = {(r.defense, r.eps): r.mean for r in read_summary(folder)}
    table = literature_table([folder])
    assert _row(table, "Freeway", "clean")[1] == f"{rows[('dense', 0.0)]:.1f}"
    assert _row(table, "Freeway", "1")[-1] == "21.95"  # RADIAL's, not rounded to 22.0


def test_a_game_without_published_scores_is_a_user_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    krull = ROOT / "results" / "rl" / "krull-ddqn"
    with pytest.raises(UserError, match="no published figures"):
        literature_table([krull])
    assert main(["report", "--literature", str(krull)]) == 2
    err = capsys.readouterr().err
    assert "Krull" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text", ['{"fingerprint": {"game": ["Pong"]}}', "[1]", "{not json"])
def test_a_damaged_run_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    folder = _split(STUDY, {"dense"}, tmp_path / "damaged")
    (folder / "run.json").write_text(text)
    assert main(["report", "--literature", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "run.json" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_report_literature_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--literature", str(STUDY)]) == 0
    assert capsys.readouterr().out.strip() == literature_table([STUDY])
    assert main(["report", "--literature", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "run.json" in err and "--out folder of an evaluation" in err


def test_readme_literature_tables_are_the_command_output() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(
        r"<!-- sap-rl report --literature ([^>]+?) -->\n(.*?)\n<!-- /report -->", readme, re.S
    )
    assert blocks, "the README has no literature table"
    for folders, table in blocks:
        expected = literature_table([ROOT / f for f in folders.split()])
        assert table == expected, f"README literature table for {folders} is stale"
