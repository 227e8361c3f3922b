"""The gradient-masking checks (:mod:`sap_rl.sanity`): rules, storage, report, configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sap_rl.errors import UserError
from sap_rl.report import SummaryRow, folder_markdown, read_checks, summarize, write_summary
from sap_rl.sanity import (
    BEATS_WHITE_BOX,
    DEFAULT_LARGE_EPS,
    LARGE_BUDGET,
    Check,
    attack_family,
    check_large_eps,
    large_budget_checks,
    sanity_checks,
    warning_lines,
    white_box_checks,
)

ROOT = Path(__file__).resolve().parents[1]
Record = tuple[str, str, float, float]


def _row(defense: str, attack: str, eps: float, mean: float, sem: float,
         normalized: float = math.nan) -> SummaryRow:  # fmt: skip
    return SummaryRow(defense, attack, eps, 100, mean, sem * 10.0, sem, math.nan, normalized)


def _accuracy_records(cells: dict[tuple[str, str, float], list[int]]) -> list[Record]:
    return [(d, a, e, float(v)) for (d, a, e), values in cells.items() for v in values]


# ---- large budget -------------------------------------------------------------------------------


def test_large_budget_flags_a_row_above_the_floor_and_not_one_at_it() -> None:
    # 100 images, chance 0.1, dense clean 0.9 (scale 0.8, tolerance 0.04).
    ones = [1] * 90 + [0] * 10
    cells = {
        ("dense", "fgsm", 0.0): ones,
        ("dense", "pgd-10", 0.0): ones,
        ("dense", "fgsm", 64.0): [1] * 50 + [0] * 50,  # 0.5: far above chance
        ("dense", "pgd-10", 64.0): [1] * 10 + [0] * 90,  # 0.1: chance
    }
    rows = summarize(_accuracy_records(cells), random_score=0.1)
    checks = large_budget_checks(rows, floor=0.1, floor_name="chance")
    assert [(c.kind, c.attack, c.eps) for c in checks] == [(LARGE_BUDGET, "fgsm", 64.0)]
    (check,) = checks
    assert check.value == pytest.approx(0.5) and check.reference == 0.1
    assert check.reference_name == "chance" and "above chance" in check.message


def test_large_budget_rule_is_mean_minus_two_se_above_floor_plus_tolerance() -> None:
    clean = _row("dense", "pgd-10", 0.0, 0.9, 0.0, normalized=1.0)  # scale 0.8: margin 0.04
    just_in = _row("dense", "pgd-10", 64.0, 0.1 + 0.04 + 2 * 0.01 - 1e-9, 0.01)
    just_out = _row("dense", "fgsm", 64.0, 0.1 + 0.04 + 2 * 0.01 + 1e-6, 0.01)
    noisy = _row("dense", "apgd-ce", 64.0, 0.3, 0.09)  # 0.3 - 0.18 = 0.12 < 0.14
    found = large_budget_checks([clean, just_in, just_out, noisy], floor=0.1)
    assert [c.attack for c in found] == ["fgsm"]


def test_large_budget_skips_small_eps_worst_and_timed_rows() -> None:
    rows = [
        _row("dense", "fgsm", 32.0, 0.9, 0.01),  # below the threshold
        _row("dense", "worst", 64.0, 0.9, 0.01),  # a minimum over the attack rows
        _row("dense", "timed-fgsm", 64.0, 0.9, 0.01),  # leaves steps clean by design
    ]
    assert large_budget_checks(rows, floor=0.1) == []
    assert [c.eps for c in large_budget_checks(rows, floor=0.1, large_eps=16)] == [32.0]
    # Without a clean reference (normalized NaN) the tolerance is 0: the rule is mean - 2 SE.
    assert large_budget_checks([_row("d", "fgsm", 64.0, 0.13, 0.01)], floor=0.1) != []
    assert large_budget_checks([_row("d", "fgsm", 64.0, 0.11, 0.01)], floor=0.1) == []


def test_large_budget_on_rewards_uses_the_random_policy_and_the_clean_range() -> None:
    # Game scores: random policy 100, dense clean 1100 (tolerance 50 points).
    rewards: list[Record] = [("dense", "fgsm", 0.0, v) for v in (1000.0, 1200.0)]
    rewards += [("dense", "fgsm", 64.0, v) for v in (130.0, 140.0)]  # within 50 + 2 SE
    rewards += [("dense", "pgd-10", 64.0, v) for v in (800.0, 820.0)]  # far above
    rows = summarize(rewards, random_score=100.0)
    checks = large_budget_checks(rows, floor=100.0, floor_name="the random policy")
    assert [c.attack for c in checks] == ["pgd-10"]
    assert "the random policy (100)" in checks[0].message


def test_large_eps_is_validated() -> None:
    assert check_large_eps(64) == 64.0 and check_large_eps(math.inf) == math.inf
    for bad in (0, -1, math.nan, "64", True):
        with pytest.raises(UserError, match="large_eps must be"):
            check_large_eps(bad)  # type: ignore[arg-type]


# ---- transfer and gradient-free attacks ---------------------------------------------------------


def test_attack_families() -> None:
    names = ["fgsm", "pgd-10-eot", "apgd-dlr", "transfer-pgd-10", "timed-transfer-fgsm",
             "square", "square-1000-eot", "timed-fgsm", "worst"]  # fmt: skip
    assert [attack_family(n) for n in names] == [
        "white-box", "white-box", "white-box", "transfer", "transfer",
        "gradient-free", "gradient-free", "white-box", "worst",
    ]  # fmt: skip


def _paired_cells() -> dict[tuple[str, str, float], list[int]]:
    white = [1] * 60 + [0] * 40  # pgd-10-eot: 0.60
    return {
        ("sap", "fgsm", 8.0): [1] * 80 + [0] * 20,  # 0.80, a weaker white-box attack
        ("sap", "pgd-10-eot", 8.0): white,
        ("sap", "transfer-pgd-10", 8.0): [1] * 30 + [0] * 70,  # 0.30: beats the white-box one
        ("sap", "square", 8.0): [1] * 70 + [0] * 30,  # 0.70: does not
        ("dense", "pgd-10", 8.0): white,
        ("dense", "transfer-pgd-10", 8.0): white,  # on dense, the same attack
    }


def test_transfer_row_beating_white_box_is_flagged_and_one_that_does_not_is_not() -> None:
    records = _accuracy_records(_paired_cells())
    rows = summarize(records, random_score=0.1)
    checks = white_box_checks(rows, records)
    assert [(c.kind, c.defense, c.attack) for c in checks] == [
        (BEATS_WHITE_BOX, "sap", "transfer-pgd-10")
    ]
    (check,) = checks
    # the reference is the best white-box attack (lowest mean), not FGSM
    assert (check.reference_name, check.reference) == ("pgd-10-eot", pytest.approx(0.6))
    assert "95% CI" in check.message and "too optimistic" in check.message


def test_white_box_check_pairs_when_it_can() -> None:
    # Transfer is lower on 10 of 400 images and equal on all others: a gap of 0.025, inside
    # 2 x the means' combined standard error (0.035), but every paired difference is <= 0.
    white = [1] * 200 + [0] * 200
    transfer = [0] * 10 + [1] * 190 + [0] * 200
    cells = {("sap", "pgd-10", 4.0): white, ("sap", "transfer-pgd-10", 4.0): transfer}
    records = _accuracy_records(cells)
    rows = summarize(records, random_score=0.1)
    assert white_box_checks(rows) == []  # means and SEs: within noise
    assert [c.attack for c in white_box_checks(rows, records)] == ["transfer-pgd-10"]
    # Paired differences of mixed sign around a small mean gap are noise.
    mixed = [0] * 10 + [1] * 190 + [1] * 8 + [0] * 192
    cells[("sap", "transfer-pgd-10", 4.0)] = mixed
    records = _accuracy_records(cells)
    assert white_box_checks(summarize(records, random_score=0.1), records) == []


def test_white_box_check_on_means_without_records() -> None:
    rows = [_row("sap", "pgd-10", 8.0, 0.6, 0.02), _row("sap", "square", 8.0, 0.5, 0.02),
            _row("sap", "transfer-fgsm", 8.0, 0.57, 0.02)]  # fmt: skip
    assert [c.attack for c in white_box_checks(rows)] == ["square"]  # 0.1 > 2 x 0.028
    # nothing to compare against: no white-box row at that (defense, eps)
    assert white_box_checks([_row("sap", "square", 8.0, 0.0, 0.0)]) == []


# ---- summary.json, the report and the commands' lines -------------------------------------------


def _flagged_folder(tmp_path: Path) -> tuple[Path, list[Check]]:
    records = _accuracy_records(_paired_cells())
    records += [(d, a, 0.0, 1.0) for d in ("dense", "sap") for a in ("pgd-10", "fgsm")]
    rows = summarize(records, random_score=0.1)
    checks = sanity_checks(rows, records, floor=0.1, large_eps=8.0, floor_name="chance")
    from dataclasses import asdict

    write_summary(tmp_path, rows, {"chance_accuracy": 0.1, "checks": [asdict(c) for c in checks]})
    return tmp_path, checks


def test_checks_are_stored_in_summary_json_and_shown_by_the_report(tmp_path: Path) -> None:
    folder, checks = _flagged_folder(tmp_path)
    kinds = {c.kind for c in checks}
    assert kinds == {LARGE_BUDGET, BEATS_WHITE_BOX}
    stored = json.loads((folder / "summary.json").read_text())["checks"]
    assert [Check.from_dict(c) for c in stored] == checks == read_checks(folder)
    assert set(stored[0]) == {"kind", "defense", "attack", "eps", "value", "reference",
                              "reference_name", "message"}  # fmt: skip
    text = folder_markdown(folder)
    table, flags = text.split("\n\nGradient-masking checks: ")
    assert table.startswith("| defense | attack |") and flags.startswith(f"{len(checks)} flags")
    for check in checks:
        assert f"- {check.kind}: {check.message}" in flags
    lines = warning_lines(stored)
    assert len(lines) == len(checks) and all(s.startswith("sap-rl: warning: ") for s in lines)


def test_report_markdown_is_the_table_alone_without_flags(tmp_path: Path) -> None:
    rows = summarize([("dense", "fgsm", 0.0, 1.0), ("dense", "fgsm", 8.0, 0.0)], random_score=0.1)
    write_summary(tmp_path, rows, {"chance_accuracy": 0.1, "checks": []})
    assert "Gradient-masking" not in folder_markdown(tmp_path)
    assert read_checks(tmp_path) == []


def test_sap_rl_report_markdown_prints_the_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sap_rl.cli import main

    folder, checks = _flagged_folder(tmp_path)
    assert main(["report", "--markdown", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "Gradient-masking checks:" in printed and checks[0].message in printed


# ---- configs and committed results --------------------------------------------------------------


def test_large_eps_is_a_config_value_outside_the_fingerprints() -> None:
    from sap_rl.config import from_dict
    from sap_rl.rl.eval_config import AtariEvalConfig
    from sap_rl.rl.evaluate_cells import fingerprint
    from sap_rl.rl.games import resolve_game
    from sap_rl.vision.evaluate import VisionEvalConfig

    assert AtariEvalConfig().large_eps == VisionEvalConfig().large_eps == DEFAULT_LARGE_EPS == 64
    assert from_dict(AtariEvalConfig, {"large_eps": 16}).large_eps == 16.0
    for cls in (AtariEvalConfig, VisionEvalConfig):
        with pytest.raises(UserError, match="large"):
            from_dict(cls, {"large_eps": 0})
    from sap_rl.rl.agent import AgentCard

    card = AgentCard(name="a", game="Pong", env_id="ALE/Pong-v5")
    game = resolve_game("Pong")
    assert fingerprint(card, game, AtariEvalConfig(large_eps=1.0)) == fingerprint(
        card, game, AtariEvalConfig()
    )


@pytest.mark.parametrize("name", ["digits-dense-attacks", "digits-harp-90"])
def test_committed_vision_cells_keep_their_fingerprint(name: str) -> None:
    import torch
    from safetensors import safe_open

    from sap_rl.config import load_config
    from sap_rl.vision.evaluate import VisionEvalConfig, _fingerprint
    from sap_rl.vision.models import load_model

    out = ROOT / "results" / "vision" / name
    meta = json.loads((out / "summary.json").read_text())
    _, card = load_model(ROOT / meta["model"]["path"])
    prints = {
        _fingerprint(
            card,
            load_config(VisionEvalConfig, out / "eval_config.yaml", {"large_eps": large_eps}),
            meta["examples"],
            torch.device("cpu"),
        )
        for large_eps in (DEFAULT_LARGE_EPS, 8.0)
    }
    assert len(prints) == 1
    # The cell files are not committed (.gitignore); where they are, they must still match.
    cell = next((out / "cells").glob("*.safetensors"), None)
    if cell is not None:
        with safe_open(str(cell), framework="pt") as handle:
            assert prints == {(handle.metadata() or {})["fingerprint"]}
