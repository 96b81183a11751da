"""Feature sensitivity of inner-product (FC) and L2-distance heads (Wang, paper 002, Secs.
3.3-3.4 and supplement Sec. 7), batched over samples.

For a feature ``z``, a feature change ``eps`` and a class reference vector ``w`` (an FC
weight column, or an L2 prototype):

* FC relative sensitivity (eq. 3): ``S_c = |eps . w| / |z . w|
  = ||eps|| |cos gamma| / (||z|| |cos theta_c|)``;
* L2 relative sensitivity (eq. 4): ``S_d = | ||z + eps - w|| - ||z - w|| | / ||z - w||``;
  its supremum over directions of ``eps`` (eq. 5, by the triangle inequality, attained
  when ``eps`` is collinear with ``z - w``): ``||eps|| / ||z - w||``;
* the sufficient condition (8): ``|cos theta_c| / |sin theta_d| <= |cos gamma|`` implies
  ``S_c >= sup S_d`` when both heads see features and changes of equal norms (because
  ``||z - w_d|| >= ||z|| |sin theta_d|``).

Isotropic model (eqs. 9-10, 27-29): with ``theta`` the angle between a uniformly random
direction in R^d and a fixed vector, ``H = cos theta_c`` and ``T = sin theta_d`` (independent),
``F_X(x) = P(|H| <= x T)``. The paper integrates eq. 28 twice numerically (eq. 29). Here the
inner integral has a closed form (derived for this module): ``H^2 ~ Beta(1/2, (d-1)/2)``, so
``P(|H| <= a) = I_{a^2}(1/2, (d-1)/2)`` (regularised incomplete beta); with ``T = sin t``,
``t`` distributed as ``C sin^{d-2} t`` on [0, pi] (folded onto [0, pi/2]), the CDF is a
single smooth integral over ``t``, split where ``x sin t`` reaches 1 and computed by
Gauss-Legendre quadrature, vectorised over ``x``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import betainc, gammaln
from torch import Tensor

#: Gauss-Legendre nodes per integration piece (the integrands are smooth on each piece).
QUADRATURE_NODES = 256


def _flat(t: Tensor) -> Tensor:
    return t.reshape(len(t), -1).to(torch.float64)


def fc_sensitivity(z: Tensor, eps: Tensor, w: Tensor) -> Tensor:
    """Eq. 3: ``|eps . w| / |z . w|`` per row (inf where ``z . w = 0``)."""
    z, eps, w = _flat(z), _flat(eps), _flat(w)
    return (eps * w).sum(1).abs() / (z * w).sum(1).abs()


def l2_sensitivity(z: Tensor, eps: Tensor, w: Tensor) -> Tensor:
    """Eq. 4: ``| ||z + eps - w|| - ||z - w|| | / ||z - w||`` per row."""
    z, eps, w = _flat(z), _flat(eps), _flat(w)
    base = (z - w).norm(dim=1)
    return ((z + eps - w).norm(dim=1) - base).abs() / base


def l2_sensitivity_sup(z: Tensor, eps_norm: Tensor, w: Tensor) -> Tensor:
    """Eq. 5: the supremum of eq. 4 over directions of a change of norm ``eps_norm``:
    ``||eps|| / ||z - w||``."""
    z, w = _flat(z), _flat(w)
    return eps_norm.to(torch.float64) / (z - w).norm(dim=1)


def angle_cos(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine of the angle between ``a`` and ``b``."""
    a, b = _flat(a), _flat(b)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def condition8(cos_theta_c: Tensor, cos_theta_d: Tensor, cos_gamma: Tensor) -> Tensor:
    """Eq. 8's sufficient condition ``|cos theta_c| / |sin theta_d| <= |cos gamma|``."""
    sin_d = (1 - cos_theta_d.to(torch.float64) ** 2).clamp(min=0).sqrt()
    return cos_theta_c.to(torch.float64).abs() <= cos_gamma.to(torch.float64).abs() * sin_d


def _angle_norm(d: int) -> float:
    """C of eq. 23: the density of the angle is ``C sin^{d-2}(theta)`` on [0, pi]."""
    return math.exp(gammaln(d / 2) - gammaln((d - 1) / 2) - 0.5 * math.log(math.pi))


