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
``r_i >= 0``: ``h`` is continuous, piecewise linear, nondecreasing and concave, ``h(0) = 0``.
:func:`water_level` solves it exactly by Newton's method from ``lam = 0``: the next iterate
is ``lam + (c - h(lam)) / h'(lam+)`` with ``h'(lam+) = sum_{r_i > lam} a_i``. For a concave
``h`` the tangent lies above the graph, so from below the root every iterate stays below it
and the iterates increase; they visit the linear pieces in order and land exactly on the root
as soon as they start in its piece (a finite number of steps, at most one per breakpoint). An
iterate is exact when no breakpoint lies strictly between it and the previous one (the whole
step stayed on one piece). On FAB's MNIST projections that takes at most 4 steps of five
elementwise passes over ``[N, n]`` (in place, no comparisons), about a third of the time of
a full sort on a CPU (``python -m benchmarks.fab_projection``, which times both on the
projections of a real FAB-T run). On accelerators the projections use the sort
(:func:`_level`, :func:`linf_step`): Newton's exactness checks would be host-device
synchronisations. FAB projects the iterate and ``x0`` onto the same hyperplane each step:
:func:`linf_step` takes ``sign(w)`` and ``|w|`` computed once for both, and projecting the
two ``[B, n]`` halves separately keeps each pass's operands in a CPU's L2 cache (one
stacked ``[2B, n]`` projection took about twice as long on MNIST). Rows still unresolved
after ``max_iters`` steps (floating-point ties; not seen in practice) fall back to
:func:`water_level_sorted`: sort the breakpoints, evaluate ``h`` at each (a prefix sum of
the saturated terms plus ``r_k`` times the weight still unsaturated), count the breakpoints
below ``c`` and solve the linear piece in between, ``O(n log n)`` per row.
The two agree to float rounding (tests/test_fab.py).

When even the whole box cannot reach the hyperplane (``h(inf) = sum a_i r_i < c``) the
projection returns the box corner in the direction of the hyperplane,
``d_i = sign(w_i) m_i``, as AutoAttack's reference projections do: the closest the box
gets to the boundary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["project_l2", "project_linf", "water_level", "water_level_sorted"]


def water_level(
    a: Tensor, r: Tensor, c: Tensor, *, min_iters: int = 3, max_iters: int = 32
) -> Tensor:
    """Smallest ``lam >= 0`` with ``sum_i a_i min(lam, r_i) = c``, per row (Newton's method).

    Args:
        a: ``[N, n]`` nonnegative weights (zero weights are ignored).
        r: ``[N, n]`` nonnegative breakpoints.
        c: ``[N]`` required values, ``>= 0``.
        min_iters: Newton steps taken before the first exactness check (each check is one
            host-device synchronisation on an accelerator).
        max_iters: Newton steps before the rows not yet exact fall back to
            :func:`water_level_sorted` (0: sort every row).

    Returns:
        ``[N]`` levels; ``inf`` where ``c`` exceeds ``sum_i a_i r_i`` (unreachable), 0 where
        ``c <= 0``.
    """
    lam = _newton_level(a, r * a.sign(), c.clamp_min(0), min_iters, max_iters)
    return torch.where(c > 0, lam, torch.zeros_like(lam))


