"""Exact projections onto a hyperplane intersected with the [0, 1] box, for FAB.

FAB (Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack", ICML 2020, Sec. 3.1) moves a point ``t`` onto the linearised decision boundary
``{z : w.z = b}`` by the smallest step that keeps the image valid::

    min_d ||d||_p   s.t.   w.(t + d) = b,   0 <= t + d <= 1.

Both norms reduce to one scalar equation. Write ``c = b - w.t`` for the value ``w.d`` must
reach. Flipping the signs of ``w`` and ``c`` together leaves the feasible set unchanged,
so take ``c >= 0``. Coordinate ``i`` can then help only by moving in the direction
``sign(w_i)``, at most ``m_i`` (``m_i = 1 - t_i`` if ``w_i > 0``, ``t_i`` if ``w_i < 0``);
moving the other way only costs norm.

* **L2.** The KKT conditions of ``min 1/2 ||d||^2`` give ``d_i = clip(lam w_i, -t_i,
  1 - t_i)`` for one multiplier ``lam >= 0`` (the ``-lam w`` of the paper with the sign of
  ``w`` flipped). Then ``w_i d_i = w_i^2 min(lam, m_i / |w_i|)``.
* **Linf.** For a radius ``tau`` the largest ``w.d`` with ``|d_i| <= tau`` inside the box is
  attained at ``d_i = sign(w_i) min(tau, m_i)``, so the optimum is the smallest ``tau`` with
  ``sum_i |w_i| min(tau, m_i) = c``. At that ``tau`` every coordinate with ``w_i != 0`` must
  be at its maximum (slack anywhere would leave ``w.d < c``), so ``d`` is unique there;
  coordinates with ``w_i = 0`` are set to 0 (the smallest choice in every norm).

Both are ``h(lam) = sum_i a_i min(lam, r_i) = c`` with weights ``a_i >= 0`` and breakpoints
``r_i >= 0``: ``h`` is continuous, piecewise linear and nondecreasing, ``h(0) = 0``.
:func:`water_level` solves it exactly: sort the breakpoints, evaluate ``h`` at each (a
prefix sum of the saturated terms plus ``r_k`` times the weight still unsaturated), count
the breakpoints below ``c`` and solve the linear piece in between. It is vectorised over
all rows (one sort, two cumulative sums, one gather), ``O(n log n)`` per row, no loop.

When even the whole box cannot reach the hyperplane (``h(inf) = sum a_i r_i < c``) the
projection returns the box corner in the direction of the hyperplane,
``d_i = sign(w_i) m_i``, as AutoAttack's reference projections do: the closest the box
gets to the boundary.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["project_l2", "project_linf", "water_level"]


def water_level(a: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """Smallest ``lam >= 0`` with ``sum_i a_i min(lam, r_i) = c``, per row.

    Args:
        a: ``[N, n]`` nonnegative weights (zero weights are ignored).
        r: ``[N, n]`` nonnegative breakpoints.
        c: ``[N]`` required values, ``>= 0``.

    Returns:
        ``[N]`` levels; ``inf`` where ``c`` exceeds ``sum_i a_i r_i`` (unreachable), 0 where
        ``c <= 0``.
    """
    r = torch.where(a > 0, r, torch.zeros_like(r))  # weightless terms saturate at once
    r_sorted, order = r.sort(dim=1)
    a_sorted = a.gather(1, order)
    sat = a_sorted * r_sorted
    # Exclusive prefix sum of saturated contributions; suffix sum of unsaturated weight.
    sat_before = sat.cumsum(1) - sat
    weight_from = a_sorted.flip(1).cumsum(1).flip(1)
    h_at = sat_before + r_sorted * weight_from  # h(r_(k)), nondecreasing in k
    k = (h_at < c[:, None]).sum(1, keepdim=True)  # first breakpoint with h >= c
    n = r.shape[1]
    k_in = k.clamp(max=n - 1)
    base = sat_before.gather(1, k_in).squeeze(1)
    slope = weight_from.gather(1, k_in).squeeze(1)
    lam = (c - base) / slope.clamp_min(torch.finfo(slope.dtype).tiny)
    lam = torch.where(slope > 0, lam, torch.zeros_like(lam)).clamp_min(0)
    lam = torch.where(k.squeeze(1) >= n, torch.full_like(lam, float("inf")), lam)
    return torch.where(c > 0, lam, torch.zeros_like(lam))


def _oriented(t: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(sign(w'), |w|, m, c')`` with ``w', c'`` sign-flipped so that ``c' >= 0``."""
    c = b - (w * t).sum(1)
    flip = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w = w * flip[:, None]
    room = torch.where(w > 0, 1 - t, t).clamp_min(0)  # m_i: how far coordinate i may move
    return w.sign(), w.abs(), room, c * flip


def project_l2(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Smallest-L2 step ``d`` with ``w.(t + d) = b`` and ``t + d`` in [0, 1], per row.

    Args:
        t: ``[N, n]`` points in [0, 1].
        w: ``[N, n]`` hyperplane normals.
        b: ``[N]`` offsets.

    Returns:
        ``[N, n]`` steps ``d = clip(lam w, -t, 1 - t)`` (the box corner towards the
        hyperplane where it cannot be reached).
    """
    sign, mag, room, c = _oriented(t, w, b)
    breaks = room / mag.clamp_min(torch.finfo(mag.dtype).tiny)
    lam = water_level(mag * mag, breaks, c)
    step = torch.where(torch.isinf(lam)[:, None], room, torch.minimum(lam[:, None] * mag, room))
    return torch.where(mag > 0, sign * step, torch.zeros_like(step))


def project_linf(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Smallest-Linf step ``d`` with ``w.(t + d) = b`` and ``t + d`` in [0, 1], per row.

    Args:
        t: ``[N, n]`` points in [0, 1].
        w: ``[N, n]`` hyperplane normals.
        b: ``[N]`` offsets.

    Returns:
        ``[N, n]`` steps ``d_i = sign(w_i) min(tau, m_i)`` with the smallest feasible
        ``tau`` (0 where ``w_i = 0``; the box corner towards the hyperplane where it cannot
        be reached).
    """
    sign, mag, room, c = _oriented(t, w, b)
    tau = water_level(mag, room, c)
    return torch.where(mag > 0, sign * torch.minimum(tau[:, None], room), torch.zeros_like(t))