def _gauss_legendre(a: np.ndarray, b: np.ndarray, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``[len(a), nodes]`` and weights for integrals over ``[a_i, b_i]``."""
    x, wts = np.polynomial.legendre.leggauss(nodes)
    half = (b - a)[:, None] / 2
    return a[:, None] + half * (x[None] + 1), half * wts[None]


def isotropic_cdf(x: np.ndarray | float, d: int, nodes: int = QUADRATURE_NODES) -> np.ndarray:
    """``F_X(x) = P(|cos theta_c| / |sin theta_d| <= x)`` under the isotropic model (eq. 29).

    Args:
        x: thresholds (>= 0); e.g. ``|cos gamma|`` gives the probability that condition
            (8) holds.
        d: feature dimension (>= 2).
        nodes: quadrature nodes per piece.
    """
    if d < 2:
        raise ValueError(f"d must be >= 2, got {d}")
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if (x < 0).any():
        raise ValueError("x must be >= 0")
    c2 = 2 * _angle_norm(d)  # density of t on [0, pi/2] after folding
    # t* where x sin t = 1 (pi/2 when x <= 1): below it the inner probability is < 1
    t_star = np.where(x > 1, np.arcsin(np.minimum(1 / np.maximum(x, 1e-300), 1.0)), np.pi / 2)
    t, wts = _gauss_legendre(np.zeros_like(x), t_star, nodes)
    inner = betainc(0.5, (d - 1) / 2, np.minimum(x[:, None] * np.sin(t), 1.0) ** 2)
    first = (wts * c2 * np.sin(t) ** (d - 2) * inner).sum(1)
    t2, w2 = _gauss_legendre(t_star, np.full_like(x, np.pi / 2), nodes)
    second = (w2 * c2 * np.sin(t2) ** (d - 2)).sum(1)
    return np.clip(first + second, 0.0, 1.0)


def random_directions(n: int, d: int, gen: torch.Generator) -> Tensor:
    """``[n, d]`` directions uniform on the unit sphere (normalised Gaussians)."""
    v = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def monte_carlo_ratio(n: int, d: int, gen: torch.Generator) -> np.ndarray:
    """Samples of ``|cos theta_c| / |sin theta_d|`` with independent uniform directions
    against fixed reference vectors (the isotropic model, for checking :func:`isotropic_cdf`)."""
    e1 = torch.zeros(d, dtype=torch.float64)
    e1[0] = 1.0
    cos_c = random_directions(n, d, gen) @ e1
    cos_d = random_directions(n, d, gen) @ e1
    sin_d = (1 - cos_d**2).clamp(min=0).sqrt()
    return (cos_c.abs() / sin_d).numpy()


# ---------------------------------------------------------------------- empirical model
def class_angles(features: Tensor, refs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Angles (radians) between features ``[N, D]`` and class reference vectors ``[K, D]``
    (FC weight columns as rows, or L2 prototypes): ``(positive [N], negative [N*(K-1)])``,
    positive = own class, negative = every other class (Sec. 3.4)."""
    f = features.reshape(len(features), -1).to(torch.float64)
    r = refs.to(torch.float64)
    cos = (f @ r.T) / (f.norm(dim=1, keepdim=True) * r.norm(dim=1)[None]).clamp(min=1e-300)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    own = torch.nn.functional.one_hot(labels.long(), r.shape[0]).bool()
    return theta[own], theta[~own]


def _truncnorm_logpdf(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    from scipy.stats import norm

    mass = norm.cdf((np.pi - mu) / sigma) - norm.cdf(-mu / sigma)
    return norm.logpdf((x - mu) / sigma) - math.log(sigma) - math.log(max(mass, 1e-300))


def fit_truncated_normal(angles: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood ``(mu, sigma)`` of a normal truncated to [0, pi] (eq. 12's ``t``)."""
    from scipy.optimize import minimize

    x = np.asarray(angles, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        raise ValueError("need at least two finite angles to fit a truncated normal")
    start = np.array([x.mean(), math.log(max(x.std(), 1e-3))])
    res = minimize(
        lambda p: -_truncnorm_logpdf(x, p[0], math.exp(p[1])).sum(),
        start,
        method="Nelder-Mead",
        options={"xatol": 1e-8, "fatol": 1e-8, "maxiter": 4000},
    )
    return float(res.x[0]), float(math.exp(res.x[1]))


def _truncnorm_cdf(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    from scipy.stats import norm

    lo, hi = norm.cdf(-mu / sigma), norm.cdf((np.pi - mu) / sigma)
    return np.clip((norm.cdf((np.clip(x, 0, np.pi) - mu) / sigma) - lo) / (hi - lo), 0, 1)


def _truncnorm_pdf(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    inside = (x >= 0) & (x <= np.pi)
    return np.where(inside, np.exp(_truncnorm_logpdf(x, mu, sigma)), 0.0)


def mixture_cdf(x: np.ndarray, alpha: float, pos: tuple[float, float], neg: tuple[float, float]):
    """CDF of eq. 12's angle density ``alpha t(mu+, sigma+) + (1 - alpha) t(mu-, sigma-)``."""
    return alpha * _truncnorm_cdf(x, *pos) + (1 - alpha) * _truncnorm_cdf(x, *neg)


def mixture_pdf(x: np.ndarray, alpha: float, pos: tuple[float, float], neg: tuple[float, float]):
    """Eq. 12's angle density."""
    return alpha * _truncnorm_pdf(x, *pos) + (1 - alpha) * _truncnorm_pdf(x, *neg)


def empirical_cdf_model(
    x: np.ndarray | float,
    fc: tuple[float, tuple[float, float], tuple[float, float]],
    l2: tuple[float, tuple[float, float], tuple[float, float]],
    nodes: int = 4 * QUADRATURE_NODES,
) -> np.ndarray:
    """Eq. 13: ``P(|cos theta_c| / |sin theta_d| <= x)`` with the angle densities of eq. 12.

    ``fc`` and ``l2`` are ``(alpha, (mu+, sigma+), (mu-, sigma-))`` of the two heads. The
    inner integral of eq. 13 is, after ``y = cos theta``, the probability that ``theta_c``
    lies in ``[arccos a, pi - arccos a]`` with ``a = min(x sin t, 1)``: a difference of the
    mixture's CDF (closed form, derived here); the outer integral over ``t = theta_d``
    folded onto [0, pi/2] is Gauss-Legendre quadrature (1,024 nodes by default: the fitted
    densities can be a few degrees wide), vectorised over ``x``.
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    t, wts = _gauss_legendre(np.zeros_like(x), np.full_like(x, np.pi / 2), nodes)
    outer = mixture_pdf(t, *l2) + mixture_pdf(np.pi - t, *l2)
    a = np.arccos(np.minimum(x[:, None] * np.sin(t), 1.0))
    inner = mixture_cdf(np.pi - a, *fc) - mixture_cdf(a, *fc)
    return np.clip((wts * outer * inner).sum(1), 0.0, 1.0)
