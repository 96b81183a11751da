"""FAB and FAB-T: exact projections, closed forms on linear models, the attack contract, and
agreement with AutoAttack's own FAB (``pyautoattack``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from featrob.attacks.base import flat_norm
from featrob.attacks.fab import FAB, FABTargeted
from featrob.attacks.fab_projections import (
    linf_step,
    project_l2,
    project_linf,
    water_level,
    water_level_sorted,
)
from featrob.attacks.losses import top_targets
from featrob.errors import ConfigError
from featrob.testing import check_attack, tiny_dataset, tiny_model

from .attack_reference import L2_EPS, LINF_EPS, reference_data, reference_model, robust_accuracy

pyautoattack = pytest.importorskip(
    "pyautoattack", reason="the AutoAttack reference comes with [test]"
)
from pyautoattack.fab_projections import projection_l2, projection_linf  # noqa: E402
from pyautoattack.fab_pt import FABAttack_PT  # noqa: E402

#: Reference samples for the fast agreement tests, the same fixed prefix for both
#: implementations. All 450 test digits take ~3 minutes on 2 cores (FAB-T runs up to
#: 9 x 100 steps per robust sample, for each eps and for both codes), so the fast tests use
#: the first 100 (FAB-T; 1 percentage point is 1 sample) and the first 60 (median norms),
#: which keeps this file near 60 s; the `slow` test compares on all 450.
N_FAST = 100
N_MEDIAN = 60


# ---------------------------------------------------------------------------- projections
def _problems(seed: int, count: int = 25) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Random reachable problems: point t in [0, 1]^n, normal w, offset b hit inside the box."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(5, 21))
        t, w = rng.random(n), rng.normal(size=n)
        w[rng.random(n) < 0.15] = 0.0  # some coordinates that cannot help
        b = float(w @ rng.random(n))  # a point of the box lies on the hyperplane
        out.append((t, w, b))
    return out


def _ours(project, t: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    as_t = lambda a: torch.tensor(a, dtype=torch.float64)[None]  # noqa: E731
    return project(as_t(t), as_t(w), torch.tensor([b], dtype=torch.float64))[0].numpy()


def test_linf_projection_matches_linprog():
    for t, w, b in _problems(0):
        n = len(t)
        d = _ours(project_linf, t, w, b)
        # variables (d, tau): min tau s.t. -tau <= d_i <= tau, box, w.d = b - w.t
        eye = np.eye(n)
        a_ub = np.block([[eye, -np.ones((n, 1))], [-eye, -np.ones((n, 1))]])
        res = linprog(
            np.r_[np.zeros(n), 1.0],
            A_ub=a_ub,
            b_ub=np.zeros(2 * n),
            A_eq=np.r_[w, 0.0][None],
            b_eq=[b - w @ t],
            bounds=[(-ti, 1 - ti) for ti in t] + [(0, None)],
            method="highs",
        )
        assert res.status == 0
        assert abs(np.abs(d).max() - res.x[-1]) < 1e-6
        # at the optimal tau every coordinate with w_i != 0 is forced; the rest are 0
        used = w != 0
        np.testing.assert_allclose(d[used], res.x[:n][used], atol=1e-6)
        assert np.all(d[~used] == 0)
        assert (
            abs(w @ (t + d) - b) < 1e-9 and np.all(t + d >= -1e-12) and np.all(t + d <= 1 + 1e-12)
        )


def test_l2_projection_matches_slsqp_and_kkt():
    for t, w, b in _problems(1):
        d = _ours(project_l2, t, w, b)
        c = b - w @ t
        res = minimize(
            lambda z: 0.5 * z @ z,
            np.zeros(len(t)),
            jac=lambda z: z,
            constraints=[{"type": "eq", "fun": lambda z: w @ z - c, "jac": lambda z: w}],  # noqa: B023
            bounds=[(-ti, 1 - ti) for ti in t],
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        assert res.success
        np.testing.assert_allclose(d, res.x, atol=1e-6)
        # KKT: d = clip(lam w, -t, 1 - t) for one scalar lam (lam estimated on free coords)
        free = (np.abs(w) > 1e-3) & (d > -t + 1e-9) & (d < 1 - t - 1e-9)
        if free.any():
            lam = np.median(d[free] / w[free])
            np.testing.assert_allclose(d, np.clip(lam * w, -t, 1 - t), atol=1e-9)
        assert abs(w @ (t + d) - b) < 1e-9


@pytest.mark.parametrize("project", [project_linf, project_l2])
def test_unreachable_hyperplane_gives_the_box_corner(project):
    t = torch.tensor([[0.2, 0.7, 0.5, 0.9]], dtype=torch.float64)
    w = torch.tensor([[1.0, -2.0, 0.0, 0.5]], dtype=torch.float64)
    corner_up = torch.tensor([[0.8, -0.7, 0.0, 0.1]], dtype=torch.float64)  # max of w.(t+d)
    # max over the box of w.z is 1 + 0 + 0.5 = 1.5; min is 0 - 2 + 0 = -2
    torch.testing.assert_close(project(t, w, torch.tensor([5.0], dtype=torch.float64)), corner_up)
    corner_down = torch.tensor([[-0.2, 0.3, 0.0, -0.9]], dtype=torch.float64)
    torch.testing.assert_close(
        project(t, w, torch.tensor([-5.0], dtype=torch.float64)), corner_down
    )
    # on the hyperplane already: no move; w = 0: nothing to do
    here = (w * t).sum(1)
    assert project(t, w, here).abs().max() == 0
    assert (
        project(t, torch.zeros_like(w), torch.tensor([1.0], dtype=torch.float64)).abs().max() == 0
    )


@pytest.mark.parametrize(
    ("ours", "ref"), [(project_linf, projection_linf), (project_l2, projection_l2)]
)
def test_projections_agree_with_autoattack(ours, ref):
    gen = torch.Generator().manual_seed(3)
    t = torch.rand(64, 30, generator=gen)
    w = torch.randn(64, 30, generator=gen)
    b = (w * torch.rand(64, 30, generator=gen)).sum(1) * 1.5  # some rows unreachable
    torch.testing.assert_close(ours(t, w, b), ref(t, w.clone(), b.clone()), atol=1e-5, rtol=0)


def _level_problems(rows: int = 400, n: int = 50, seed: int = 0):
    """Water-level problems with ties, zero weights, zero breakpoints, c = 0 and rows the
    box cannot reach (c above sum a r)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(rows, n, generator=gen, dtype=torch.float64)
    a[torch.rand(rows, n, generator=gen) < 0.2] = 0.0
    r = torch.rand(rows, n, generator=gen, dtype=torch.float64)
    r[torch.rand(rows, n, generator=gen) < 0.2] = 0.0  # pixels already at the box edge
    r[: rows // 4] = (r[: rows // 4] * 4).round() / 4  # many equal breakpoints
    reach = (a * r).sum(1)
    c = reach * torch.rand(rows, generator=gen, dtype=torch.float64) * 1.2  # ~1/6 unreachable
    c[::17] = 0.0
    return a, r, c


@pytest.mark.parametrize("max_iters", [0, 1, 2, 32])
def test_newton_water_level_agrees_with_sorting(max_iters):
    """Newton's method (with the sort as fallback when max_iters runs out) gives the sort's
    levels: 0 at c = 0, inf where unreachable, and h(lam) = c elsewhere."""
    a, r, c = _level_problems()
    ours = water_level(a, r, c, min_iters=1, max_iters=max_iters)
    ref = water_level_sorted(a, r, c)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref)) and bool(torch.isinf(ref).any())
    fin = torch.isfinite(ref)
    torch.testing.assert_close(ours[fin], ref[fin], atol=1e-12, rtol=1e-9)
    assert bool((ours[c == 0] == 0).all())
    h = (a[fin] * torch.minimum(ours[fin, None], r[fin])).sum(1)
    torch.testing.assert_close(h, c[fin], atol=1e-12, rtol=1e-9)


