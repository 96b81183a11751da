"""The ``scale`` plugin (Park & Lee 2025): sections, statistics with known answers, the
metric on a real context, store reuse, and the scale-aware training rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from featrob_scale.analysis import Settings, analyse, spearman
from featrob_scale.metric import ScaleSections
from featrob_scale.sections import (
    assign_sections,
    bootstrap_median_ci,
    bootstrap_rate_ci,
    box_stats,
    cosine,
    merge_sections,
    scales,
)
from featrob_scale.training import ScaleAwareTraining
from scipy.stats import spearmanr

from featrob.config import TrainConfig
from featrob.errors import ConfigError
from featrob.models.base import FeatrobModel
from featrob.plugins import PluginHost
from featrob.testing import check_metric, make_context, tiny_dataset, tiny_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------- sections and statistics
def test_sections_split_each_class_range_at_its_own_maximum():
    scale = np.array([0.0, 0.5, 1.0, 0.95, 0.05, 2.0, 0.99, 1.0])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    section, class_max = assign_sections(scale, labels, num_classes=3, sections=10)
    assert section.tolist() == [0, 5, 9, 9, 0, 9, 4, 5]
    assert class_max[:2].tolist() == [1.0, 2.0] and np.isnan(class_max[2])


def test_all_zero_class_goes_to_the_first_section():
    section, _ = assign_sections(np.zeros(3), np.zeros(3, dtype=int), 1, 10)
    assert section.tolist() == [0, 0, 0]


def test_pairwise_merge_equals_direct_coarse_sections():
    rng = np.random.default_rng(0)
    scale, labels = rng.gamma(4.0, size=5000), rng.integers(0, 5, 5000)
    fine, _ = assign_sections(scale, labels, 5, 20)
    coarse, _ = assign_sections(scale, labels, 5, 10)
    assert np.array_equal(merge_sections(fine, 2), coarse)


def test_scales_and_cosine_closed_forms():
    a = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    b = np.array([[4.0, 3.0], [-2.0, 0.0], [1.0, 1.0]])
    assert scales(a).tolist() == [5.0, 1.0, 0.0]
    assert np.allclose(cosine(a, b), [24 / 25, -1.0, 0.0])  # zero vector: no direction, 0


def test_box_stats_follow_tukey():
    values = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 100])
    box = box_stats(values)
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    assert (box.q1, box.med, box.q3) == (q1, med, q3)
    assert box.whislo == 1.0 and box.whishi == 8.0  # 100 is beyond q3 + 1.5 IQR: a flier


def test_bootstrap_rate_ci_is_the_index_bootstrap():
    """Binomial draws are the bootstrap distribution of a 0/1 mean: same quantiles."""
    outcomes = np.array([1] * 30 + [0] * 70)
    rng = np.random.default_rng(1)
    index = outcomes[rng.integers(0, 100, size=(20000, 100))].mean(1)
    lo, hi = bootstrap_rate_ci(30, 100, np.random.default_rng(2), resamples=20000)
    assert abs(lo - np.quantile(index, 0.025)) <= 0.011
    assert abs(hi - np.quantile(index, 0.975)) <= 0.011


@pytest.mark.parametrize("which", ["rate", "median"])
def test_bootstrap_ci_covers_the_truth_about_95_percent(which):
    rng = np.random.default_rng(3)
    trials, covered = 300, 0
    for _ in range(trials):
        if which == "rate":
            x = rng.random(200) < 0.3
            lo, hi = bootstrap_rate_ci(int(x.sum()), 200, rng, resamples=1000)
            covered += lo <= 0.3 <= hi
        else:
            x = rng.normal(0.5, 0.1, 200)
            lo, hi = bootstrap_median_ci(x, rng, resamples=1000)
            covered += lo <= 0.5 <= hi
    assert 0.90 <= covered / trials <= 0.99


def test_spearman_sign_and_value():
    x = np.arange(1, 6, dtype=float)
    assert spearman(x, np.array([0.9, 0.5, 0.4, 0.2, 0.1])) == pytest.approx(-1.0)
    y = np.array([0.1, 0.3, 0.2, 0.5, 0.4])
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert np.isnan(spearman(x, np.ones(5)))  # constant: undefined, not an exception


def _synthetic(falling: bool, n_per_class: int = 2000, classes: int = 3, seed: int = 0):
    """Features whose scale is uniform in [0, 1] x class max; the error probability and the
    cosine depend on the scale in a known direction."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    scale = rng.random(len(labels)) * (1 + labels)
    rel = scale / (1 + labels)
    p_err = (1 - rel) * 0.8 if falling else rel * 0.8
    wrong = rng.random(len(labels)) < p_err
    cos = np.clip((0.5 + 0.5 * rel if falling else 1 - 0.5 * rel) + rng.normal(0, 0.05), -1, 1)
    return labels, scale, wrong, cos


