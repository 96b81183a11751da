"""Fast CPU tests of the built-in attacks (FGSM, PGD, Gabor noise) and their plugin."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from featrob.attacks import FGSM, PGD, GaborNoise, cross_entropy, misclassified
from featrob.attacks.base import take_rows
from featrob.attacks.gabor import gabor_kernel
from featrob.errors import ConfigError
from featrob.seeding import sample_seeds


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def digits():
    """A small MLP trained for ~1 s on scikit-learn's 8x8 digits; returns model, x, y."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(data.target)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_x, train_y = x[:1400], y[:1400]
    for _ in range(10):
        for idx in torch.randperm(1400, generator=gen).split(100):
            opt.zero_grad()
            F.cross_entropy(model(train_x[idx]), train_y[idx]).backward()
            opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    return model, x[1400:], y[1400:]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def dist(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    d = (a - b).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


# ---------------------------------------------------------------------------- strength
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_pgd_and_fgsm_stay_in_ball_and_lower_accuracy(digits, norm, eps):
    model, x, y = digits
    clean = accuracy(model, x, y)
    assert clean > 0.9
    x_pgd = PGD(eps, norm)(model, x, y)
    x_fgsm = FGSM(eps, norm)(model, x, y)
    x_fgsm_rs = FGSM(eps, norm, random_start=True)(model, x, y)
    for adv in (x_pgd, x_fgsm, x_fgsm_rs):
        assert adv.shape == x.shape and torch.isfinite(adv).all()
        assert dist(adv, x, norm).max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
    acc_pgd, acc_fgsm = accuracy(model, x_pgd, y), accuracy(model, x_fgsm, y)
    assert acc_pgd < clean - 0.3
    assert acc_fgsm < clean - 0.2
    assert acc_pgd <= acc_fgsm + 0.02
    assert accuracy(model, x_fgsm_rs, y) < clean - 0.2


def test_pgd_grad_mode_and_parameter_grads_untouched(digits):
    model, x, y = digits
    ref = PGD(0.1, seed=3)(model, x[:50], y[:50])
    with torch.no_grad():
        inside = PGD(0.1, seed=3)(model, x[:50], y[:50])
    torch.testing.assert_close(inside, ref, atol=0, rtol=0)
    assert not inside.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_schedules_step_sizes():
    assert PGD(0.1, steps=10).step_sizes() == pytest.approx([0.025] * 10)
    assert PGD(0.1, steps=4, step_size=0.05).step_sizes() == pytest.approx([0.05] * 4)
    assert PGD(0.1, steps=4, rel_step_size=0.5).base_step_size() == pytest.approx(0.05)
    cosine = PGD(0.1, steps=5, schedule="cosine", step_size=1.0).step_sizes()
    assert cosine[0] == pytest.approx(1.0) and cosine[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(cosine))
    step = PGD(0.1, steps=8, schedule="step", step_size=1.0).step_sizes()
    assert step == [1.0] * 4 + [0.5] * 2 + [0.25] * 2


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_pgd_schedules_attack(digits, schedule):
    model, x, y = digits
    adv = PGD(0.1, schedule=schedule)(model, x, y)
    assert dist(adv, x, "linf").max() <= 0.1 + 1e-6
    assert accuracy(model, adv, y) < accuracy(model, x, y) - 0.3


# ---------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_batch_size_invariance(digits, norm):
    model, x, y = digits
    x, y = x[:120], y[:120]
    seeds = sample_seeds(7, torch.arange(1400, 1520))
    attack = PGD(0.1 if norm == "linf" else 1.0, norm, restarts=2)
    whole = attack(model, x, y, sample_seeds=seeds)
    halves = torch.cat(
        [
            attack(model, x[:45], y[:45], sample_seeds=seeds[:45]),
            attack(model, x[45:], y[45:], sample_seeds=seeds[45:]),
        ]
    )
    torch.testing.assert_close(whole, halves, atol=1e-6, rtol=0)


def test_batched_restarts_equal_looped_and_never_worse(digits):
    model, x, y = digits
    x, y = x[:150], y[:150]
    seeds = sample_seeds(1, torch.arange(150))
    kw = {"loss": cross_entropy, "sample_seeds": seeds}  # no success: highest loss wins
    batched = PGD(0.05, restarts=3, steps=5)(model, x, y, **kw)
    looped = PGD(0.05, restarts=3, steps=5, batch_restarts=False)(model, x, y, **kw)
    torch.testing.assert_close(batched, looped, atol=1e-6, rtol=0)
    single = PGD(0.05, restarts=1, steps=5)(model, x, y, **kw)
    with torch.no_grad():
        assert (cross_entropy(model(batched), y) >= cross_entropy(model(single), y) - 1e-5).all()


@pytest.mark.parametrize(("norm", "schedule"), [("linf", "cosine"), ("l2", "constant")])
def test_drop_stationary_changes_cost_not_result(digits, norm, schedule):
    # Maximise and minimise hidden ReLU units: many replicas sit at 0 with a zero gradient
    # (or pinned at a corner of the box) and stop moving, which the option drops.
    model, x, _ = digits
    hidden = model[:3]
    x = x[:40]
    units = torch.arange(8).repeat_interleave(len(x))
    signs = torch.ones_like(units)
    signs[len(units) // 2 :] = -1
    target = torch.stack([units, signs], 1)
    xr = x.repeat(8, 1, 1, 1)
    seeds = sample_seeds(3, torch.arange(len(xr)))
    rows = []

    def forward(z):
        rows.append(len(z))
        return hidden(z)

    def objective(out, t):
        return out.gather(1, t[:, :1]).squeeze(1) * t[:, 1]

    eps = 0.1 if norm == "linf" else 1.0
    kw = {"loss": objective, "sample_seeds": seeds}
    plain = PGD(eps, norm, steps=10, schedule=schedule)(forward, xr, target, **kw)
    full_rows, rows[:] = sum(rows), []
    dropped = PGD(eps, norm, steps=10, schedule=schedule, drop_stationary=True)
    fast = dropped(forward, xr, target, **kw)
    assert sum(rows) < 0.8 * full_rows
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=0)


def test_drop_stationary_refused_where_inexact():
    with pytest.raises(ConfigError, match="drop_stationary"):
        PGD(1.0, "l2", schedule="cosine", drop_stationary=True)


def test_success_beats_loss_in_best_iterate():
    # Linear objective: the loss rises every step, but only the start counts as "success".
    x = torch.full((3, 4), 0.5)
    y = torch.zeros(3, dtype=torch.long)

    def loss(out, _y):
        return out.sum(1)

    def success(out, _y):
        return out.sum(1) < 2.0 + 1e-4

    attack = PGD(0.1, random_start=False, steps=4)
    with_success = attack(lambda t: t, x, y, loss=loss, success=success)
    without = attack(lambda t: t, x, y, loss=loss)
    torch.testing.assert_close(with_success, x)
    torch.testing.assert_close(without, x + 0.1)


# ---------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_single_feature_reaches_closed_form(norm):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 64, generator=gen)
    x = torch.full((5, 1, 8, 8), 0.5)
    j = torch.arange(5)  # sample i maximises feature i

    def forward(t):
        return t.flatten(1) @ w.T

    def feature(out, idx):
        return out.gather(1, idx[:, None]).squeeze(1)

    eps = 0.01
    attack = PGD(eps, norm, steps=10, random_start=(norm == "linf"), restarts=2)
    adv = attack(forward, x, j, loss=feature)
    gain = feature(forward(adv), j) - feature(forward(x), j)
    bound = eps * (w.abs().sum(1) if norm == "linf" else w.norm(dim=1))
    torch.testing.assert_close(gain, bound, rtol=1e-4, atol=0)


def test_nan_loss_gives_finite_output(digits):
    model, x, y = digits
    x, y = x[:20], y[:20]
    bad = torch.zeros(20, 1)
    bad[::3] = float("nan")

    def forward(t):  # NaN logits for every third sample (restarts replicate the batch)
        return model(t) + bad.repeat(len(t) // len(bad), 1)

    # no early exit: this forward depends on the positions in the batch, which shrinks
    pgds = (PGD(0.1, early_exit=False), PGD(1.0, "l2", restarts=2, early_exit=False))
    for attack in (*pgds, FGSM(0.1), FGSM(0.1, random_start=True)):
        adv = attack(forward, x, y)
        assert torch.isfinite(adv).all()
        assert dist(adv, x, attack.norm).max() <= attack.eps + 1e-6
    # the NaN samples never move from their (random) start; others are attacked normally
    adv = PGD(0.1, random_start=False)(forward, x, y, loss=cross_entropy)
    torch.testing.assert_close(adv[::3], x[::3])


def test_eps_zero_returns_input(digits):
    model, x, y = digits
    for attack in (PGD(0.0), FGSM(0.0, "l2"), GaborNoise(0.0)):
        torch.testing.assert_close(attack(model, x[:10], y[:10]), x[:10])


def test_default_success_is_misclassified(digits):
    model, x, y = digits
    adv = PGD(0.1, restarts=2)(model, x, y)
    assert misclassified(model(adv), y).float().mean() > 0.4


# ---------------------------------------------------------------------------- Gabor
def test_gabor_kernel_matches_formula():
    size, sigma, wavelength, aspect = 7, 2.0, 4.0, 0.5
    kern = gabor_kernel(size, sigma, 0.0, wavelength, aspect)
    assert kern.shape == (7, 7)
    half = size // 2

    def g(xx, yy):
        return math.exp(-(xx**2 + aspect**2 * yy**2) / (2 * sigma**2)) * math.cos(
            2 * math.pi * xx / wavelength
        )

    for i, j in [(3, 3), (0, 0), (1, 5), (6, 2), (3, 0)]:
        assert kern[i, j].item() == pytest.approx(g(half - j, half - i), abs=1e-12)
    assert gabor_kernel(6, sigma, 0.3, wavelength).shape == (7, 7)  # OpenCV: even grows


@pytest.mark.parametrize(("h", "w"), [(8, 8), (28, 28), (32, 32), (20, 33)])
def test_gabor_pattern_values_and_shape(h, w):
    eps = 0.05
    attack = GaborNoise(eps, seed=4)
    pat = attack.pattern(h, w)
    assert pat.shape == (h, w)
    assert pat.unique().tolist() == pytest.approx([-eps, eps])  # both signs, nothing else
    noise = attack.noise(h, w)
    assert noise.abs().max().item() == pytest.approx(1.0)

    x = torch.rand(6, 3, h, w, generator=torch.Generator().manual_seed(1))
    adv = attack(None, x, torch.zeros(6))
    assert adv.shape == x.shape
    assert dist(adv, x, "linf").max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    inner = (x > eps) & (x < 1 - eps)  # no clipping: exactly the pattern on every channel
    diff = (adv - x).masked_fill(~inner, float("nan"))
    expected = pat.expand_as(x).masked_fill(~inner, float("nan"))
    torch.testing.assert_close(diff, expected, atol=1e-6, rtol=0, equal_nan=True)


def test_gabor_same_pattern_for_same_seed_only():
    a, b, c = GaborNoise(0.1, seed=0), GaborNoise(0.1, seed=0), GaborNoise(0.1, seed=1)
    assert torch.equal(a.pattern(28, 28), b.pattern(28, 28))
    assert torch.equal(a.pattern(28, 28), a.pattern(28, 28))
    assert not torch.equal(a.pattern(28, 28), c.pattern(28, 28))
    x = torch.full((4, 1, 28, 28), 0.5)
    adv = a(None, x, torch.zeros(4))
    assert torch.equal(adv[0], adv[3])  # one universal pattern for every sample
    many = GaborNoise(0.1, sides=3, num_kernels=4, grid=5, aspect=0.5).pattern(32, 32)
    assert many.shape == (32, 32)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("cls", [FGSM, PGD, GaborNoise])
def test_bad_config_raises(cls):
    for eps in (-0.1, float("nan"), float("inf"), 1.5):
        with pytest.raises(ConfigError):
            cls(eps)
    with pytest.raises(ConfigError):
        cls(0.1, norm="l3")
    name = {FGSM: "random_strat", PGD: "stpes", GaborNoise: "sigam"}[cls]
    wanted = {FGSM: "random_start", PGD: "steps", GaborNoise: "sigma"}[cls]
    with pytest.raises(ConfigError, match=f"did you mean '{wanted}'"):
        cls(0.1, **{name: 1})


def test_bad_values_raise():
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        PGD(0.1, schedule="cosin")
    for params in (
        {"steps": -1},
        {"restarts": 0},
        {"steps": 2.5},
        {"step_size": float("nan")},
        {"random_start": "yes"},
        {"rel_step_size": -1},
    ):
        with pytest.raises(ConfigError):
            PGD(0.1, **params)
    with pytest.raises(ConfigError):
        FGSM(0.1, alpha=-1.0)
    with pytest.raises(ConfigError):
        GaborNoise(0.1, "l2")
    for params in ({"sigma": 0}, {"grid": 0}, {"kernel_size": 1.5}, {"orientation": float("inf")}):
        with pytest.raises(ConfigError):
            GaborNoise(0.1, **params)
    with pytest.raises(ConfigError):
        PGD(0.1)(lambda t: t, torch.rand(3, 4), torch.zeros(3), sample_seeds=torch.arange(2))


def test_l2_eps_above_one_allowed():
    assert PGD(2.0, "l2").eps == 2.0 and FGSM(3.0, "l2").eps == 3.0


def test_spec_records_normalised_params():
    spec = PGD(0.1, steps=20.0, restarts=2).spec()
    assert spec["attack"] == "pgd" and spec["params"]["steps"] == 20
    assert isinstance(spec["params"]["steps"], int)


# ---------------------------------------------------------------------------- plugin
def test_plugin_registers_the_builtin_attacks():
    from featrob.builtins import attacks as plugin

    seen = {}

    def register(obj, name=None, **_kw):
        seen[name or obj.name] = obj

    plugin.featrob_register_attacks(register)
    assert {"fgsm": FGSM, "pgd": PGD, "gabor": GaborNoise}.items() <= seen.items()
    assert set(seen) == {
        "fgsm",
        "pgd",
        "gabor",
        "apgd-ce",
        "apgd-dlr",
        "apgd-t",
        "fab",
        "fab-t",
        "square",
    }
    assert GaborNoise.uses_gradients is False and GaborNoise.norms == ("linf",)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_take_rows_selects_exactly(dtype):
    """take_rows (a lerp with 0/1 weights, the attack loops' row select) gives exactly
    torch.where's rows, for values of every magnitude."""
    gen = torch.Generator().manual_seed(0)
    new = torch.randn(64, 3, 5, 5, generator=gen, dtype=torch.float64).to(dtype) * 1e3
    old = torch.rand(64, 3, 5, 5, generator=gen, dtype=torch.float64).to(dtype) * 1e-3
    new[::5] = 0.0
    take = torch.rand(64, generator=gen) < 0.5
    assert torch.equal(take_rows(take, new, old), torch.where(take[:, None, None, None], new, old))