def test_newton_water_level_float32_and_few_steps():
    """In float32 the two agree to rounding, and the default min_iters=3 resolves every row
    of these problems without the fallback (the fallback would be the same sort)."""
    a, r, c = (v.float() for v in _level_problems(seed=1))
    ours, ref = water_level(a, r, c), water_level_sorted(a, r, c)
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(ours))
    torch.testing.assert_close(ours[fin], ref[fin], atol=1e-6, rtol=1e-5)


def test_linf_step_returns_the_projection_and_its_norm():
    """FAB's form of the Linf projection (sign and |w| given, c = b - w.t) gives
    project_linf's steps, and its size is their Linf norm: tau where the hyperplane is
    reachable, the largest room where it is not, 0 at c = 0; the steps stay in the box."""
    gen = torch.Generator().manual_seed(3)
    t = torch.rand(300, 40, generator=gen, dtype=torch.float64)
    t[:, ::7] = 0.0  # pixels at the box's edges
    t[:, 3::7] = 1.0
    w = torch.randn(300, 40, generator=gen, dtype=torch.float64)
    w[torch.rand(300, 40, generator=gen) < 0.15] = 0.0
    c = torch.randn(300, generator=gen, dtype=torch.float64) * 4  # some beyond the box
    c[::23] = 0.0
    d, size = linf_step(t, w.sign(), w.abs(), c)
    b = c + (w * t).sum(1)
    torch.testing.assert_close(d, project_linf(t, w, b), atol=1e-12, rtol=0)  # c rounded
    torch.testing.assert_close(size, d.abs().amax(1), atol=1e-12, rtol=1e-12)
    assert bool(((t + d >= 0) & (t + d <= 1)).all())
    reach = (w.abs() * torch.where(w * c[:, None].sign() > 0, 1 - t, t)).sum(1)
    far = c.abs() > reach
    assert 0 < int(far.sum()) < len(c)  # both kinds present
    torch.testing.assert_close((w * d).sum(1)[~far], c[~far], atol=1e-12, rtol=1e-9)
    assert bool((size[c == 0] == 0).all())