@pytest.mark.parametrize("falling", [True, False])
def test_trends_on_synthetic_features_with_a_known_direction(falling):
    labels, scale, wrong, cos = _synthetic(falling)
    section, class_max = assign_sections(scale, labels, 3, 10)
    res = analyse(
        labels, section, class_max, cos, wrong, np.zeros_like(wrong), Settings(), scale=scale
    )
    s = res.summary
    # E[error | lowest 30% of the class's scale] = 0.8 (1 - 0.15) falling, 0.8 * 0.15 rising
    assert s["low_quantile_error_rate"] == pytest.approx(0.68 if falling else 0.12, abs=0.03)
    assert s["lowest_section_error_rate"] == pytest.approx(0.76 if falling else 0.04, abs=0.04)
    assert s["decreasing_error_classes"] == (3 if falling else 0)
    assert s["increasing_cosine_classes"] == (3 if falling else 0)
    assert s["median_rho_error"] < -0.9 if falling else s["median_rho_error"] > 0.9
    # 2000 samples uniform over 10 sections: every section is significant (>= 100)
    assert s["significant_sections"] == 30
    assert s["judged_classes"] == 3
    assert s["separated_classes"] == (3 if falling else 0)
    assert s["first_last_separated_classes"] == (3 if falling else 0)
    counts = [r["n"] for r in res.rows]
    assert sum(counts) == len(labels)
    row = res.rows[0]
    mine = (labels == 0) & (section == 0)
    assert row["n"] == mine.sum() and row["error_rate"] == pytest.approx(wrong[mine].mean())
    assert row["error_ci_lo"] <= row["error_rate"] <= row["error_ci_hi"]
    assert row["cos_ci_lo"] <= row["cos_median"] <= row["cos_ci_hi"]


def test_small_sections_are_not_significant_and_give_no_trend():
    labels, scale, wrong, cos = _synthetic(True, n_per_class=250)
    section, class_max = assign_sections(scale, labels, 3, 10)
    res = analyse(labels, section, class_max, cos, wrong, np.zeros_like(wrong), Settings())
    assert not any(r["significant"] for r in res.rows)  # ~25 samples per section
    assert res.summary["classes_with_trend"] == 0 and res.summary["median_rho_error"] is None


def test_statistics_are_reproducible_and_seeded():
    labels, scale, wrong, cos = _synthetic(True, n_per_class=300)
    section, class_max = assign_sections(scale, labels, 3, 10)
    args = (labels, section, class_max, cos, wrong, np.zeros_like(wrong))
    a, b = analyse(*args, Settings(seed=5)), analyse(*args, Settings(seed=5))
    c = analyse(*args, Settings(seed=6))
    assert a.rows == b.rows
    assert [r["error_ci_lo"] for r in a.rows] != [r["error_ci_lo"] for r in c.rows]


