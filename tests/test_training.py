"""Training raises accuracy; adversarial training raises robust accuracy."""

from __future__ import annotations

import pytest
import torch

from featrob.attacks import PGD
from featrob.config import TrainConfig
from featrob.data.sources import load_digits
from featrob.errors import ConfigError
from featrob.models import build_model
from featrob.plugins import PluginHost
from featrob.trainer import TrainingMethod, accuracy, random_crop_flip, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_digits(None)


def _fresh(host: PluginHost, data, spec: str = "small-cnn"):
    torch.manual_seed(0)
    return build_model(
        spec, host.models, data.input_shape, data.num_classes, mean=data.mean, std=data.std
    )


def test_standard_training_beats_90_percent_on_digits(digits):
    host = PluginHost()
    model = _fresh(host, digits)
    before = accuracy(model, digits.test, device=CPU)
    report = train(
        model,
        digits,
        TrainConfig(epochs=15),
        host.training_methods,
        eps=0.1,
        norm="linf",
        device=CPU,
    )
    after = accuracy(model, digits.test, device=CPU)
    assert before < 0.3 and after > 0.9, (before, after)
    assert report.history[-1]["loss"] < report.history[0]["loss"]


def test_pgd_training_raises_robust_accuracy(digits):
    host = PluginHost()
    pgd = PGD(eps=0.1, steps=10)
    results = {}
    for method in ("standard", "pgd"):
        model = _fresh(host, digits)
        cfg = TrainConfig(method=method, epochs=12, attack_steps=5, lr=3e-3)
        train(model, digits, cfg, host.training_methods, eps=0.1, norm="linf", device=CPU)
        results[method] = accuracy(model, digits.test, device=CPU, attack=pgd)
    assert results["pgd"] > results["standard"] + 0.15, results


def test_trades_runs_and_learns(digits):
    host = PluginHost()
    model = _fresh(host, digits)
    cfg = TrainConfig(method="trades", epochs=3, attack_steps=3, n_per_class=40, lr=3e-3)
    report = train(model, digits, cfg, host.training_methods, eps=0.1, norm="linf", device=CPU)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in report.history)
    assert accuracy(model, digits.test, device=CPU) > 0.5


def test_plugin_training_method_and_head_only_parameters(digits):
    class HeadOnly(TrainingMethod):
        name = "head-only"
        defaults = {"scale": 1.0}

        def parameters(self, model):
            return model.head.parameters()

        def loss(self, model, x, y):
            return self.options["scale"] * torch.nn.functional.cross_entropy(model(x), y)

    host = PluginHost()
    host.training_methods.add(HeadOnly, plugin="test")
    model = _fresh(host, digits)
    frozen = model.backbone.state_dict()
    frozen = {k: v.clone() for k, v in frozen.items()}
    cfg = TrainConfig(method="head-only", epochs=1, method_options={"scale": 2.0})
    train(model, digits, cfg, host.training_methods, eps=0.1, norm="linf", device=CPU)
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, frozen[key])
    with pytest.raises(ConfigError, match="did you mean 'scale'"):
        train(
            model,
            digits,
            TrainConfig(method="head-only", method_options={"scal": 1}),
            host.training_methods,
            eps=0.1,
            norm="linf",
            device=CPU,
        )


def test_random_crop_flip_keeps_content():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    out = random_crop_flip(x, gen)
    assert out.shape == x.shape
    # each output is a shifted (maybe flipped) window of the zero-padded input: its pixels
    # come from the input or are zero
    assert torch.isin(out[0].flatten(), torch.cat([x[0].flatten(), torch.zeros(1)])).all()


def test_adversarial_training_crafts_examples_through_bpda_substitutes():
    """An eval-mode quantiser passes no gradient; the training attacks must differentiate
    through its substitute (as they do through an HPM head's straight-through estimator)."""
    from featrob.adversaries import crafting, kl_adversary
    from featrob.attacks.surrogate import InputQuantization

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        InputQuantization(4), torch.nn.Flatten(), torch.nn.Linear(16, 3)
    ).eval()
    x = torch.rand(8, 1, 4, 4) * 0.2 + 0.4
    x_adv = kl_adversary(model, x, 0.1, "linf", steps=5)
    assert (x_adv - x).abs().amax() > 0.09  # reached the eps boundary, not the 0.001 start
    y = model(x).argmax(1)
    with crafting(model):
        moved = PGD(eps=0.1, steps=5, random_start=False).perturb(model, x, y)
    assert (moved - x).abs().amax() > 0.09
    assert not PGD(eps=0.1, steps=5, random_start=False).perturb(model, x, y).ne(x).any()
