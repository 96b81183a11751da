"""The batched trainer behind ``featrob compression theory`` (paper 001, Theorem 7 study):
hand-written gradients against autograd, Adam against torch.optim.Adam, stop-at-fit, and
the hypotheses' options on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from featrob_compression.nets import Nets, init_nets, train_nets
from featrob_compression.theory import (
    _data,
    generator_matrices,
    qr_prediction,
    relu_experiment,
    sign_vectors,
)
from typer.testing import CliRunner

from featrob.cli import create_app
from featrob.plugins import PluginHost


def _problem(runs: int = 3, n: int = 6, hidden: int = 16, relu: bool = True, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h = generator_matrices(runs, n, 1.0, gen)
    x, y = _data(h, sign_vectors(n, None, gen))
    return init_nets(runs, n, hidden, relu, gen), x.float(), y


def _loss(nets: Nets, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over networks of each one's mean cross-entropy (what the trainer minimises)."""
    out = nets(x)
    per = F.cross_entropy(out.reshape(-1, 2), y.reshape(-1), reduction="none")
    return per.view(y.shape).mean(1).sum()


@pytest.mark.parametrize("relu", [True, False])
def test_trainer_follows_torch_adam(relu):
    """Ten steps of the hand-written backward pass and Adam give torch.optim.Adam's weights
    on autograd's gradients."""
    nets, x, y = _problem(relu=relu)
    ref = nets.map(lambda t: t.clone().requires_grad_(True))
    params = [ref.w1, ref.b1, ref.w2, ref.b2]
    opt = torch.optim.Adam(params, lr=0.01)
    for _ in range(10):
        opt.zero_grad()
        _loss(ref, x, y).backward()
        opt.step()
    train_nets(nets, x, y, steps=10, lr=0.01)
    for ours, theirs in zip((nets.w1, nets.b1, nets.w2, nets.b2), params, strict=True):
        torch.testing.assert_close(ours, theirs.detach(), atol=1e-6, rtol=1e-5)


def test_sgd_is_plain_gradient_descent():
    nets, x, y = _problem()
    ref = nets.map(lambda t: t.clone().requires_grad_(True))
    grads = torch.autograd.grad(_loss(ref, x, y), [ref.w1, ref.b1, ref.w2, ref.b2])
    before = nets.map(torch.clone)
    train_nets(nets, x, y, steps=1, lr=0.5, optimizer="sgd")
    for new, old, g in zip(
        (nets.w1, nets.b1, nets.w2, nets.b2),
        (before.w1, before.b1, before.w2, before.b2),
        grads,
        strict=True,
    ):
        torch.testing.assert_close(new, old - 0.5 * g, atol=1e-6, rtol=1e-5)


def test_stop_at_fit_keeps_the_first_fitting_weights():
    """A network that fits at step k keeps exactly its step-k weights (what training it
    alone for k steps gives) while the others train on; all reach 100% training accuracy."""
    nets, x, y = _problem(runs=4, n=5, hidden=32, seed=1)
    start = nets.map(torch.clone)
    report = train_nets(nets, x, y, steps=400, lr=0.01, stop_at_fit=True)
    assert bool((report.accuracy == 1).all())
    assert len(set(report.steps.tolist())) > 1  # they stop at different steps
    for r, k in enumerate(report.steps.tolist()):
        alone = start.map(lambda t, r=r: t[r : r + 1].clone())
        train_nets(alone, x[r : r + 1], y[r : r + 1], steps=k, lr=0.01)
        with torch.no_grad():
            assert not bool((alone(x[r : r + 1]).argmax(-1) != y[r : r + 1]).any())
        torch.testing.assert_close(alone.w1[0], nets.w1[r], atol=1e-6, rtol=1e-5)
        if k > 0:  # one step earlier it did not fit yet
            earlier = start.map(lambda t, r=r: t[r : r + 1].clone())
            train_nets(earlier, x[r : r + 1], y[r : r + 1], steps=k - 1, lr=0.01)
            with torch.no_grad():
                assert bool((earlier(x[r : r + 1]).argmax(-1) != y[r : r + 1]).any())


def test_bad_optimizer_is_one_clear_error():
    nets, x, y = _problem()
    with pytest.raises(ValueError, match="adam or sgd"):
        train_nets(nets, x, y, steps=1, lr=0.1, optimizer="lbfgs")


def test_linear_networks_at_a_large_scale_look_along_the_compressed_direction():
    """Theorem 6 measured as Table 3: with H's other columns scaled up, accurate linear
    networks classify along r (R^-1 Q^T's last row), so |cos(grad g, x' - x)| comes out as
    the QR fraction |R_nn| / ||h_n||, far below its value at scale 1."""
    res = relu_experiment(
        8, networks=6, hidden=16, train_points=0, test_points=40, steps=1500, scale=30.0,
        activation="linear", lambdas=2, seed=0, max_attempts=60,
    )  # fmt: skip
    assert res.accurate_networks >= 3
    assert res.mean_abs_cos[0] == pytest.approx(res.qr_fraction_mean, abs=0.05)
    plain = relu_experiment(
        8, networks=6, hidden=16, train_points=0, test_points=40, steps=500,
        activation="linear", lambdas=2, seed=0,
    )  # fmt: skip
    assert plain.mean_abs_cos[0] > plain.qr_fraction_mean + 0.15


def test_relu_experiment_records_its_settings_and_steps():
    res = relu_experiment(
        6, networks=3, hidden=32, train_points=0, test_points=20, steps=300, lambdas=2,
        stop_at_fit=True, seed=0,
    )  # fmt: skip
    assert res.accurate_networks == 3
    assert 0 < res.mean_steps < 300
    assert res.settings["stop_at_fit"] and res.settings["train_points"] == 0
    gen = torch.Generator().manual_seed(0)
    assert qr_prediction(generator_matrices(2, 6, 1.0, gen))[0].shape == (2,)


def test_theory_command_takes_the_hypotheses_options(tmp_path: Path):
    app = create_app(lambda: PluginHost().load())
    out = tmp_path / "relu.json"
    args = ["compression", "theory", "--experiment", "relu", "--relu-dims", "6"]
    args += ["--networks", "2", "--hidden", "32", "--steps", "300", "--stop-at-fit"]
    args += ["--train-points", "0", "--scale", "2", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "QR frac" in result.output and "steps" in result.output
    settings = json.loads(out.read_text())["relu"][0]["settings"]
    assert settings["stop_at_fit"] and settings["scale"] == 2.0 and settings["hidden"] == 32
    bad = CliRunner().invoke(app, ["compression", "theory", "--optimizer", "lbfgs"])
    assert bad.exit_code != 0 and "adam or sgd" in bad.output