# ---------------------------------------------------------------- the metric on a context
def test_metric_result_is_well_formed_and_consistent():
    ctx = make_context(eps=0.1)
    result = check_metric(ScaleSections, ctx, min_count=5, resamples=200)
    s = result.summary
    assert s["n"] == 100 and s["sections"] == 10
    for p in ("fgsm", "gabor", "pgd"):
        for key in ("decreasing_error_classes", "median_rho_error", "median_rho_cosine"):
            assert f"{p}.{key}" in s
        wrong = result.arrays[f"{p}.wrong"]
        assert s[f"{p}.error_rate"] == pytest.approx(wrong.mean())
        table = result.tables[f"{p}.error_rate"]
        assert len(table) == 10 and set(table[0]) == {"class", *map(str, range(1, 11))}
        assert {f"{p}.{c}" for c in ctx.class_names} <= set(result.figures)
    sizes = result.tables["section_sizes"]
    assert sum(v for row in sizes for k, v in row.items() if k != "class") == 100
    assert s["pgd.error_rate"] >= s["fgsm.error_rate"] - 0.05  # PGD at least as strong
    fig = result.figures["fgsm.0"]
    assert fig.kind == "box" and len(fig.series[0]["stats"]) == 10
    assert result.warnings == []


def test_no_significant_section_is_a_warning():
    result = ScaleSections(perturbations=["fgsm"], resamples=50).compute(make_context())
    assert any("min_count=100" in w for w in result.warnings)


def test_merge_and_other_layers():
    ctx = make_context(eps=0.1)
    result = ScaleSections(
        perturbations=["fgsm"], sections=20, merge=2, min_count=3, resamples=50, layer="conv2"
    ).compute(ctx)
    assert "merged.fgsm.median_rho_error" in result.summary
    assert len(result.tables["fgsm.error_rate"][0]) == 21
    assert len(result.tables["merged.fgsm.error_rate"][0]) == 11
    assert result.summary["layer"] == "conv2" and result.summary["feature_dim"] > 100


def test_two_dimensional_features_get_the_scatter_with_weight_vectors():
    data = tiny_dataset()
    host = PluginHost()
    from featrob.models.loading import build_model

    torch.manual_seed(0)
    model = build_model(
        "mlp",
        host.models,
        data.input_shape,
        10,
        options={"hidden": [2]},
        mean=data.mean,
        std=data.std,
    ).eval()
    result = ScaleSections(perturbations=["fgsm"], resamples=20).compute(make_context(model))
    fig = result.figures["feature_scatter"]
    assert fig.kind == "scatter" and len(fig.series) == 10
    assert len(fig.options["vectors"]) == 10


def test_second_run_with_other_sections_recomputes_no_feature(tmp_path):
    ctx = make_context(store=tmp_path / "store", eps=0.1)
    first = ScaleSections(perturbations=["fgsm", "gabor"], resamples=50).compute(ctx)
    calls = []
    handle = ctx.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        ctx2 = make_context(ctx.model, store=tmp_path / "store", eps=0.1)
        second = ScaleSections(perturbations=["fgsm", "gabor"], sections=5, resamples=50)
        result = second.compute(ctx2)
    finally:
        handle.remove()
    assert calls == []  # features and adversarial inputs all came from the store
    assert np.array_equal(first.arrays["fgsm.wrong"], result.arrays["fgsm.wrong"])
    assert len(result.tables["fgsm.error_rate"][0]) == 6


@pytest.mark.parametrize(
    "options",
    [
        {"sections": 0},
        {"sections": 10, "merge": 3},
        {"min_count": -1},
        {"level": 1.5},
        {"perturbations": 3},
        {"sectoins": 10},
    ],
)
def test_bad_options_are_one_clear_error(options):
    with pytest.raises(ConfigError) as err:
        ScaleSections(**options)
    assert "\n" not in str(err.value)


def test_l2_runs_skip_gabor_with_a_warning():
    ctx = make_context(eps=0.5, norm="l2")
    result = ScaleSections(perturbations=["fgsm", "gabor"], resamples=20).compute(ctx)
    assert any("gabor" in w for w in result.warnings)
    assert "gabor.error_rate" not in result.summary


def test_plugin_is_found_through_its_entry_point():
    host = PluginHost()
    assert host.metrics.entry("scale").plugin == "scale"
    assert "scale-aware" in host.training_methods


