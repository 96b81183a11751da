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
from featrob.attacks.base import Forward, MinimumNormAttack, MinNormResult, flat_norm
from featrob.attacks.fab_projections import project_l2, project_linf
from featrob.attacks.losses import top_targets
from featrob.errors import ConfigError
from featrob.options import float_param, int_param
from featrob.plan import Passes

JACOBIANS = ("vmap", "loop")
_TINY = 1e-12


def _is_adversarial(
    logits: Tensor, y: Tensor, target: Tensor | None, pairwise: bool = False
) -> Tensor:
    """``[B]`` bool: prediction is ``target`` (or differs from ``y`` where ``target`` is None;
    with ``pairwise``, ``f_target > f_y`` whatever the other classes do); rows with
    non-finite logits never count."""
    finite = torch.isfinite(logits).all(1)
    if pairwise and target is not None:
        rows = torch.arange(len(logits), device=logits.device)
        return finite & (logits[rows, target] > logits[rows, y])
    pred = logits.argmax(1)
    hit = pred != y if target is None else pred == target
    return finite & hit


def _differentiable(logits: Tensor) -> Tensor:
    """``logits``, or :class:`ConfigError` when they do not depend on the input."""
    if not logits.requires_grad:
        raise ConfigError(
            "fab: the logits do not depend differentiably on the input; "
            "FAB needs a differentiable forward"
        )
    return logits


