"""The notebook API: one metric on an in-memory PyTorch model and tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import featrob
from featrob.api import in_memory_data, wrap_model
from featrob.errors import DataError, UnknownNameError
from featrob.testing import tiny_dataset, tiny_model


def _plain_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_analyze_runs_a_metric_on_a_plain_module_and_float_tensors():
    data = tiny_dataset()
    x, y = data.test.float_images(), data.test.labels
    net = _plain_net()
    result = featrob.analyze("clean_accuracy", net, x, y)
    with torch.no_grad():
        expected = (net(x).argmax(1) == y).double().mean().item()
    assert result.summary["accuracy"] == pytest.approx(expected)
    assert isinstance(net[3], nn.Linear)  # the caller's module is not modified


def test_analyze_a_plugin_metric_reuses_its_store(tmp_path):
    data = tiny_dataset()
    x, y = data.test.float_images(), data.test.labels
    options = {"samples": 6, "features": 4, "steps": 3, "accuracy_steps": 0}
    model = tiny_model()
    first = featrob.analyze("sensitivity", model, x, y, options=options, store=tmp_path / "s")
    again = featrob.analyze("sensitivity", model, x, y, options=options, store=tmp_path / "s")
    assert not first.summary["from_store"] and again.summary["from_store"]
    assert again.summary["eps=0.1.mean"] == first.summary["eps=0.1.mean"]


def test_wrap_model_splits_the_last_linear_layer_off():
    model = wrap_model(_plain_net())
    assert isinstance(model.head, nn.Linear) and model.num_features == 32
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (torch.rand(4, 8, 8), [0, 1, 2, 3], "N x C x H x W"),
        (torch.full((2, 1, 8, 8), float("nan")), [0, 1], "NaN"),
        (torch.full((2, 1, 8, 8), 2.0), [0, 1], "must lie in [0, 1]"),
        (torch.rand(2, 1, 8, 8), [0, 1, 2], "3 labels for 2 images"),
    ],
)
def test_bad_tensors_are_one_line_errors(images, labels, message):
    with pytest.raises(DataError) as err:
        in_memory_data(images, labels)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_uint8_images_round_trip_and_unknown_metrics_have_close_matches():
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    data = in_memory_data(x.float() / 255, [0, 1, 2])
    assert torch.equal(data.test.images, x)
    with pytest.raises(UnknownNameError, match="sensitivity"):
        featrob.analyze("sensitivty", _plain_net(), x, [0, 1, 2])


def test_load_data_and_load_model_from_specs():
    data = featrob.load_data("digits")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    model = featrob.load_model("small-cnn", data, train={"epochs": 1})
    again = featrob.load_model("small-cnn", "digits", train={"epochs": 1})  # the cached one
    assert model.fingerprint() == again.fingerprint()
    x = data.test.float_images()[:4]
    assert model(x).shape == (4, 10)
    with pytest.raises(UnknownNameError, match="small-cnn"):
        featrob.load_model("smal-cnn", data)


def test_default_attack_of_a_preset_run_is_its_first_attack():
    # A default run's attacks are the "standard" preset; a metric asking for "the run's
    # attack" gets the preset's first attack, not the preset's name.
    from featrob.testing import make_context

    ctx = make_context(attacks=["standard"], eps=0.1)
    attack = ctx.make_attack()
    assert attack.name == "apgd-ce" and attack.eps == 0.1
