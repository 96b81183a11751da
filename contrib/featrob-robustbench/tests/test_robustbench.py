"""featrob-robustbench, offline: a RobustBench checkpoint in RobustBench's folder layout gives
featrob exactly the network RobustBench's own loader gives, with nothing added in front, and
runs through every analysis plugin."""

from __future__ import annotations

import json
from pathlib import Path

import featrob_robustbench
import pytest
import torch
from typer.testing import CliRunner

import featrob
from featrob import ModelError, PluginHost, UnknownNameError, create_app
from featrob.testing import check_model, plugin_host, write_npz_dataset

#: A RobustBench CIFAR-10 Linf model small enough for a CPU test: PreAct ResNet-18, which
#: normalises its inputs inside itself (mu/sigma buffers).
NAME = "Wong2020Fast"
SPEC = f"rb:cifar10/Linf/{NAME}"


@pytest.fixture(autouse=True)
def featrob_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEATROB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def host() -> PluginHost:
    """Every installed plugin, and this one (also when only its folder is on sys.path)."""
    return plugin_host(featrob_robustbench, "robustbench")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """RobustBench's layout, holding a freshly initialised checkpoint of the model."""
    torch.manual_seed(0)
    entry = featrob_robustbench.zoo("cifar10", "Linf")[NAME]
    net = entry["model"]()
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": net.state_dict()}, folder / f"{NAME}.pt")
    return tmp_path / "models"


@pytest.fixture
def cifar_like(tmp_path: Path) -> str:
    return write_npz_dataset(tmp_path / "cifar.npz", shape=(3, 32, 32), classes=10)


def test_same_logits_as_robustbench_loader(model_dir: Path, cifar_like: str, host: PluginHost):
    from robustbench.utils import load_model

    data = featrob.load_data(cifar_like)
    ours = featrob.load_model(SPEC, data, model_dir=str(model_dir), host=host)
    theirs = load_model(NAME, model_dir=str(model_dir), dataset="cifar10", threat_model="Linf")
    x = data.test.float_images()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    assert ours.normalization.identity  # RobustBench normalises inside: featrob adds nothing
    assert "RobustBench" in ours.normalization.source
    assert ours.pretrained is not None and NAME in ours.pretrained


def test_every_analysis_plugin_runs_on_a_robustbench_model(
    model_dir: Path, cifar_like: str, host: PluginHost, tmp_path: Path
):
    results = check_model(SPEC, cifar_like, host=host, model_dir=str(model_dir))
    assert {"collision", "compression", "msa", "scale", "sensitivity"} <= set(results.metrics)
    assert results.environment["model_card"]["pretrained"].startswith("RobustBench")
    assert results.environment["normalization"]["kind"] == "none"


def test_a_missing_checkpoint_offline_is_one_line(
    tmp_path: Path, cifar_like: str, host: PluginHost, monkeypatch: pytest.MonkeyPatch
):
    import robustbench.utils

    def offline(*_args, **_kwargs):
        raise ConnectionError("Failed to resolve 'drive.google.com'")

    monkeypatch.setattr(robustbench.utils, "download_gdrive_new", offline)
    empty = tmp_path / "empty"
    result = CliRunner().invoke(
        create_app(lambda: host),
        ["run", "--model", SPEC, "--model-dir", str(empty), "--dataset", cifar_like,
         "--plugin", "accuracy", "--store", "none", "--quiet", "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    expected = empty / "cifar10" / "Linf" / f"{NAME}.pt"
    assert str(expected) in result.output and "missing" in result.output
    assert "Traceback" not in result.output


def test_bad_specs_are_one_line(cifar_like: str):
    data = featrob.load_data(cifar_like)
    with pytest.raises(UnknownNameError, match="did you mean 'Wong2020Fast'"):
        featrob_robustbench.parse("cifar10/Linf/Wong2020fast")
    with pytest.raises(UnknownNameError, match="RobustBench data set 'cifar11'"):
        featrob_robustbench.parse("cifar11/Linf/Standard")
    with pytest.raises(featrob.FeatrobError, match="rb:DATASET/THREAT/NAME"):
        featrob_robustbench.parse("Standard")
    with pytest.raises(ModelError, match="100 classes; the data set has 10"):
        featrob_robustbench.rb(data.input_shape, 10, "cifar100/Linf/Rice2020Overfitting")


def test_the_run_records_the_model_and_its_normalisation(
    model_dir: Path, cifar_like: str, host: PluginHost, tmp_path: Path
):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        create_app(lambda: host),
        ["run", "--model", SPEC, "--model-dir", str(model_dir), "--dataset", cifar_like,
         "--plugin", "accuracy", "--attack", "pgd(steps=1)", "--store", "none", "--quiet",
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "input normalisation: none" in result.output
    env = json.loads((out / "results.json").read_text())["environment"]
    assert env["normalization"]["source"].startswith("RobustBench models normalise")
