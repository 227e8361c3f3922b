"""Attack names on the command line: torch-free help with the real grammar, bad names refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sap_rl.attacks as attacks
from sap_rl.attacks import names, spec
from sap_rl.cli import main


@pytest.mark.parametrize(
    ("command", "timed"), [(["evaluate"], True), (["vision", "evaluate"], False)]
)
def test_evaluate_help_lists_the_grammar_without_importing_torch(
    command: list[str], timed: bool
) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sap_rl.cli", *command, "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "stable_baselines3" not in imported
    text = " ".join(result.stdout.split())  # argparse wraps the help
    for form in ("pgd-<steps>", "apgd-ce", "apgd-dlr", "square", "-eot", "transfer-<attack>"):
        assert form in text, form
    assert ("timed-<attack>" in text) == timed


def test_the_package_reexports_the_names_module_and_the_spec_uses_it() -> None:
    assert attacks.ATTACK_NAMES_HELP is names.ATTACK_NAMES_HELP is spec.ATTACK_NAMES_HELP
    assert spec.MAX_EOT_SAMPLES == attacks.MAX_EOT_SAMPLES == names.MAX_EOT_SAMPLES
    assert attacks.check_eot_samples is names.check_eot_samples
    assert attacks.parse_attack is spec.parse_attack
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        getattr(attacks, "nonsense")  # noqa: B009


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--attack", "timed-fgsm"], "sap-rl evaluate only"),
        (["--attack", "fgsm,transfer-foo"], "transfer-foo"),
        (["--eot-samples", "0"], "--eot-samples: expected a positive integer"),
        (["--eot-samples", "5000"], "eot_samples must be an integer from 1 to 1000"),
    ],
)
def test_vision_bad_attack_settings_are_one_line_and_write_nothing(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    # no model is needed: the settings are refused before the model is looked for
    argv = ["vision", "evaluate", "--model", str(tmp_path / "no-model"), "--out", str(out),
            "--examples", "4", "--quiet", *flags]  # fmt: skip
    code: int | str | None
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own checks (a flag's type) exit from the parser
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()
