"""``sap-rl vision evaluate`` runs the AutoAttack and margin/restart attacks through AttackSpec."""

from __future__ import annotations

import csv
from pathlib import Path

from sap_rl.cli import main

ATTACKS = "apgd-ce-5-eot,apgd-dlr-5,square-300,pgd-3-cw-r2"


def test_new_attacks_run_in_the_vision_evaluator(digits_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["vision", "evaluate", "--model", str(digits_model_dir), "--out", str(out),
                 "--eps", "0,24", "--defense", "dense,sap-100", "--attack", ATTACKS,
                 "--mc-samples", "2", "--grad-samples", "2", "--eot-samples", "2",
                 "--examples", "24", "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["defense"], r["attack"], r["eps"]) for r in rows} == {
        (d, a, e)
        for d in ("dense", "sap-100")
        for a in [*ATTACKS.split(","), "worst"]
        for e in ("0.0", "24.0")
    }
    accuracy = {(r["defense"], r["attack"], r["eps"]): float(r["mean"]) for r in rows}
    for attack in ATTACKS.split(","):  # 24 grey levels fool the dense digits CNN on most images
        assert accuracy[("dense", attack, "24.0")] < accuracy[("dense", attack, "0.0")], attack