# ---------------------------------------------------------------------------- linear models
def _linear(k: int, n: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(k, n, generator=gen, dtype=torch.float64)
    bias = torch.randn(k, generator=gen, dtype=torch.float64)
    x = 0.4 + 0.2 * torch.rand(30, n, generator=gen, dtype=torch.float64)  # box far away

    def forward(z: torch.Tensor) -> torch.Tensor:
        return z.flatten(1) @ weight.T + bias

    y = forward(x).argmax(1)
    return forward, weight, x, y


def _closed_form(forward, weight, x, y, norm: str) -> torch.Tensor:
    """min_j |f_y - f_j| / ||w_y - w_j||_* (dual norm: L1 for Linf, L2 for L2)."""
    logits = forward(x)
    gap = (logits.gather(1, y[:, None]) - logits).abs()
    dual = torch.cdist(weight, weight, p=1 if norm == "linf" else 2)[y]
    return (gap / dual).scatter(1, y[:, None], float("inf")).amin(1)


def _scalar_fab(steps: int, eta: float = 1.05, beta: float = 0.9, alpha_max: float = 0.1):
    """Best recorded norm / distance of FAB on a 2-class linear model (box not binding).

    Every projection lies on the line x0 + s d (d: the projection of x0), so FAB reduces to
    the scalar s: d1 = (1 - s) d, d2 = d, alpha = min((1-s) / (2-s), alpha_max).
    """
    s, best = 0.0, float("inf")
    for _ in range(steps):
        alpha = min(abs(1 - s) / (abs(1 - s) + 1), alpha_max)
        s = (s + eta * (1 - s)) * (1 - alpha) + eta * alpha
        if s > 1:
            best, s = min(best, s), beta * s
    return best


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("classes", [2, 3])
def test_linear_model_closed_form(norm, classes):
    forward, weight, x, y = _linear(classes)
    exact = _closed_form(forward, weight, x, y, norm)
    # One step lands exactly eta times the distance past the closest boundary.
    one = FAB(0.1, norm, steps=1).minimize(forward, x, y)
    torch.testing.assert_close(one.norm, 1.05 * exact, rtol=1e-4, atol=0)
    # With eta -> 1 the best point converges to the minimal perturbation itself.
    near = FAB(0.1, norm, eta=1 + 1e-5).minimize(forward, x, y)
    torch.testing.assert_close(near.norm, exact, rtol=1e-4, atol=0)
    assert bool((near.norm >= exact * (1 - 1e-9)).all())  # never below the true minimum
    full = FAB(0.1, norm).minimize(forward, x, y)
    assert bool(full.success.all())
    assert bool((full.norm >= exact * (1 - 1e-9)).all() and (full.norm <= 1.05 * exact).all())
    if classes == 2:  # the walk along the boundary is the scalar recursion, exactly
        torch.testing.assert_close(full.norm / exact, torch.full_like(exact, _scalar_fab(100)))
    torch.testing.assert_close(flat_norm(full.x_adv - x, norm), full.norm)
    assert bool((forward(full.x_adv).argmax(1) != y).all())


def test_linear_model_targeted_uses_only_the_target_boundary():
    forward, weight, x, y = _linear(3, seed=1)
    target = (y + 1) % 3
    logits = forward(x)
    rows = torch.arange(len(x))
    gap = (logits[rows, y] - logits[rows, target]).abs()
    exact = gap / (weight[target] - weight[y]).norm(dim=1)
    res = FAB(0.1, "l2", steps=1).minimize(forward, x, y, target=target)
    ok = res.success
    torch.testing.assert_close(res.norm[ok], 1.05 * exact[ok], rtol=1e-4, atol=0)
    assert bool((forward(res.x_adv).argmax(1)[ok] == target[ok]).all())


# ---------------------------------------------------------------------------- small CNN
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targeted_minimize_reaches_the_target(norm):
    model = tiny_model()
    data = tiny_dataset()
    x, y = data.test.float_images()[:40], data.test.labels[:40]
    with torch.no_grad():
        runner_up = top_targets(model(x), 1)[:, 0]
    # Only the boundary f_target - f_y is followed, so a far target class can stay out of
    # reach (a third class wins first); the runner-up class is almost always reached.
    for target, rate in ((runner_up, 0.9), ((y + 3) % 10, 0.5)):
        res = FAB(0.1, norm, steps=40).minimize(model, x, y, target=target)
        with torch.no_grad():
            pred = model(res.x_adv).argmax(1)
        ok = res.success
        assert ok.float().mean() >= rate
        assert bool((pred[ok] == target[ok]).all())
        torch.testing.assert_close(flat_norm(res.x_adv - x, norm), torch.where(ok, res.norm, 0))
        assert bool((res.x_adv[~ok] == x[~ok]).all()) and bool(torch.isinf(res.norm[~ok]).all())


def test_misclassified_inputs_cost_nothing_and_empty_batches_work():
    model = tiny_model()
    x = tiny_dataset().test.float_images()[:10]
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10
    res = FAB(0.1, steps=5).minimize(model, x, wrong)
    assert bool(res.success.all()) and bool((res.norm == 0).all())
    assert torch.equal(res.x_adv, x)
    for cls in (FAB, FABTargeted):
        empty = cls(0.1, steps=3).minimize(model, x[:0], wrong[:0])
        assert empty.x_adv.shape == (0, *x.shape[1:]) and empty.norm.shape == (0,)


@pytest.mark.parametrize("cls", [FAB, FABTargeted])
def test_contract(cls):
    check_attack(cls, eps=0.1, steps=20)


def test_restarts_never_worsen_and_are_batch_invariant():
    check_attack(FAB, eps=0.1, norms=("l2",), steps=10, restarts=2)
    model = tiny_model()
    data = tiny_dataset()
    x, y = data.test.float_images()[:30], data.test.labels[:30]
    one = FAB(1.0, "l2", steps=10).minimize(model, x, y)
    two = FAB(1.0, "l2", steps=10, restarts=2).minimize(model, x, y)
    assert bool((two.norm <= one.norm).all())


def test_vmap_and_loop_jacobians_agree_and_vmap_falls_back():
    model = tiny_model()
    data = tiny_dataset()
    x, y = data.test.float_images()[:20], data.test.labels[:20]
    a = FAB(0.1, steps=10, jacobian="vmap").minimize(model, x, y)
    b = FAB(0.1, steps=10, jacobian="loop").minimize(model, x, y)
    torch.testing.assert_close(a.norm, b.norm, atol=1e-5, rtol=1e-5)

    class OldStyleIdentity(torch.autograd.Function):  # no setup_context: torch.func refuses
        @staticmethod
        def forward(ctx, inp):
            return inp.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad

    def legacy(inp: torch.Tensor) -> torch.Tensor:
        return model(OldStyleIdentity.apply(inp))

    with pytest.warns(RuntimeWarning, match="vmap failed"):
        c = FAB(0.1, steps=10, jacobian="vmap").minimize(legacy, x, y)
    d = FAB(0.1, steps=10, jacobian="loop").minimize(legacy, x, y)
    torch.testing.assert_close(c.norm, d.norm)


def test_bad_input():
    model = tiny_model()
    x, y = tiny_dataset().test.float_images()[:4], tiny_dataset().test.labels[:4]
    with pytest.raises(ConfigError, match="takes no loss"):
        FAB(0.1).perturb(model, x, y, loss=lambda out, t: out.sum(1))
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        FAB(0.1, step=10)
    with pytest.raises(ConfigError, match="did you mean 'n_target_classes'"):
        FABTargeted(0.1, n_target_class=3)
    with pytest.raises(ConfigError, match="jacobian"):
        FAB(0.1, jacobian="fast")
    with pytest.raises(ConfigError, match="alpha_max"):
        FAB(0.1, alpha_max=1.5)
    with pytest.raises(ConfigError, match="eta"):
        FAB(0.1, eta=0)
    with pytest.raises(ConfigError, match="target must have shape"):
        FAB(0.1).minimize(model, x, y, target=y[:2])

    def frozen(inp: torch.Tensor) -> torch.Tensor:
        return model(inp).detach()

    for attack in (
        FAB(0.1, steps=2),
        FAB(0.1, steps=2, jacobian="vmap"),
        FABTargeted(0.1, steps=2),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ConfigError, match="differentiabl"):
                attack.minimize(frozen, x, y)


# ---------------------------------------------------------------------------- reference
def _norm_name(norm: str) -> str:
    return "Linf" if norm == "linf" else "L2"


def _fab_t_accuracies(norm: str, n: int | None) -> list[tuple[float, float, float]]:
    model, (x, y, seeds) = reference_model(), reference_data(n)
    rows = []
    for eps in LINF_EPS if norm == "linf" else L2_EPS:
        ours = FABTargeted(eps, norm).perturb(model, x, y, sample_seeds=seeds)
        ref = FABAttack_PT(
            model,
            norm=_norm_name(norm),
            n_restarts=1,
            n_iter=100,
            eps=eps,
            targeted=True,
            n_target_classes=9,
            seed=0,
            device="cpu",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = ref.perturb(x, y)
        rows.append((eps, robust_accuracy(model, ours, y), robust_accuracy(model, theirs, y)))
    return rows


def _median_norms(norm: str, n: int | None) -> tuple[float, float]:
    model, (x, y, seeds) = reference_model(), reference_data(n)
    ours = FAB(1.0, norm).minimize(model, x, y, sample_seeds=seeds).norm
    ref = FABAttack_PT(model, norm=_norm_name(norm), n_restarts=1, n_iter=100, device="cpu")
    with torch.no_grad():
        adv = ref.attack_single_run(x, y, use_rand_start=False, is_targeted=False)
        found = model(adv).argmax(1) != y  # the reference returns x where it found nothing
    theirs = torch.where(found, flat_norm(adv - x, norm), float("inf"))
    return float(ours.median()), float(theirs.median())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_agrees_with_autoattack(norm):
    for eps, ours, theirs in _fab_t_accuracies(norm, N_FAST):
        assert abs(ours - theirs) <= 0.01, (norm, eps, ours, theirs)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_median_norm_agrees_with_autoattack(norm):
    ours, theirs = _median_norms(norm, N_MEDIAN)
    assert abs(ours - theirs) <= 0.05 * theirs, (norm, ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_agrees_with_autoattack_on_all_samples(norm):
    for eps, ours, theirs in _fab_t_accuracies(norm, None):
        assert abs(ours - theirs) <= 0.01, (norm, eps, ours, theirs)
    ours_med, theirs_med = _median_norms(norm, None)
    assert abs(ours_med - theirs_med) <= 0.05 * theirs_med, (norm, ours_med, theirs_med)
