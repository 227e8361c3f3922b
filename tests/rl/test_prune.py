"""``sap-rl prune``: HARP on an Atari agent by robust distillation, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sap_rl.cli import main
from sap_rl.config import from_dict
from sap_rl.errors import UserError
from sap_rl.rl.agent import load_agent, read_card
from sap_rl.rl.prune import AgentPruneConfig, collect_frames

AGENT = Path(__file__).resolve().parents[2] / "agents" / "roadrunner-ddqn"
TINY = ["--frames", "40", "--prune-epochs", "1", "--finetune-epochs", "1", "--steps", "1",
        "--device", "cpu", "--quiet"]  # fmt: skip


def test_prune_writes_an_agent_folder_every_command_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rr-harp"
    assert main(["prune", "--agent", str(AGENT), "--sparsity", "0.9", "--out", str(out),
                 *TINY]) == 0  # fmt: skip
    assert "pruned to sparsity" in capsys.readouterr().out
    net, card = load_agent(out, game="RoadRunner")
    info = card.pruning
    assert info["pruned_from"] == "roadrunner-ddqn" and info["achieved_sparsity"] >= 0.9
    assert info["distillation"]["frames"] == 40 and card.algorithm == "DDQN + HARP"
    assert info["flops"] < info["dense_flops"]
    zeros = sum(int((p == 0).sum()) for name, p in net.named_parameters() if p.ndim > 1)
    assert zeros >= info["prunable_weights"] - info["kept_weights"]
    assert (out / "prune.yaml").is_file()
    assert main(["agents", str(tmp_path)]) == 0
    assert "rr-harp" in capsys.readouterr().out


def test_collected_frames_are_seeded() -> None:
    net, _ = load_agent(AGENT)
    kwargs = {"frames": 6, "every": 2, "epsilon": 0.5, "n_envs": 2, "seed": 3}
    first = collect_frames(net, "RoadRunner", **kwargs)  # type: ignore[arg-type]
    again = collect_frames(net, "RoadRunner", **kwargs)  # type: ignore[arg-type]
    assert first.shape == (6, 4, 84, 84) and first.dtype == torch.uint8
    assert torch.equal(first, again)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sparsity", "1"], "sparsity must be in (0, 1)"),
        (["--sparsity", "-0.5"], "sparsity must be in (0, 1)"),
        (["--sparsity", "0.9", "--objective", "trades"], "robust distillation"),
        (["--sparsity", "0.9", "--config", "TEMP0"], "temperature must be > 0"),
        (["--sparsity", "0.9", "--strategy", "snip"], "invalid choice"),
        (["--sparsity", "0.9", "--exclude", "*"], "no prunable layers"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "never"
    if "TEMP0" in extra:
        (tmp_path / "t.yaml").write_text("temperature: 0\n")
        extra = [str(tmp_path / "t.yaml") if e == "TEMP0" else e for e in extra]
    try:
        code = main(["prune", "--agent", str(AGENT), *extra, "--out", str(out), "--quiet"])
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_config_refuses_non_pgd_objectives() -> None:
    with pytest.raises(UserError, match="robust distillation"):
        from_dict(AgentPruneConfig, {"harp": {"sparsity": 0.9, "objective": "mart"}})


def test_pruned_card_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "p"
    assert main(["prune", "--agent", str(AGENT), "--sparsity", "0.5", "--out", str(out),
                 *TINY]) == 0  # fmt: skip
    assert read_card(out).pruning["sparsity"] == 0.5


def test_a_partial_harp_section_keeps_the_agent_defaults() -> None:
    from sap_rl.rl.prune import agent_prune_config

    config = agent_prune_config({"harp": {"sparsity": 0.8, "steps": 3}})
    assert (config.harp.sparsity, config.harp.steps, config.harp.eps) == (0.8, 3, 1.0)
    assert config.harp.finetune_epochs == 10
    assert (config.harp.optimizer, config.harp.finetune_lr, config.temperature) == (
        "adam",
        1e-4,
        0.01,
    )


def test_the_temperature_sharpens_a_copy_and_the_saved_agent_gives_q_values(
    tmp_path: Path,
) -> None:
    from sap_rl.rl.prune import _sharpened

    net, _ = load_agent(AGENT)
    x = torch.rand(2, 4, 84, 84) * 255
    sharp = _sharpened(net, 0.01)
    torch.testing.assert_close(sharp(x), net(x) / 0.01)
    assert not net._forward_hooks  # the agent's own network is untouched
    out = tmp_path / "rr-harp"
    assert main(["prune", "--agent", str(AGENT), "--sparsity", "0.5", "--out", str(out),
                 *TINY]) == 0  # fmt: skip
    pruned, card = load_agent(out)
    assert card.pruning["distillation"]["temperature"] == 0.01
    # Q-values on the scale of the dense agent's, not 100 times larger
    with torch.no_grad():
        ratio = pruned(x).abs().mean() / net(x).abs().mean()
    assert 0.1 < float(ratio) < 10


def test_a_harp_section_that_is_not_a_mapping_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "p.yaml"
    config.write_text("harp: 3\n")
    out = tmp_path / "never"
    assert main(["prune", "--agent", str(AGENT), "--sparsity", "0.9", "--config", str(config),
                 "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "must be a mapping" in err and err.count("\n") == 1 and not out.exists()
