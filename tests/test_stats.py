"""Worst case over attacks and paired bootstrap intervals, on numbers with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from sap_rl.report import markdown_table, summarize
from sap_rl.stats import WORST, bootstrap_mean_ci, paired_differences, with_worst

Record = tuple[str, str, float, float]


def _records() -> list[Record]:
    out: list[Record] = []
    clean = {"dense": [10.0, 20.0, 30.0], "sap": [12.0, 18.0, 33.0]}
    attacked = {
        ("dense", "fgsm"): [5.0, 9.0, 1.0],
        ("dense", "pgd"): [6.0, 2.0, 4.0],
        ("sap", "fgsm"): [8.0, 7.0, 9.0],
        ("sap", "pgd"): [9.0, 3.0, 9.5],
    }
    for attack in ("fgsm", "pgd"):  # the clean games belong to every attack, as the evaluators do
        for defense, values in clean.items():
            out += [(defense, attack, 0.0, v) for v in values]
    for (defense, attack), values in attacked.items():
        out += [(defense, attack, 2.0, v) for v in values]
    return out


def test_worst_row_is_the_per_game_minimum_of_the_attack_rows() -> None:
    records = with_worst(_records(), ["fgsm", "pgd"])
    worst: dict[tuple[str, float], list[float]] = {}
    for defense, attack, eps, value in records:
        if attack == WORST:
            worst.setdefault((defense, eps), []).append(value)
    assert worst == {
        ("dense", 0.0): [10.0, 20.0, 30.0],  # at eps 0 the worst case is the clean games
        ("sap", 0.0): [12.0, 18.0, 33.0],
        ("dense", 2.0): [5.0, 2.0, 1.0],
        ("sap", 2.0): [8.0, 3.0, 9.0],
    }
    rows = {(r.defense, r.attack, r.eps): r for r in summarize(records, random_score=0.0)}
    assert rows[("sap", WORST, 2.0)].mean == pytest.approx(20.0 / 3)
    # below each attack's mean: the minimum is per game, not the worst attack on average
    assert rows[("sap", WORST, 2.0)].mean < min(rows[("sap", a, 2.0)].mean for a in ("fgsm", "pgd"))
    assert rows[("dense", WORST, 0.0)].mean == rows[("dense", "fgsm", 0.0)].mean
    assert "| dense | worst case (over attacks) | 20 | 3 |" in markdown_table(list(rows.values()))


def test_worst_needs_every_attack_and_two_of_them() -> None:
    partial = [r for r in _records() if not (r[0] == "sap" and r[1] == "pgd" and r[2] == 2.0)]
    keys = {(d, e) for d, a, e, _ in with_worst(partial, ["fgsm", "pgd"]) if a == WORST}
    assert keys == {("dense", 0.0), ("sap", 0.0), ("dense", 2.0)}
    one = [r for r in _records() if r[1] == "fgsm"]
    assert with_worst(one, ["fgsm"]) == one
    # an attack of the run with no cell at all (not reached yet): no worst rows anywhere
    assert with_worst(_records(), ["fgsm", "pgd", "pgd-20"]) == _records()


def test_constant_difference_gives_a_zero_width_interval_at_that_value() -> None:
    dense = [1.0, 4.0, 2.5, 7.0, 0.0]
    records: list[Record] = [("dense", "fgsm", 1.0, v) for v in dense]
    records += [("sap", "fgsm", 1.0, v + 0.5) for v in dense]
    (d,) = paired_differences(records, resamples=500, seed=3)
    assert (d.defense, d.attack, d.eps, d.n, d.resamples, d.seed) == ("sap", "fgsm", 1.0, 5, 500, 3)
    assert d.diff == 0.5
    assert d.ci_low == d.ci_high == 0.5


def test_bootstrap_is_seeded_and_matches_a_plain_index_bootstrap() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(1.0, 2.0, size=40).round(1).tolist()
    first = bootstrap_mean_ci(values, seed=7)
    assert bootstrap_mean_ci(values, seed=7) == first
    assert bootstrap_mean_ci(values, seed=8) != first
    # the usual index resampling gives the same interval up to Monte Carlo noise
    draws = np.asarray(values)[np.random.default_rng(1).integers(0, 40, size=(20_000, 40))]
    expected = np.quantile(draws.mean(axis=1), [0.025, 0.975])
    assert first == pytest.approx(tuple(expected), abs=0.05)
    # and the normal approximation, mean +- 1.96 SEM
    sem = np.std(values, ddof=1) / np.sqrt(40)
    assert first == pytest.approx((np.mean(values) - 1.96 * sem, np.mean(values) + 1.96 * sem),
                                  abs=0.1)  # fmt: skip


def test_paired_differences_skip_the_baseline_and_unmatched_cells() -> None:
    records = [*_records(), ("sap", "square", 2.0, 1.0)]  # dense has no square cell
    diffs = paired_differences(records, resamples=100)
    assert [(d.defense, d.attack, d.eps) for d in diffs] == [
        ("sap", "fgsm", 0.0), ("sap", "pgd", 0.0), ("sap", "fgsm", 2.0), ("sap", "pgd", 2.0),
    ]  # fmt: skip
    assert diffs[2].diff == pytest.approx(np.mean([3.0, -2.0, 8.0]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"values": []}, "no values"), ({"resamples": 0}, "resamples"), ({"level": 1.0}, "level")],
)
def test_bad_bootstrap_arguments(kwargs: dict, message: str) -> None:
    args = {"values": [1.0, 2.0], **kwargs}
    with pytest.raises(ValueError, match=message):
        bootstrap_mean_ci(args.pop("values"), **args)
