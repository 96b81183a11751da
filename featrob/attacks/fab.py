"""FAB: the fast adaptive boundary attack (Croce & Hein, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", ICML 2020), for the Linf and L2 threat
models, untargeted and in AutoAttack's targeted form FAB-T (Croce & Hein, "Reliable
evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks",
ICML 2020).

FAB is a minimum-norm attack. At the iterate ``x`` it linearises every decision boundary
``f_j - f_y = 0`` and picks the closest linearised boundary in the attacked norm (the
distance to ``{z : df + dg.(z - x) = 0}`` is ``|df| / ||dg||_*`` with ``||.||_*`` the dual
norm: L1 for Linf, L2 for L2). It projects both the iterate and the original point ``x0``
onto that hyperplane intersected with the [0, 1] box (:mod:`featrob.attacks.fab_projections`)
and moves to a convex combination of the two projections, biased towards the iterate::

    x <- clip((x + eta d1)(1 - alpha) + (x0 + eta d2) alpha),
    alpha = min(||d1|| / (||d1|| + ||d2||), alpha_max),

``eta > 1`` overshooting the boundary slightly. Whenever the new iterate is adversarial it is
recorded if it is the closest one to ``x0`` so far, and the iterate is pulled back towards
``x0`` (``x <- x0 + beta (x - x0)``), so the walk follows the boundary towards ``x0``.

Why FAB is featrob's minimum-norm attack (rather than DeepFool or FMN): AutoAttack's
standard version needs FAB-T anyway, so one implementation serves both the protocol and the
metrics that need measured minimal perturbations; it handles the [0, 1] box exactly in its
projections (DeepFool ignores it); it supports a per-sample target class, which the
compression plugin needs (delta_min towards the nearest other-class sample's class); and the
layer-by-layer paper compares its collision distances against FAB specifically.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from featrob import seeding
from featrob.attacks.base import (
    Forward,
    MinimumNormAttack,
    MinNormResult,
    exit_interval,
    expand_batch,
    flat_norm,
    retire,
    take_rows,
)
from featrob.attacks.fab_projections import linf_step, project_l2
from featrob.attacks.fab_steps import (
    JACOBIANS,
    _is_adversarial,
    _jacobian_loop,
    _jacobian_vmap,
)
from featrob.attacks.losses import target_group, top_targets
from featrob.errors import ConfigError
from featrob.options import bool_param, float_param, int_param
from featrob.plan import Passes

_TINY = 1e-12


class FAB(MinimumNormAttack):
    """Untargeted FAB (Croce & Hein, ICML 2020), Linf and L2, with AutoAttack's defaults.

    :meth:`minimize` returns, per sample, the closest adversarial iterate found over all
    steps and restarts (``norm`` inf and ``x_adv == x`` where none was found; ``norm`` 0 for
    inputs that are already misclassified). With ``target`` it attacks only the boundary
    ``f_target - f_y`` (one gradient per step) and counts an iterate as adversarial only
    when it is classified as ``target``; with ``target`` and ``pairwise=True`` an iterate
    counts once ``f_target > f_y``, whatever the other classes (the minimal perturbation
    across one pairwise decision boundary, which metrics comparing two classes need: the
    prediction-based test fails whenever the walk ends in a third class's region).

    Parameters (``defaults``):
        steps (100): FAB iterations per restart.
        restarts (1): restart 0 starts at ``x``; restart ``r > 0`` starts at a random point
            at radius ``min(best norm so far, eps) / 2`` (Linf: a uniform draw in the cube
            scaled to that Linf norm; L2: a Gaussian direction), drawn from the per-sample
            seeds with ``stream = r``, so it never depends on the batch.
        alpha_max (0.1): the largest weight of the projection of ``x0`` in a step.
        eta (1.05): overshoot of the projections past the linearised boundary.
        beta (0.9): backward step towards ``x0`` after an adversarial iterate.
        jacobian ("loop"): how the untargeted attack gets the K logit gradients:
            ``"loop"``: one forward and K backward passes through the retained graph;
            ``"vmap"``: ``torch.func.vjp`` + ``vmap`` over the K one-hot cotangents (one
            batched backward; a forward ``torch.func`` cannot transform falls back to the
            loop with a warning). "loop" is the default because it was faster on the
            reference digits CNN with its 450-image test batch on 2 CPU cores: 100 FAB steps
            took 5.8-6.2 s against 7.2-8.1 s (one Jacobian 50 ms against 63 ms; with one
            thread 8.5 s against 11.6 s). vmap wins on small batches (32 images: 5 ms
            against 9 ms; break-even near 128), so try it for small batches or a GPU.
        early_exit (True): in :meth:`perturb` only, stop computing a sample once an
            adversarial iterate within ``eps`` is found, and return that first one (the
            flags are those of a full run; the points are not the smallest found by a full
            run). Also restarts and targets then run only on samples not yet broken within
            ``eps``, as in AutoAttack. :meth:`minimize` always runs the whole budget.

    A step costs one Jacobian (untargeted) or one gradient (targeted) plus one forward to
    check the new iterate. Gradients are taken w.r.t. the input only; parameter ``.grad``
    is never touched. ``eps`` only decides success in :meth:`perturb` and sizes restarts
    (with ``eps = 0`` every restart starts at ``x`` and repeats restart 0).
    """

    name: ClassVar[str] = "fab"
    description: ClassVar[str] = "Croce & Hein fast adaptive boundary minimum-norm attack"
    defaults: ClassVar[dict[str, Any]] = {
        "steps": 100,
        "restarts": 1,
        "alpha_max": 0.1,
        "eta": 1.05,
        "beta": 0.9,
        "jacobian": "loop",
        "early_exit": True,
    }

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0, **params: Any) -> None:
        super().__init__(eps, norm, seed, **params)
        p = self.params
        p["steps"] = int_param(self.name, "steps", p["steps"], 0)
        p["restarts"] = int_param(self.name, "restarts", p["restarts"], 1)
        p["early_exit"] = bool_param(self.name, "early_exit", p["early_exit"])
        for key in ("alpha_max", "eta", "beta"):
            p[key] = float_param(self.name, key, p[key], positive=key != "alpha_max")
        if p["alpha_max"] > 1 or p["beta"] > 1:
            raise ConfigError(f"{self.name}: alpha_max and beta must be <= 1")
        if p["jacobian"] not in JACOBIANS:
            raise ConfigError(
                f"{self.name}: jacobian must be one of {', '.join(JACOBIANS)}, "
                f"got {p['jacobian']!r}"
            )

    # ------------------------------------------------------------------ public
    def passes(self, n_classes: int) -> Passes:
        """Per step and restart: the K logit gradients (one forward, K backward passes)
        and the check of the new iterate (one forward)."""
        runs = self.params["steps"] * self.params["restarts"]
        return Passes(forward=2 * runs + 1, backward=n_classes * runs)

    def minimize(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None = None,
        sample_seeds: Tensor | None = None,
        pairwise: bool = False,
    ) -> MinNormResult:
        """Smallest adversarial perturbation found by FAB; see the class docstring.

        Args:
            forward: the model returning logits ``[B, K]``.
            x: clean inputs in [0, 1] (clamped to it).
            y: true labels ``[B]``.
            target: per-sample target classes ``[B]``; None for untargeted.
            sample_seeds: per-sample seeds for random restarts.
            pairwise: with ``target``, success means ``f_target > f_y`` (see the class
                docstring) instead of "classified as ``target``".
        """
        return self._minimize(forward, x, y, target, sample_seeds, pairwise, stop_at=None)

    def search_within_eps(
        self, forward: Forward, x: Tensor, y: Tensor, *, sample_seeds: Tensor | None = None
    ) -> MinNormResult:
        """With ``early_exit``, each sample's first adversarial iterate within ``eps``;
        else :meth:`minimize`'s smallest perturbation."""
        stop_at = self.eps * (1 + 1e-6) if self.params["early_exit"] else None
        return self._minimize(forward, x, y, None, sample_seeds, False, stop_at=stop_at)

    def _minimize(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        sample_seeds: Tensor | None,
        pairwise: bool,
        stop_at: float | None,
    ) -> MinNormResult:
        """:meth:`minimize`; with ``stop_at``, a sample stops at its first adversarial
        iterate of norm <= ``stop_at``."""
        x0, y, seeds = self._prepare(x, y, sample_seeds)
        if target is not None:
            target = torch.as_tensor(target, device=x0.device).long()
            if target.shape != y.shape:
                raise ConfigError(f"{self.name}: target must have shape {tuple(y.shape)}")
        with torch.no_grad():
            done = _is_adversarial(forward(x0), y, target, pairwise)
        best_x, best_norm = self._start_state(x0, done)
        todo = (~done).nonzero().squeeze(1)
        if len(todo):
            sub_t = None if target is None else target[todo]
            bx, bn = self._restarts(
                forward,
                x0[todo],
                y[todo],
                seeds[todo],
                sub_t,
                sub_t,
                best_x[todo],
                best_norm[todo],
                pairwise=pairwise,
                stop_at=stop_at,
            )
            best_x[todo], best_norm[todo] = bx, bn
        return MinNormResult(best_x, best_norm, torch.isfinite(best_norm))

    # ------------------------------------------------------------------ internals
    def _prepare(
        self, x: Tensor, y: Tensor, sample_seeds: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        seeds = self._seeds(x, sample_seeds).to(x.device)
        return x.detach().clamp(0, 1), torch.as_tensor(y, device=x.device).long(), seeds

    @staticmethod
    def _start_state(x0: Tensor, done: Tensor) -> tuple[Tensor, Tensor]:
        norm = torch.where(done, 0.0, float("inf")).to(x0.dtype)
        return x0.clone(), norm

    def _restarts(
        self,
        forward: Forward,
        x0: Tensor,
        y: Tensor,
        seeds: Tensor,
        target: Tensor | None,
        hit: Tensor | None,
        best_x: Tensor,
        best_norm: Tensor,
        pairwise: bool = False,
        stop_at: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """All restarts on ``x0``; ``target`` picks the hyperplane (None: closest of all),
        ``hit`` the success test (None: misclassified; ``pairwise``: ``f_hit > f_y``).
        Returns the improved best (``stop_at``: see :meth:`_run`)."""
        jac = self._jacobian_fn()
        for r in range(self.params["restarts"]):
            start = x0 if r == 0 else self._random_start(x0, seeds, best_norm, r)
            best_x, best_norm = self._run(
                forward, jac, x0, start, y, target, hit, best_x, best_norm, pairwise, stop_at
            )
        return best_x, best_norm

    def _random_start(self, x0: Tensor, seeds: Tensor, best_norm: Tensor, stream: int) -> Tensor:
        shape = tuple(x0.shape[1:])
        if self.norm == "linf":
            noise = seeding.uniform(seeds, shape, stream) * 2 - 1
        else:
            noise = seeding.normal(seeds, shape, stream)
        noise = noise.to(x0.dtype)
        noise = noise / flat_norm(noise, self.norm).clamp_min(_TINY).view(-1, *[1] * len(shape))
        radius = best_norm.clamp(max=self.eps) / 2
        return (x0 + noise * radius.view(-1, *[1] * len(shape))).clamp(0, 1)

    def _jacobian_fn(self) -> Callable[[Forward, Tensor], tuple[Tensor, Tensor]]:
        """The configured Jacobian, falling back from vmap to the loop when vmap fails."""
        if self.params["jacobian"] == "loop":
            return _jacobian_loop
        failed = False

        def jacobian(forward: Forward, x: Tensor) -> tuple[Tensor, Tensor]:
            nonlocal failed
            if not failed:
                try:
                    return _jacobian_vmap(forward, x)
                except ConfigError:
                    raise
                except Exception as exc:  # functorch cannot transform this forward
                    failed = True
                    warnings.warn(
                        f"{self.name}: torch.func.vmap failed ({type(exc).__name__}: {exc}); "
                        "using one backward pass per class",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            return _jacobian_loop(forward, x)

        return jacobian

    def _hyperplane(
        self,
        forward: Forward,
        jac: Callable[[Forward, Tensor], tuple[Tensor, Tensor]],
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """``(df [B], dg [B, n])``: value and gradient of ``f_j - f_y`` at ``x`` for the
        target ``j``, or for the class whose linearised boundary is closest."""
        rows = torch.arange(len(x), device=x.device)
        if target is not None:

            def diff(out: Tensor, _: Tensor) -> Tensor:
                return out[rows, target] - out[rows, y]

            _, df, dg = self.loss_and_grad(forward, x, y, diff)
            return df, dg.flatten(1)
        logits, grads = jac(forward, x)
        grads = grads.flatten(2)
        df = logits - logits[rows, y][:, None]
        dg = grads - grads[rows, y][:, None]
        dual = dg.abs().sum(2) if self.norm == "linf" else dg.norm(dim=2)
        dist = df.abs() / (dual + _TINY)
        dist = torch.nan_to_num(dist, nan=float("inf"))
        dist[rows, y] = float("inf")
        j = dist.argmin(1)
        return df[rows, j], dg[rows, j]

    def _steps(
        self, xf: Tensor, x0f: Tensor, df: Tensor, dg: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Projections of the iterate and of ``x0`` onto the linearised boundary
        ``{z : df + dg.(z - x) = 0}`` within the box: ``(d1, d2, ||d1||, ||d2||)``, each
        norm clamped to at least 1e-8. Rows with a non-finite value or gradient step 0."""
        # w.d must reach -df from x and dg.(x - x0) - df from x0; a non-finite dg or df
        # makes the latter non-finite (0 * inf and inf - inf are NaN).
        c2 = torch.linalg.vecdot(dg, xf) - torch.linalg.vecdot(dg, x0f) - df
        ok = torch.isfinite(c2)
        if xf.device.type != "cpu" or not bool(ok.all()):  # a sync only where it is free
            dg = torch.where(ok[:, None], dg, torch.zeros_like(dg))
            df, c2 = torch.where(ok, df, 0.0), torch.where(ok, c2, 0.0)
        if self.norm == "linf":
            w_sign, w_abs = dg.sign(), dg.abs()
            d1, size1 = linf_step(xf, w_sign, w_abs, -df)
            d2, size2 = linf_step(x0f, w_sign, w_abs, c2)
        else:
            offset = torch.linalg.vecdot(dg, xf) - df
            d1, d2 = project_l2(xf, dg, offset), project_l2(x0f, dg, offset)
            size1, size2 = flat_norm(d1, "l2"), flat_norm(d2, "l2")
        return d1, d2, size1.clamp_min(1e-8), size2.clamp_min(1e-8)

    def _run(
        self,
        forward: Forward,
        jac: Callable[[Forward, Tensor], tuple[Tensor, Tensor]],
        x0: Tensor,
        start: Tensor,
        y: Tensor,
        target: Tensor | None,
        hit: Tensor | None,
        best_x: Tensor,
        best_norm: Tensor,
        pairwise: bool = False,
        stop_at: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One FAB run from ``start``; returns the best ``(x, norm)`` including earlier ones.

        With ``stop_at`` (early exit) a sample whose best norm is <= ``stop_at`` keeps that
        point and leaves the batch at the next exit check
        (:func:`~featrob.attacks.base.exit_interval`); the others follow the same path.
        """
        p, shape, b = self.params, x0.shape, len(x0)
        alpha_max, eta, beta = p["alpha_max"], p["eta"], p["beta"]
        x0f = x0.flatten(1)
        xf = start.flatten(1)
        best_f = best_x.flatten(1).clone()  # updated in place
        res_f, res_norm = best_f.clone(), best_norm.clone()
        rows = torch.arange(b, device=x0.device)  # positions of the samples still running
        every = exit_interval(x0.device)
        for i in range(p["steps"]):
            if stop_at is not None and i % every == 0:
                done = best_norm <= stop_at
                if bool(done.any()):
                    rows, keep = retire(done, rows, (res_f, res_norm), (best_f, best_norm))
                    if not len(rows):
                        return res_f.view(shape), res_norm
                    xf, x0f, best_f, best_norm, y = (
                        t[keep] for t in (xf, x0f, best_f, best_norm, y)
                    )
                    target = None if target is None else target[keep]
                    hit = None if hit is None else hit[keep]
            n_run = len(rows)
            run_shape = (n_run, *shape[1:])
            df, dg = self._hyperplane(forward, jac, xf.view(run_shape), y, target)
            d1, d2, size1, size2 = self._steps(xf, x0f, df, dg)
            alpha = (size1 / (size1 + size2)).clamp(0, alpha_max)[:, None]
            # ((x + eta d1)(1 - alpha) + (x0 + eta d2) alpha), clipped to the box
            xf = torch.lerp(d1.mul_(eta).add_(xf), d2.mul_(eta).add_(x0f), alpha).clamp_(0, 1)
            with torch.no_grad():
                adv = _is_adversarial(forward(xf.view(run_shape)), y, hit, pairwise)
            gap = xf - x0f
            dist = flat_norm(gap, self.norm)
            better = adv & (dist < best_norm)
            if stop_at is not None:  # the first point within stop_at stays
                better &= best_norm > stop_at
            best_f = take_rows(better, xf, best_f, in_place=True)
            best_norm = torch.where(better, dist, best_norm)
            back = gap.mul_(beta).add_(x0f)  # x0 + beta (x - x0)
            xf = take_rows(adv, back, xf, in_place=True)
        res_f[rows], res_norm[rows] = best_f, best_norm
        return res_f.view(shape), res_norm


class FABTargeted(FAB):
    """AutoAttack's FAB-T: targeted FAB against the top ``n_target_classes`` other classes.

    For each of the ``n_target_classes`` (capped at K - 1) highest-scoring wrong classes of
    the clean logits (:func:`~featrob.attacks.losses.top_targets`), in order, FAB runs with
    only the hyperplane ``f_target - f_y`` on the samples not yet broken, i.e. without a
    perturbation of norm <= ``eps`` so far (AutoAttack, Croce & Hein 2020, standard
    version: ``n_restarts=1``, ``n_target_classes=9``, 100 iterations). As in AutoAttack,
    an iterate counts as adversarial when it is misclassified, into any class; the result
    per sample is the smallest such perturbation over the targets tried.

    Because samples broken within ``eps`` are not attacked with further targets,
    :meth:`minimize` returns the smallest norm over the targets actually run: exact for
    :meth:`perturb`, an upper bound on FAB-T's full search for samples with norm <= eps
    (construct with ``eps=0`` to run every target on every sample). With ``target``
    :meth:`minimize` is plain targeted FAB (:meth:`FAB.minimize`).

    Parameters (``defaults``): those of :class:`FAB` (the ``jacobian`` option is unused:
    the targeted attack needs one gradient per step), plus
        n_target_classes (9): how many target classes to try.
        target_rows (64): with one restart, several targets run at once as one FAB run over
            (sample, target) rows while the samples times the targets fit in this many rows
            (as APGD-T's ``target_rows``). A target's path does not depend on the others'
            results, and the group's results are folded in target order with the same strict
            "smaller norm" rule, so the norms are those of the targets one at a time (the
            points too, up to float rounding of the larger batch; tested in float64). With
            more restarts the random starts depend on the best norm so far, so the targets
            run one at a time. ``target_rows=1``: always one at a time.
    """

    name: ClassVar[str] = "fab-t"
    description: ClassVar[str] = "AutoAttack's targeted FAB (top-k target classes)"
    defaults: ClassVar[dict[str, Any]] = {
        **FAB.defaults,
        "n_target_classes": 9,
        "target_rows": 64,
    }

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0, **params: Any) -> None:
        super().__init__(eps, norm, seed, **params)
        p = self.params
        p["n_target_classes"] = int_param(self.name, "n_target_classes", p["n_target_classes"], 1)
        p["target_rows"] = int_param(self.name, "target_rows", p["target_rows"], 1)

    def passes(self, n_classes: int) -> Passes:
        """Per target, step and restart: one gradient (of ``f_target - f_y``) and the
        check of the new iterate."""
        targets = min(self.params["n_target_classes"], n_classes - 1)
        runs = self.params["steps"] * self.params["restarts"] * targets
        return Passes(forward=2 * runs + 1, backward=runs)

    def _minimize(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        sample_seeds: Tensor | None,
        pairwise: bool,
        stop_at: float | None,
    ) -> MinNormResult:
        """FAB-T's smallest misclassifying perturbation; see the class docstring."""
        if target is not None:
            return super()._minimize(forward, x, y, target, sample_seeds, pairwise, stop_at)
        x0, y, seeds = self._prepare(x, y, sample_seeds)
        with torch.no_grad():
            logits = forward(x0)
        done = _is_adversarial(logits, y, None)
        best_x, best_norm = self._start_state(x0, done)
        n_targets = min(self.params["n_target_classes"], logits.shape[1] - 1)
        targets = top_targets(torch.nan_to_num(logits, nan=float("-inf")), n_targets)
        limit = self.eps * (1 + 1e-6)
        cap = self.params["target_rows"] if self.params["restarts"] == 1 else 1
        k = 0
        while k < n_targets:
            todo = (best_norm > limit).nonzero().squeeze(1)
            if not len(todo):
                break
            group, rows, target_of = target_group(todo, k, n_targets, cap)
            bx, bn = self._restarts(
                forward,
                x0[rows],
                y[rows],
                seeds[rows],
                targets[rows, target_of],
                None,
                best_x[rows],
                best_norm[rows],
                stop_at=stop_at,
            )
            for g in range(group):  # fold in target order, as the targets one at a time
                part = slice(g * len(todo), (g + 1) * len(todo))
                still = best_norm[todo] > limit  # not yet broken within eps by an earlier one
                take = still & (bn[part] < best_norm[todo])
                best_x[todo] = torch.where(expand_batch(take, bx[part]), bx[part], best_x[todo])
                best_norm[todo] = torch.where(take, bn[part], best_norm[todo])
            k += group
        return MinNormResult(best_x, best_norm, torch.isfinite(best_norm))
