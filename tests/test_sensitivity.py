"""Feature sensitivity (paper 004): PGD extremes against closed forms, the batched path against
the per-feature loop, the head normalisation, Theorem 3's bound, and the metric end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from featrob_sensitivity.extremes import (
    feature_extremes,
    largest_change,
    per_feature_extremes,
)
from featrob_sensitivity.metric import FeatureSensitivity
from featrob_sensitivity.theorem import (
    feature_scales,
    margins,
    per_sample_estimate,
    robust_accuracy_bound,
)
from torch import nn

from featrob.attacks.pgd import PGD
from featrob.errors import ConfigError
from featrob.seeding import sample_seeds
from featrob.testing import check_metric, make_context, tiny_dataset, tiny_model

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL = {"samples": 12, "eps": [0.05, 0.1], "steps": 10, "accuracy_steps": 10}


def _seeds(n: int) -> torch.Tensor:
    return sample_seeds(0, torch.arange(n))


def _linear(d: int, n0: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, n0, generator=gen, dtype=torch.float64)
    layer = nn.Linear(n0, d, bias=False).double()
    layer.weight.data = w.clone()
    return (lambda z: layer(z.flatten(1))), w


def test_a_linear_feature_reaches_eps_times_its_l1_norm():
    """f_j(x) = w_j . x away from the box: the extremes are f_j(x) +- eps ||w_j||_1."""
    forward, w = _linear(6, 20)
    gen = torch.Generator().manual_seed(1)
    x = 0.3 + 0.4 * torch.rand(5, 20, generator=gen, dtype=torch.float64)
    eps = 0.05
    attack = PGD(eps=eps, norm="linf", steps=20)
    clean, high, low = feature_extremes(forward, x, torch.arange(6), attack, _seeds(5))
    expected = eps * w.abs().sum(1)
    torch.testing.assert_close(high - clean, expected.expand(5, 6), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(clean - low, expected.expand(5, 6), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(largest_change(clean, high, low).mean(0), expected)


def test_the_box_clips_the_extremes():
    """Inputs at the edges of [0, 1]: each coordinate moves only as far as the box allows."""
    forward, w = _linear(4, 30, seed=2)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(6, 30, generator=gen, dtype=torch.float64)
    x[:, :10] = 0.0
    x[:, 10:15] = 1.0
    x[:, 15:20] = 0.02
    eps = 0.1
    attack = PGD(eps=eps, norm="linf", steps=30)
    clean, high, low = feature_extremes(forward, x, torch.arange(4), attack, _seeds(6))
    up_room, down_room = (1 - x).clamp(max=eps), x.clamp(max=eps)  # [N, n0]
    wp, wn = w.clamp(min=0), w.clamp(max=0)  # [4, n0]
    best_up = up_room @ wp.T - down_room @ wn.T
    best_down = down_room @ wp.T - up_room @ wn.T
    torch.testing.assert_close(high - clean, best_up, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(clean - low, best_down, rtol=1e-6, atol=1e-9)


def test_batched_features_equal_the_per_feature_loop():
    model = tiny_model(trained=True)
    data = tiny_dataset()
    x = data.test.float_images()[:7]
    seeds = sample_seeds(0, data.test.indices[:7])
    features = torch.tensor([0, 3, 17, 42, 99])

    def forward(z):
        return model.forward_to(z, "features").flatten(1)

    attack = PGD(eps=0.1, norm="linf", steps=8)
    batched = feature_extremes(forward, x, features, attack, seeds)
    looped = per_feature_extremes(forward, x, features, attack, seeds)
    for a, b in zip(batched, looped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    change = largest_change(*batched)
    assert (change >= 0).all() and change.max() > 0


def test_normalisation_keeps_logits_and_bounds_every_pairwise_head():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 12, generator=gen, dtype=torch.float64).numpy()
    s = feature_scales(w)
    f = np.random.default_rng(0).standard_normal((8, 12))
    scaled_f, scaled_w = f * s, w / s
    np.testing.assert_allclose(scaled_f @ scaled_w.T, f @ w.T, rtol=1e-12)
    pairwise = scaled_w[:, None, :] - scaled_w[None, :, :]
    assert np.abs(pairwise).max() <= 1 + 1e-12
    assert np.isclose(np.abs(pairwise).max(axis=(0, 1)), 1).all()  # tight for every feature
    two = w[:2]
    np.testing.assert_allclose(feature_scales(two), np.abs(two[1] - two[0]))


def test_theorem_bound_by_hand():
    margin = np.array([3.0, 2.0, 1.5, 1.0, 0.5, -1.0, 4.0, 2.5])
    eps = np.array([0.05, 0.1, 0.05])
    out = robust_accuracy_bound(margin, eps)
    share = 6 / 8  # margins >= 1
    assert out["margin_share"] == pytest.approx(share)
    assert out["sum"] == pytest.approx(share - 0.2)
    assert out["paper"] == pytest.approx(share - 3 * 0.1)
    # best t: P[margin >= t] - 0.2 / t over t in the margins; t = 1.5 gives 5/8 - 0.1333
    candidates = {t: (margin >= t).mean() - 0.2 / t for t in margin[margin > 0]}
    t_best = max(candidates, key=candidates.get)
    assert out["best"] == pytest.approx(max(candidates[t_best], share - 0.2))
    assert not out["vacuous"]
    assert robust_accuracy_bound(margin, np.full(3, 2.0))["vacuous"]
    assert margins(np.array([[2.0, 0.5, 1.0]]), np.array([0]))[0] == pytest.approx(1.0)
    assert per_sample_estimate(margin, np.full((8, 3), 0.6)) == pytest.approx(4 / 8)


def test_the_bound_never_exceeds_robust_accuracy_on_a_linear_model():
    """Linear features: PGD finds the exact suprema, so the bound is a true lower bound and
    must sit below the (exact, for a linear model) robust accuracy."""
    rng = np.random.default_rng(0)
    n, n0, d = 400, 10, 4
    y = rng.integers(0, 2, n)
    x = np.clip(0.5 + 0.25 * (2 * y[:, None] - 1) + 0.08 * rng.standard_normal((n, n0)), 0, 1)
    feats = nn.Linear(n0, d, bias=False).double()
    head = nn.Linear(d, 2).double()
    with torch.no_grad():
        feats.weight.copy_(torch.eye(d, n0, dtype=torch.float64))
        head.weight.copy_(torch.tensor([[-4.0, -4, -4, -4], [4, 4, 4, 4]], dtype=torch.float64))
        head.bias.fill_(0.0)
        head.bias[0] = 8.0
        head.bias[1] = -8.0
    xt = torch.tensor(x)
    eps = 0.05
    attack = PGD(eps=eps, norm="linf", steps=20)
    clean, high, low = feature_extremes(feats, xt, torch.arange(d), attack, _seeds(n))
    scales = feature_scales(head.weight.detach().numpy())
    sens = largest_change(clean, high, low).mean(0).numpy() * scales
    z = head(feats(xt)).detach().numpy()
    bound = robust_accuracy_bound(margins(z, y), sens)
    # Exact robust accuracy of this linear model: the worst perturbation moves the four
    # feature pixels by -eps or +eps (clipped to the box), whichever lowers the margin.
    worst = []
    for sign in (1.0, -1.0):
        step = torch.zeros(n0, dtype=torch.float64)
        step[:d] = sign * eps
        worst.append(margins(head(feats((xt + step).clamp(0, 1))).detach().numpy(), y))
    robust = float(np.mean(np.minimum(*worst) > 0))
    assert not bound["vacuous"]
    assert bound["best"] <= robust + 1e-12
    assert bound["sum"] <= bound["best"] and bound["paper"] <= bound["sum"] + 1e-12


# ----------------------------------------------------------------------- the metric
def test_metric_result_is_well_formed_and_reruns_from_the_store(tmp_path):
    ctx = make_context(store=tmp_path / "store")
    result = check_metric(FeatureSensitivity, ctx, **SMALL)
    s = result.summary
    assert s["layer"] == "fc1" and s["features_analysed"] == s["layer_width"] == 100
    assert s["samples"] == 12 and s["normalised"] and not s["from_store"]
    assert s["eps=0.1.mean"] > s["eps=0.05.mean"] > 0
    assert 0 < s["eps=0.1.live_features"] <= 100
    live = result.arrays["standard.eps=0.1.raw"] > 0
    assert s["eps=0.1.live_mean"] == pytest.approx(
        result.arrays["standard.eps=0.1.normalised"][live].mean()
    )
    assert 0 <= s["eps=0.1.robust_accuracy"] <= s["eps=0.05.robust_accuracy"] <= 1
    assert {"histogram_eps=0.05", "histogram_eps=0.1", "robust_accuracy"} <= set(result.figures)
    assert result.arrays["standard.eps=0.1.normalised"].shape == (100,)
    again = FeatureSensitivity(**SMALL).compute(make_context(store=tmp_path / "store"))
    assert again.summary["from_store"]
    assert again.summary["eps=0.1.mean"] == s["eps=0.1.mean"]
    # A larger eps list reuses the stored eps values and computes only the new one.
    more = FeatureSensitivity(**{**SMALL, "eps": [0.05, 0.1, 0.15]}).compute(
        make_context(store=tmp_path / "store")
    )
    assert more.summary["eps=0.1.mean"] == s["eps=0.1.mean"] and "eps=0.15.mean" in more.summary


def test_metric_resumes_after_a_failed_cell(tmp_path, monkeypatch):
    import featrob_sensitivity.measure as measure

    real = measure.feature_extremes
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    options = {**SMALL, "eps": [0.1], "batch_inputs": 96, "accuracy_steps": 0}
    monkeypatch.setattr(measure, "feature_extremes", flaky)
    with pytest.raises(RuntimeError):
        FeatureSensitivity(**options).compute(make_context(store=tmp_path / "s"))
    monkeypatch.setattr(measure, "feature_extremes", real)
    resumed = FeatureSensitivity(**options).compute(make_context(store=tmp_path / "s"))
    fresh = FeatureSensitivity(**options).compute(make_context())
    assert resumed.summary["eps=0.1.mean"] == pytest.approx(fresh.summary["eps=0.1.mean"])


def test_a_feature_subset_and_a_non_head_layer_say_what_is_missing():
    ctx = make_context()
    sub = FeatureSensitivity(**{**SMALL, "features": 10, "accuracy_steps": 0}).compute(ctx)
    assert sub.summary["features_analysed"] == 10
    assert "bound_best" not in sub.tables["sensitivity"][0]
    assert any("10 of 100 features" in w for w in sub.warnings)
    conv = FeatureSensitivity(**{**SMALL, "layer": "conv2", "features": 20}).compute(ctx)
    assert not conv.summary["normalised"]
    assert any("raw (not normalised)" in w for w in conv.warnings)


def test_compare_mode_puts_models_side_by_side(tmp_path):
    from featrob.models import save_checkpoint

    model = tiny_model()
    ckpt = tmp_path / "same.pt"
    save_checkpoint(model, ckpt, {})  # the card keeps the model's normalisation
    ctx = make_context(model)
    result = FeatureSensitivity(**{**SMALL, "compare": str(ckpt)}).compute(ctx)
    rows = result.tables["sensitivity"]
    assert [r["model"] for r in rows] == ["standard", "standard", str(ckpt), str(ckpt)]
    assert rows[0]["mean"] == pytest.approx(rows[2]["mean"])  # the same weights
    assert result.summary[f"{ckpt}.lower_sensitivity_every_eps"] is False
    assert len(result.figures["histogram_eps=0.1"].series) == 2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"eps": [-0.1]}, "eps must be >= 0"),
        ({"eps": []}, "at least one value"),
        ({"eps": [2.0]}, "[0, 1]"),
        ({"features": 0}, "features must be >= 1"),
        ({"stepz": 3}, "did you mean 'steps'"),
        ({"compare": 3}, "compare takes"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError) as err:
        FeatureSensitivity(**options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_default_eps_is_the_run_eps_and_an_l2_run_needs_a_list():
    ctx = make_context(eps=0.05)
    result = FeatureSensitivity(samples=6, steps=3, features=5, accuracy_steps=0).compute(ctx)
    assert [r["eps"] for r in result.tables["sensitivity"]] == [0.05]
    with pytest.raises(ConfigError, match=r"set metrics\.sensitivity\.eps"):
        FeatureSensitivity(samples=6).compute(make_context(eps=0.5, norm="l2"))


def test_featrob_run_with_the_plugin(tmp_path):
    """`featrob run --plugin sensitivity` end to end: only this metric runs, results written."""
    from typer.testing import CliRunner

    from featrob.cli import create_app
    from featrob.plugins import PluginHost

    args = ["run", "--plugin", "sensitivity", "--n-per-class", "2", "--quiet"]
    args += ["--set", "metrics.sensitivity.eps=[0.05]", "--set", "metrics.sensitivity.steps=5"]
    args += ["--set", "metrics.sensitivity.features=8"]
    args += ["--store", str(tmp_path / "store"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(create_app(lambda: PluginHost()), args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(data["metrics"]) == ["sensitivity"]
    assert data["metrics"]["sensitivity"]["error"] is None
    assert data["metrics"]["sensitivity"]["summary"]["features_analysed"] == 8


# ---------------------------------------------------------------- real data (paper's trend)
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "mnist_subset.npz").exists(), reason="needs shared data")
def test_mnist_adversarial_training_lowers_every_sensitivity(tmp_path):
    """Issue check: small CNN on MNIST, normally and PGD-trained (eps 0.2), 128 test images:
    the PGD-trained model's mean sensitivity is lower at every eps in {0.05, 0.1, 0.2} and
    its PGD accuracy higher, as the paper finds on CIFAR-10."""
    from featrob.runner import run

    results = run(
        {
            "dataset": f"npz:{SHARED_DATA / 'mnist_subset.npz'}",
            "model": "small-cnn",
            "n_per_class": 50,
            "eps": 0.2,
            "train": {"epochs": 3, "eps": 0.2},
            "plugins": ["sensitivity"],
            "metrics": {"sensitivity": {"eps": [0.05, 0.1, 0.2], "samples": 128, "compare": "pgd"}},
            "out": str(tmp_path / "run"),
            "quiet": True,
        }
    )
    result = results.metrics["sensitivity"]
    assert result.error is None, result.error
    assert result.summary["pgd.lower_sensitivity_every_eps"]
    assert result.summary["pgd.higher_robust_accuracy_every_eps"]
