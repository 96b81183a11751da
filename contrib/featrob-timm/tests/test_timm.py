"""featrob-timm, offline: timm classifiers with timm's normalisation, local weights, and a
run through every analysis plugin."""

from __future__ import annotations

from pathlib import Path

import featrob_timm
import pytest
import timm
import torch

import featrob
from featrob import ConfigError, ModelError, PluginHost, UnknownNameError
from featrob.testing import check_model, plugin_host, write_npz_dataset

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@pytest.fixture(autouse=True)
def featrob_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEATROB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def host() -> PluginHost:
    """Every installed plugin, and this one (also when only its folder is on sys.path)."""
    return plugin_host(featrob_timm, "timm")


@pytest.fixture
def cifar_like(tmp_path: Path) -> str:
    return write_npz_dataset(tmp_path / "cifar.npz", shape=(3, 32, 32), classes=10)


@pytest.fixture
def resnet_weights(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """timm's own state_dict of a resnet18 for 10 classes, as a user would save it."""
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "resnet18.pt")
    return tmp_path / "resnet18.pt", net


def test_local_weights_give_timms_function_with_timms_normalisation(
    cifar_like: str, host: PluginHost, resnet_weights
):
    path, net = resnet_weights
    data = featrob.load_data(cifar_like)
    model = featrob.load_model("timm:resnet18", data, weights=path, host=host)
    norm = model.normalization
    assert norm.kind == "imagenet" and (list(norm.mean), list(norm.std)) == IMAGENET
    assert "timm's pretrained config of resnet18" in norm.source
    x = data.test.float_images()
    mean = torch.tensor(IMAGENET[0]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET[1]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net((x - mean) / std), rtol=1e-5, atol=1e-5)
    # --normalize still wins
    plain = featrob.load_model("timm:resnet18", data, weights=path, host=host, normalize="none")
    assert plain.normalization.identity


def test_every_analysis_plugin_runs_on_a_timm_model(
    cifar_like: str, host: PluginHost, resnet_weights
):
    path, _ = resnet_weights
    results = check_model("timm:resnet18", cifar_like, host=host, weights=str(path))
    assert {"collision", "compression", "msa", "scale", "sensitivity"} <= set(results.metrics)
    assert results.environment["normalization"]["kind"] == "imagenet"


def test_featrob_trains_a_fresh_timm_model_and_records_its_normalisation(
    cifar_like: str, host: PluginHost, tmp_path: Path
):
    data = featrob.load_data(cifar_like)
    model = featrob.load_model("timm:test_vit", data, host=host, train={"epochs": 1})
    assert model.normalization.mean == (0.5, 0.5, 0.5)  # test_vit's config, not the data's
    assert model(data.test.float_images()).shape == (10, 10)  # img_size follows the data


def test_grey_images_get_one_averaged_value(tmp_path: Path, host: PluginHost):
    grey = write_npz_dataset(tmp_path / "grey.npz", shape=(1, 28, 28), classes=10)
    data = featrob.load_data(grey)
    model = featrob.load_model("timm:resnet18", data, host=host, train={"epochs": 1})
    assert model.normalization.mean == pytest.approx((sum(IMAGENET[0]) / 3,))


def test_bad_names_and_offline_pretrained_weights_are_one_line(
    cifar_like: str, host: PluginHost, monkeypatch: pytest.MonkeyPatch
):
    data = featrob.load_data(cifar_like)
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        featrob_timm.timm_model(data.input_shape, 10, "resnet81")
    with pytest.raises(ConfigError, match=r"timm\.list_models"):
        featrob_timm.timm_model(data.input_shape, 10, "no-such-thing-at-all")
    with pytest.raises(ConfigError, match="needs a timm model name"):
        featrob_timm.timm_model(data.input_shape, 10, None)

    def offline(*_args, **_kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(ModelError, match=r"pretrained weights .*--weights FILE"):
        featrob.load_model("timm:resnet18", data, host=host, model_options={"pretrained": True})
