"""``sap-rl evaluate`` runs the AutoAttack and margin/restart attacks through AttackSpec, on the
shipped RoadRunner agent and the real ALE (a few capped steps per game)."""

from __future__ import annotations

import csv
from pathlib import Path

from sap_rl.cli import main

ATTACKS = "apgd-ce-3-eot,apgd-dlr-2,square-20-eot,pgd-2-cw-r2"


def test_new_attacks_run_in_the_rl_evaluator(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--agent", "roadrunner-ddqn", "--defense", "dense,sap-100",
                 "--attack", ATTACKS, "--eps", "0,1", "--episodes", "1", "--n-envs", "1",
                 "--eot-samples", "2", "--max-steps", "6", "--threads", "1", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["defense"], r["attack"], r["eps"]) for r in rows} == {
        (d, a, e) for d in ("dense", "sap-100") for a in [*ATTACKS.split(","), "worst"]
        for e in ("0.0", "1.0")
    }  # fmt: skip
