"""Paper 002's sensitivity analysis: eqs. 3-5 and condition (8) on random samples, and the
isotropic CDF (eq. 29) against Monte Carlo sampling of uniform directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from featrob_hpm.sensitivity import (
    angle_cos,
    condition8,
    fc_sensitivity,
    isotropic_cdf,
    l2_sensitivity,
    l2_sensitivity_sup,
    monte_carlo_ratio,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_fc_sensitivity_is_eq_3_in_angle_form():
    g = _gen(0)
    z, eps, w = (torch.randn(200, 12, generator=g, dtype=torch.float64) for _ in range(3))
    s = fc_sensitivity(z, eps, w)
    angle_form = eps.norm(dim=1) * angle_cos(eps, w).abs() / (z.norm(dim=1) * angle_cos(z, w).abs())
    assert s.numpy() == pytest.approx(angle_form.numpy(), rel=1e-10)


def test_l2_supremum_bounds_every_direction_and_is_attained_along_z_minus_w():
    g = _gen(1)
    z, w = (torch.randn(300, 8, generator=g, dtype=torch.float64) for _ in range(2))
    radius = torch.rand(300, generator=g, dtype=torch.float64) * 2
    sup = l2_sensitivity_sup(z, radius, w)
    for _ in range(5):
        eps = torch.randn(300, 8, generator=g, dtype=torch.float64)
        eps = eps / eps.norm(dim=1, keepdim=True) * radius[:, None]
        assert (l2_sensitivity(z, eps, w) <= sup + 1e-12).all()
    along = (z - w) / (z - w).norm(dim=1, keepdim=True) * radius[:, None]
    assert l2_sensitivity(z, along, w).numpy() == pytest.approx(sup.numpy(), rel=1e-10)


def test_condition_8_implies_fc_at_least_as_sensitive_as_the_l2_supremum():
    g = _gen(2)
    n, d = 20000, 6
    z_c = torch.randn(n, d, generator=g, dtype=torch.float64)
    z_d = torch.randn(n, d, generator=g, dtype=torch.float64)
    z_d = z_d / z_d.norm(dim=1, keepdim=True) * z_c.norm(dim=1, keepdim=True)  # equal norms
    w_c = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_d = torch.randn(n, d, generator=g, dtype=torch.float64) * 3
    eps = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.1
    holds = condition8(angle_cos(z_c, w_c), angle_cos(z_d, w_d), angle_cos(eps, w_c))
    assert 100 < int(holds.sum()) < n  # the check is not vacuous
    s_c = fc_sensitivity(z_c, eps, w_c)
    sup_d = l2_sensitivity_sup(z_d, eps.norm(dim=1), w_d)
    assert (s_c[holds] >= sup_d[holds] * (1 - 1e-12)).all()


@pytest.mark.parametrize("d", [2, 16, 128])
def test_isotropic_cdf_matches_monte_carlo(d):
    samples = np.sort(monte_carlo_ratio(40000, d, _gen(d)))
    model = isotropic_cdf(samples, d)
    n = len(samples)
    ks = max(
        np.max(np.arange(1, n + 1) / n - model), np.max(model - np.arange(n) / n)
    )  # Kolmogorov-Smirnov distance of the empirical CDF to eq. 29
    assert ks < 0.01
    assert isotropic_cdf(np.array([0.0, 1e9]), d).tolist() == pytest.approx([0.0, 1.0], abs=1e-9)
    assert np.all(np.diff(isotropic_cdf(np.linspace(0, 5, 50), d)) >= -1e-12)


def test_isotropic_cdf_rejects_bad_input():
    with pytest.raises(ValueError, match="d must be"):
        isotropic_cdf(0.5, 1)
    with pytest.raises(ValueError, match=">= 0"):
        isotropic_cdf(-0.1, 4)


@pytest.mark.parametrize("d", [2, 16])
def test_isotropic_cdf_matches_scipy_double_integral_of_eq_28(d):
    """The closed-form inner integral against scipy's dblquad of eq. 28 as written."""
    import math

    from scipy import integrate
    from scipy.special import gammaln

    c = math.exp(gammaln(d / 2) - gammaln((d - 1) / 2) - 0.5 * math.log(math.pi))
    for x in (0.3, 1.0, 2.5):
        value, _ = integrate.dblquad(
            lambda eta, t: 4 * c * c * math.sin(t) ** (d - 2) * (1 - eta * eta) ** ((d - 3) / 2),
            0,
            math.pi / 2,
            lambda t: 0,
            lambda t, x=x: min(x * math.sin(t), 1 - 1e-15),
        )
        assert isotropic_cdf(x, d)[0] == pytest.approx(value, abs=1e-7)


def _sample_mixture(n, alpha, pos, neg, rng):
    from scipy.stats import truncnorm

    def draw(m, mu, sigma):
        return truncnorm.rvs(
            -mu / sigma, (np.pi - mu) / sigma, loc=mu, scale=sigma, size=m, random_state=rng
        )

    k = round(alpha * n)
    return np.concatenate([draw(k, *pos), draw(n - k, *neg)])


def test_truncated_normal_fit_recovers_its_parameters():
    from featrob_hpm.sensitivity import fit_truncated_normal

    rng = np.random.default_rng(3)
    for mu, sigma in ((1.17, 0.097), (1.57, 0.053), (0.2, 0.3)):  # 67 deg, 90 deg, near 0
        x = _sample_mixture(20000, 1.0, (mu, sigma), (1.0, 1.0), rng)
        fit = fit_truncated_normal(x)
        assert fit == pytest.approx((mu, sigma), rel=0.03, abs=0.01)


def test_empirical_model_matches_monte_carlo_of_eq_12_angles():
    """Eq. 13 with the paper's ResNet-50 statistics (FC: 66.81 +- 5.56 deg positives,
    90.01 +- 3.02 deg negatives; L2 head: 74.3 +- 7.9 and 101.3 +- 4.3) against sampling."""
    from featrob_hpm.sensitivity import empirical_cdf_model

    deg = np.pi / 180
    fc = (0.1, (66.81 * deg, 5.56 * deg), (90.01 * deg, 3.02 * deg))
    l2 = (0.1, (74.3 * deg, 7.9 * deg), (101.3 * deg, 4.3 * deg))
    rng = np.random.default_rng(4)
    theta_c = _sample_mixture(40000, *fc, rng)
    theta_d = rng.permutation(_sample_mixture(40000, *l2, rng))
    ratio = np.sort(np.abs(np.cos(theta_c)) / np.abs(np.sin(theta_d)))
    n = len(ratio)
    idx = np.unique(np.linspace(0, n - 1, 2001).astype(int))  # KS on 2,000 sample quantiles
    model = empirical_cdf_model(ratio[idx], fc, l2)
    ks = max(np.max((idx + 1) / n - model), np.max(model - idx / n))
    assert ks < 0.01


def test_class_angles_split_positive_and_negative():
    from featrob_hpm.sensitivity import class_angles

    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    refs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos, neg = class_angles(feats, refs, torch.tensor([0, 1, 0]))
    assert pos.tolist() == pytest.approx([0.0, 0.0, np.pi / 4])
    assert neg.tolist() == pytest.approx([np.pi / 2, np.pi / 2, np.pi / 4])