def _newton_level(a: Tensor, r: Tensor, c: Tensor, min_iters: int, max_iters: int) -> Tensor:
    """:func:`water_level` for ``c >= 0`` and breakpoints already 0 where ``a`` is 0.

    Float arithmetic throughout, in place where possible: on a CPU a comparison or a
    ``where`` over ``[N, n]`` costs 2-15x a multiplication, and this loop is FAB's hot path.
    Unreachable rows need no ``sum_i a_i r_i``: Newton stops on them with nothing free
    (slope 0) and ``h < c``. (Dropping the rows already exact from the loop did not pay:
    on FAB's MNIST projections the gathers cost what the last updates save.)
    """
    if max_iters <= 0:
        return water_level_sorted(a, r, c)
    # Two [N, n] work buffers for the whole loop: a fresh tensor per pass costs more than
    # the pass on a CPU (glibc returns large freed blocks to the system, and every new one
    # is page-faulted in again).
    level, prod = torch.empty_like(r), torch.empty_like(r)
    # At lam = 0: h = 0 and every coordinate with room is free.
    lam, h = torch.zeros_like(c), torch.zeros_like(c)
    free = torch.sign(r, out=level)
    slope, count = torch.mul(a, free, out=prod).sum(1), free.sum(1)
    exact = torch.zeros_like(c, dtype=torch.bool)
    for step in range(1, max_iters + 1):  # step: Newton updates made
        # With nothing free the row is at the box's limit: (c - h) / 0 is NaN where h = c
        # (stay) and inf where h < c (unreachable: inf, kept below).
        step_size = torch.div(c - h, slope).nan_to_num_(nan=0.0, posinf=math.inf, neginf=0.0)
        lam = lam + step_size
        torch.clamp(r, max=lam[:, None], out=level)  # min(lam, r_i)
        h = torch.mul(a, level, out=prod).sum(1)
        free = torch.sub(r, level, out=level).sign_()  # 1 where r_i > lam (still growing)
        slope, size = torch.mul(a, free, out=prod).sum(1), free.sum(1)
        if step >= min_iters or step == max_iters:
            # lam came from the piece of the previous iterate; if no breakpoint was passed
            # on the way (the free set is unchanged) lam lies on that piece: it is exact.
            exact = size == count
            if step == max_iters or bool(exact.all()):
                break
        count = size
    # Nothing free and h(lam) < c: the box cannot reach the hyperplane.
    lam = torch.where((slope > 0) | (h >= c), lam, torch.full_like(lam, float("inf")))
    if not bool(exact.all()):
        rest = torch.nonzero(~exact).squeeze(1)
        lam[rest] = water_level_sorted(a[rest], r[rest], c[rest])
    return lam


def water_level_sorted(a: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """:func:`water_level` by sorting the breakpoints: one sort, two cumulative sums and a
    gather per row, no loop; the fallback for rows Newton's method leaves unresolved."""
    r = torch.where(a > 0, r, torch.zeros_like(r))
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


def _level(a: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """The water level the projections use: Newton's method on a CPU, where its exactness
    checks cost nothing and the sort is the bottleneck; the sort elsewhere, where each
    check would be a host-device synchronisation per FAB step and a sort of ``[2B, d]`` is
    a single kernel (the two agree to float rounding)."""
    if a.device.type == "cpu":
        return water_level(a, r, c)
    return water_level_sorted(a, r, c)


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
    lam = _level(mag * mag, breaks, c)
    # An unreachable row (lam = inf) takes the whole room; sign(w_i) = 0 zeroes w_i = 0.
    step = torch.where(torch.isinf(lam)[:, None], room, torch.minimum(lam[:, None] * mag, room))
    return sign * step


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
    c = b - torch.linalg.vecdot(w, t)
    return linf_step(t, w.sign(), w.abs(), c)[0]


def linf_step(t: Tensor, w_sign: Tensor, w_abs: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`project_linf` for ``c = b - w.t``, given ``sign(w)`` and ``|w|``: FAB projects
    two points onto each hyperplane and computes those once. Also returns ``||d||_inf``.

    Args:
        t: ``[N, n]`` points in [0, 1].
        w_sign: ``[N, n]`` ``sign(w)``.
        w_abs: ``[N, n]`` ``|w|``.
        c: ``[N]`` the value ``w.d`` must reach.

    Returns:
        ``(d, size)``: the ``[N, n]`` steps and their ``[N]`` Linf norms. ``size`` is the
        level ``tau`` itself where the hyperplane is reachable (``|d_i| = min(tau, m_i)``
        and some weighted ``m_i >= tau``, else ``tau`` would not be the smallest level);
        where it is not, the largest room.
    """
    flip = torch.where(c < 0, -1.0, 1.0).to(w_abs.dtype)
    sign = w_sign * flip[:, None]  # the direction each coordinate moves in
    # m_i = 1 - t_i where it moves up, t_i where it moves down, 0 where w_i = 0.
    room = sign.clamp_min(0).addcmul_(sign, t, value=-1).clamp_min_(0)
    if t.device.type == "cpu":
        tau = _newton_level(w_abs, room, c.abs(), 1, 32)
    else:
        tau = water_level_sorted(w_abs, room, c.abs())
    step = room.clamp_(max=tau[:, None])  # min(tau, m_i): all of m_i where tau = inf
    size = tau
    far = torch.isinf(tau)
    if t.device.type != "cpu" or bool(far.any()):
        size = torch.where(far, step.amax(1), tau)
    return step.mul_(sign), size