# ---------------------------------------------------------------- scale-aware training
def test_scale_penalty_gradient_is_radial_and_weights_favour_low_scales():
    method = ScaleAwareTraining(TrainConfig(), eps=0.1, norm="linf")
    features = torch.tensor([[1.0, 2.0], [3.0, -4.0], [0.3, 0.4]], requires_grad=True)
    y = torch.tensor([0, 0, 0])
    norm = features.norm(dim=1)
    typical = method.update_class_scale(norm, y, 2)[y]
    assert typical[0] == pytest.approx(norm.mean().item())
    penalty = torch.relu(1 - norm / typical).square().sum()
    (grad,) = torch.autograd.grad(penalty, features)
    cross = grad[:, 0] * features[:, 1] - grad[:, 1] * features[:, 0]
    assert torch.allclose(cross, torch.zeros(3), atol=1e-6)  # parallel to f: no rotation
    assert grad[1].abs().sum() == 0  # above the typical scale: no push
    w = method.weights(norm, typical)
    assert w.mean() == pytest.approx(1.0) and w[2] > w[0] > w[1]


def test_scale_aware_training_learns_digits():
    from featrob.trainer import accuracy, train

    data = tiny_dataset()
    host = PluginHost()
    torch.manual_seed(0)
    model: FeatrobModel = tiny_model(trained=False)
    train(
        model,
        data,
        TrainConfig(method="scale-aware", epochs=8, batch_size=64, lr=3e-3),
        host.training_methods,
        eps=0.1,
        norm="linf",
        device=torch.device("cpu"),
    )
    assert accuracy(model, data.test, device=torch.device("cpu")) > 0.85


def test_bad_method_options():
    with pytest.raises(ConfigError):
        ScaleAwareTraining(TrainConfig(), 0.1, "linf", alpha=-1)
    with pytest.raises(ConfigError):
        ScaleAwareTraining(TrainConfig(), 0.1, "linf", momentum=1.0)


def test_compare_with_a_scale_aware_model(tmp_path):
    ctx = make_context(eps=0.1, attacks=["fgsm"], store=tmp_path / "store")
    result = ScaleSections(
        perturbations=["fgsm"], min_count=5, resamples=50, compare="scale-aware"
    ).compute(ctx)
    rows = result.tables["comparison"]
    assert [r["model"] for r in rows] == ["standard", "scale-aware"]
    for r in rows:
        assert 0 <= r["robust_accuracy"] <= r["clean_accuracy"] <= 1
    assert result.summary["compare.fgsm.error_rate"] == rows[1]["fgsm.error_rate"]
    json.dumps(result.to_json(), allow_nan=False)


# ---------------------------------------------------------------- real data (paper's trend)
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "mnist_subset.npz").exists(), reason="needs ../shared/data")
def test_mnist_fgsm_error_rate_falls_with_scale_for_most_classes(tmp_path, monkeypatch):
    """Issue check: small CNN, normal training, FGSM eps 0.1, MNIST test set: the error
    rate falls with scale for at least 8 of 10 classes."""
    from featrob.runner import run

    results = run(
        {
            "dataset": f"npz:{SHARED / 'mnist_subset.npz'}",
            "model": "small-cnn",
            "train": {"epochs": 3},
            "n_per_class": 1000,
            "eps": 0.1,
            "plugins": ["scale"],
            "metrics": {"scale": {"perturbations": ["fgsm"]}},
            "out": str(tmp_path / "run"),
            "quiet": True,
        }
    )
    summary = results.metrics["scale"].summary
    assert results.metrics["scale"].error is None
    assert summary["fgsm.decreasing_error_classes"] >= 8


def test_cli_run_plugin_scale(tmp_path):
    """`featrob run --plugin scale` end to end: only the scale metric runs, results written."""
    from typer.testing import CliRunner

    from featrob.cli import create_app

    args = ["run", "--plugin", "scale", "--n-per-class", "5", "--quiet"]
    args += ["--set", 'metrics.scale.perturbations=["fgsm"]', "--set", "metrics.scale.min_count=2"]
    args += ["--store", str(tmp_path / "store"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(create_app(lambda: PluginHost()), args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(data["metrics"]) == ["scale"] and data["metrics"]["scale"]["error"] is None
    assert data["metrics"]["scale"]["summary"]["n"] == 50
