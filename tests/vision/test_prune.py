"""``sap-rl vision prune``: HARP on digits end to end, the CIFAR-10 configs, masks on disk, and
user errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sap_rl.cli import main
from sap_rl.config import from_dict, load_config, to_dict
from sap_rl.errors import UserError
from sap_rl.io import load_tensors, save_tensors
from sap_rl.pruning import MASK_PREFIX
from sap_rl.vision.data import load_dataset
from sap_rl.vision.models import build_model, load_model, save_model
from sap_rl.vision.prune import PRUNE_PRESETS, PruneConfig, prune

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "vision"
QUICK = ["--prune-epochs", "1", "--finetune-epochs", "1", "--steps", "1", "--device", "cpu",
         "--quiet"]  # fmt: skip


@pytest.mark.parametrize("name", sorted(PRUNE_PRESETS))
def test_committed_prune_configs_match_presets(name: str) -> None:
    from_yaml = load_config(PruneConfig, CONFIGS / f"prune-{name}.yaml")
    assert to_dict(from_yaml) == to_dict(from_dict(PruneConfig, PRUNE_PRESETS[name]))


def test_cifar_configs_are_harps_recipe() -> None:
    for name in ("cifar10-resnet20", "cifar10-resnet18", "cifar10-vgg16"):
        harp = from_dict(PruneConfig, PRUNE_PRESETS[name]).harp
        assert (harp.prune_epochs, harp.finetune_epochs, harp.eps, harp.step_size, harp.steps,
                harp.weight_decay, harp.gamma) == (20, 100, 8.0, 2.0, 10, 5e-4, 0.01)  # fmt: skip


def test_digits_prune_reaches_sparsity_and_evaluates(
    digits_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pruned"
    assert (
        main(
            [
                "vision",
                "prune",
                "--model",
                str(digits_model_dir),
                "--sparsity",
                "0.95",
                "--objective",
                "trades",
                "--strategy",
                "erk",
                "--out",
                str(out),
                *QUICK,
            ]
        )
        == 0
    )
    assert "pruned to sparsity" in capsys.readouterr().out
    model, card = load_model(out)
    info = card.pruning
    assert info["pruned_from"] == digits_model_dir.name and info["objective"] == "trades"
    assert info["achieved_sparsity"] >= 0.95 and info["kept_weights"] < 0.05 * 38160 + 1
    assert info["flops"] < info["dense_flops"] and info["kept_parameters"] < info["parameters"]
    assert set(info["layer_rates"]) == {"features.0", "features.3", "classifier.1",
                                        "classifier.3"}  # fmt: skip
    zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight")
                and p.ndim > 1)  # fmt: skip
    assert zeros == info["prunable_weights"] - info["kept_weights"]
    assert (out / "history.csv").read_text().count("\n") == 3  # header + 2 epochs
    # evaluate reads it like any model: SAP on a HARP-pruned network
    evaluated = tmp_path / "eval"
    assert main(["vision", "evaluate", "--model", str(out), "--out", str(evaluated),
                 "--eps", "0,8", "--defense", "dense,sap-100", "--attack", "fgsm",
                 "--mc-samples", "2", "--grad-samples", "2", "--examples", "16",
                 "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    assert (evaluated / "summary.csv").is_file()


def test_saved_masks_are_checked_on_load(digits_model_dir: Path, tmp_path: Path) -> None:
    cfg = from_dict(PruneConfig, {"dataset": "digits", "harp": {
        "sparsity": 0.9, "prune_epochs": 1, "finetune_epochs": 0, "steps": 1}})  # fmt: skip
    prune(digits_model_dir, cfg, tmp_path / "p", quiet=True)
    weights = tmp_path / "p" / "model.safetensors"
    state = load_tensors(weights)
    assert {k for k in state if k.startswith(MASK_PREFIX)} == {
        f"{MASK_PREFIX}{n}.weight" for n in ("features.0", "features.3", "classifier.1",
                                              "classifier.3")}  # fmt: skip
    model, _ = load_model(tmp_path / "p")
    x = load_dataset("digits").x_test[:16].float()
    again, _ = load_model(tmp_path / "p")
    torch.testing.assert_close(model(x), again(x))
    # a pruned weight brought back to life is caught (checksum off, to reach the mask check)
    mask = state[f"{MASK_PREFIX}classifier.1.weight"]
    state["classifier.1.weight"][~mask] = 1.0
    save_tensors(weights, state)
    with pytest.raises(UserError, match="outside its mask are not zero"):
        load_model(tmp_path / "p", verify=False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sparsity", "0"], "sparsity must be in (0, 1)"),
        (["--sparsity", "1"], "sparsity must be in (0, 1)"),
        (["--sparsity", "1.5"], "sparsity must be in (0, 1)"),
        (["--sparsity", "x"], "expected a number"),
        (["--sparsity", "0.9", "--objective", "fgsm"], "invalid choice"),
        (["--sparsity", "0.9", "--strategy", "random"], "invalid choice"),
        (["--sparsity", "0.9", "--exclude", "*"], "no prunable layers"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(
    digits_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "never"
    code = _exit_code(["vision", "prune", "--model", str(digits_model_dir), *extra,
                       "--out", str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_unknown_strategy_in_a_config_is_one_line(
    digits_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(json.dumps({"dataset": "digits", "harp": {"strategy": "snip"}}))
    out = tmp_path / "never"
    assert main(["vision", "prune", "--model", str(digits_model_dir), "--sparsity", "0.9",
                 "--config", str(config), "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "strategy" in err and err.count("\n") == 1 and not out.exists()


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_info:  # argparse errors
        return int(exit_info.code or 0)


@pytest.mark.parametrize("architecture", ["resnet20", "resnet18", "vgg16"])
def test_cifar10_configs_run_on_cifar_files(
    architecture: str,
    fake_cifar: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sap_rl.vision import prune as prune_module
    from sap_rl.vision.data import load_cifar10

    root = fake_cifar(rows=2)  # 10 training and 2 test images in the CIFAR-10 file format
    # the files are not the official ones (checksums, 10,000 rows each): read them as they are
    data = load_cifar10(root, verify_md5=False, examples_per_file=2)
    monkeypatch.setattr(prune_module, "load_dataset", lambda name, data_root=None: data)
    source = tmp_path / "dense"
    net = build_model(architecture, num_classes=10, input_shape=data.input_shape,
                      dataset="cifar10")  # fmt: skip
    save_model(net, source, {
        "name": "dense", "architecture": architecture, "dataset": "cifar10", "num_classes": 10,
        "input_shape": list(data.input_shape), "classes": list(data.classes),
        "adversarial": "pgd", "epochs": 0, "clean_accuracy": 0.1, "test_examples": 2,
        "sap_rl_version": "0"})  # fmt: skip
    preset = load_config(PruneConfig, CONFIGS / f"prune-cifar10-{architecture}.yaml")
    data_dict = to_dict(preset)
    data_dict["batch_size"] = 10
    data_dict["harp"].update(prune_epochs=1, finetune_epochs=1, steps=1)
    card = prune(source, from_dict(PruneConfig, data_dict), tmp_path / "p", data_root=root,
                 quiet=True)  # fmt: skip
    assert card.pruning["achieved_sparsity"] >= 0.99
    assert card.architecture == architecture and card.training["harp"]["eps"] == 8.0