def _jacobian_vmap(forward: Forward, x: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``[B, K]`` and their Jacobian ``[B, K, *x.shape[1:]]``: one forward, and one
    backward vectorised over the K one-hot cotangents (``torch.func.vjp`` + ``vmap``)."""
    with torch.no_grad():  # the outer no_grad keeps parameters out of the graph
        logits, vjp_fn = torch.func.vjp(lambda inp: _differentiable(forward(inp)), x)
        k = logits.shape[1]
        eye = torch.eye(k, dtype=logits.dtype, device=logits.device)
        (jac,) = torch.func.vmap(vjp_fn)(eye[:, None, :].expand(k, len(x), k))
    return logits, jac.movedim(0, 1)


def _jacobian_loop(forward: Forward, x: Tensor) -> tuple[Tensor, Tensor]:
    """Same as :func:`_jacobian_vmap` with K backward passes through a retained graph."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = _differentiable(forward(x_in))
        k = logits.shape[1]
        rows = []
        for j in range(k):
            (g,) = torch.autograd.grad(
                logits[:, j].sum(), x_in, retain_graph=j < k - 1, allow_unused=True
            )
            rows.append(torch.zeros_like(x_in) if g is None else g)
    return logits.detach(), torch.stack(rows, 1)


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
    }

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0, **params: Any) -> None:
        super().__init__(eps, norm, seed, **params)
        p = self.params
        p["steps"] = int_param(self.name, "steps", p["steps"], 0)
        p["restarts"] = int_param(self.name, "restarts", p["restarts"], 1)
        for key in ("alpha_max", "eta", "beta"):
            p[key] = float_param(self.name, key, p[key], positive=key != "alpha_max")
        if p["alpha_max"] > 1 or p["beta"] > 1:
            raise ConfigError(f"{self.name}: alpha_max and beta must be <= 1")
        if p["jacobian"] not in JACOBIANS:
            raise ConfigError(
                f"{self.name}: jacobian must be one of {', '.join(JACOBIANS)}, "
                f"got {p['jacobian']!r}"
            )
        self._project = project_linf if self.norm == "linf" else project_l2

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
    ) -> tuple[Tensor, Tensor]:
        """All restarts on ``x0``; ``target`` picks the hyperplane (None: closest of all),
        ``hit`` the success test (None: misclassified; ``pairwise``: ``f_hit > f_y``).
        Returns the improved best."""
        jac = self._jacobian_fn()
        for r in range(self.params["restarts"]):
            start = x0 if r == 0 else self._random_start(x0, seeds, best_norm, r)
            best_x, best_norm = self._run(
                forward, jac, x0, start, y, target, hit, best_x, best_norm, pairwise
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
    ) -> tuple[Tensor, Tensor]:
        """One FAB run from ``start``; returns the best ``(x, norm)`` including earlier ones."""
        p, shape, b = self.params, x0.shape, len(x0)
        alpha_max, eta, beta = p["alpha_max"], p["eta"], p["beta"]
        x0f = x0.flatten(1)
        xf = start.flatten(1)
        best_f = best_x.flatten(1)
        for _ in range(p["steps"]):
            df, dg = self._hyperplane(forward, jac, xf.view(shape), y, target)
            ok = torch.isfinite(df) & torch.isfinite(dg).all(1)
            df = torch.where(ok, df, torch.zeros_like(df))
            dg = torch.where(ok[:, None], dg, torch.zeros_like(dg))
            # Linearised boundary {z : df + dg.(z - x) = 0} = {z : dg.z = dg.x - df}.
            offset = (dg * xf).sum(1) - df
            d = self._project(torch.cat((xf, x0f)), dg.repeat(2, 1), offset.repeat(2))
            d = torch.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)
            size = flat_norm(d, self.norm).clamp_min(1e-8)
            d1, d2 = d[:b], d[b:]
            alpha = (size[:b] / (size[:b] + size[b:])).clamp(0, alpha_max)[:, None]
            xf = ((xf + eta * d1) * (1 - alpha) + (x0f + eta * d2) * alpha).clamp(0, 1)
            with torch.no_grad():
                adv = _is_adversarial(forward(xf.view(shape)), y, hit, pairwise)
            dist = flat_norm(xf - x0f, self.norm)
            better = adv & (dist < best_norm)
            best_f = torch.where(better[:, None], xf, best_f)
            best_norm = torch.where(better, dist, best_norm)
            xf = torch.where(adv[:, None], x0f + beta * (xf - x0f), xf)
        return best_f.view(shape), best_norm


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
    """

    name: ClassVar[str] = "fab-t"
    description: ClassVar[str] = "AutoAttack's targeted FAB (top-k target classes)"
    defaults: ClassVar[dict[str, Any]] = {**FAB.defaults, "n_target_classes": 9}

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0, **params: Any) -> None:
        super().__init__(eps, norm, seed, **params)
        p = self.params
        p["n_target_classes"] = int_param(self.name, "n_target_classes", p["n_target_classes"], 1)

    def passes(self, n_classes: int) -> Passes:
        """Per target, step and restart: one gradient (of ``f_target - f_y``) and the
        check of the new iterate."""
        targets = min(self.params["n_target_classes"], n_classes - 1)
        runs = self.params["steps"] * self.params["restarts"] * targets
        return Passes(forward=2 * runs + 1, backward=runs)

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
        """FAB-T's smallest misclassifying perturbation; see the class docstring."""
        if target is not None:
            return super().minimize(
                forward, x, y, target=target, sample_seeds=sample_seeds, pairwise=pairwise
            )
        x0, y, seeds = self._prepare(x, y, sample_seeds)
        with torch.no_grad():
            logits = forward(x0)
        done = _is_adversarial(logits, y, None)
        best_x, best_norm = self._start_state(x0, done)
        n_targets = min(self.params["n_target_classes"], logits.shape[1] - 1)
        targets = top_targets(torch.nan_to_num(logits, nan=float("-inf")), n_targets)
        limit = self.eps * (1 + 1e-6)
        for k in range(n_targets):
            todo = (best_norm > limit).nonzero().squeeze(1)
            if not len(todo):
                break
            bx, bn = self._restarts(
                forward,
                x0[todo],
                y[todo],
                seeds[todo],
                targets[todo, k],
                None,
                best_x[todo],
                best_norm[todo],
            )
            best_x[todo], best_norm[todo] = bx, bn
        return MinNormResult(best_x, best_norm, torch.isfinite(best_norm))
