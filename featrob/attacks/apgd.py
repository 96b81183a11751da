"""Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), Linf and L2: APGD-CE, APGD-DLR and APGD-T.

APGD is PGD without a step size to tune. With ``N`` iterations:

* start at a random point of the eps sphere (Linf: ``x + eps * t / ||t||_inf`` with t uniform
  in [-1, 1]; L2: ``x + eps * t / ||t||_2`` with t Gaussian), step size ``eta = 2 eps``;
* each step: ``z = P(x_k + eta * dir(grad))``, then momentum
  ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with ``a = 0.75`` (``a = 1`` at
  the first step);
* checkpoints: the first after ``max(int(0.22 N), 1)`` steps, each next window shorter by
  ``max(int(0.03 N), 1)`` steps, never shorter than ``max(int(0.06 N), 1)``;
* at a checkpoint the step size halves, and the iterate restarts from the best point found,
  for every sample where (1) the loss increased in at most ``rho = 0.75`` of the window's
  steps, or (2) the step size was not halved at the previous checkpoint and the best loss did
  not improve since then.

Return rule (as AutoAttack): a sample counts as broken if ANY iterate is misclassified. With
``early_exit`` (the default) featrob returns the first misclassified iterate and stops
computing that sample (AutoAttack runs every sample for the whole budget); with
``early_exit=False`` it returns the highest-loss misclassified iterate. Either way a sample
never broken gets its highest-loss iterate, and the robust flags are the same.

Everything is batched and per-sample: step sizes, checkpoint decisions and random starts
(drawn from per-sample seeds, so results do not depend on the batch). Without early exit the
step loop has no host-device synchronisation; with it, one per exit check (every step on a
CPU, every :data:`~featrob.attacks.base.EXIT_CHECK_EVERY_ACCELERATOR` steps elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from featrob.attacks.base import (
    Attack,
    Forward,
    LossFn,
    SuccessFn,
    better_iterate,
    cross_entropy,
    exit_interval,
    expand_batch,
    finite_score,
    flat_norm,
    misclassified,
    project,
    retire,
    steepest_direction,
    take_rows,
)
from featrob.attacks.losses import dlr_loss, dlr_targeted_loss, target_group, top_targets
from featrob.errors import ConfigError
from featrob.options import bool_param, float_param, int_param
from featrob.plan import Passes
from featrob.seeding import normal, uniform


def checkpoints(steps: int) -> list[int]:
    """Iteration indices (0-based, after that step) at which APGD checks its step size."""
    first = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points, at, window = [], first - 1, first
    while at < steps:
        points.append(at)
        window = max(window - shrink, shortest)
        at += window
    return points


class APGD(Attack):
    """APGD on cross-entropy (``apgd-ce``), or on any objective passed as ``loss``.

    Parameters (``defaults``):
        steps: iterations per restart (100, AutoAttack's standard budget).
        restarts: random restarts; each runs only on samples not yet broken.
        rho: the checkpoint threshold of condition (1).
        momentum: ``a`` of the momentum step.
        early_exit (True): stop spending passes on a sample once an iterate is
            adversarial (misclassified, inside the ball and the box) and return that first
            adversarial iterate. The robust flags are exactly those of a full run (a sample
            still running follows the same path); the returned points of broken samples, and
            so their margins and losses, are not the highest-loss ones. ``False`` runs every
            sample for the whole budget, as AutoAttack does, for callers that need the points.
            Without a success test (a custom loss) nothing exits early.
    """

    name: ClassVar[str] = "apgd-ce"
    description: ClassVar[str] = "Auto-PGD on cross-entropy (Croce & Hein 2020)"
    defaults: ClassVar[dict[str, Any]] = {
        "steps": 100,
        "restarts": 1,
        "rho": 0.75,
        "momentum": 0.75,
        "early_exit": True,
    }

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0, **params: Any) -> None:
        super().__init__(eps, norm, seed, **params)
        p = self.params
        p["steps"] = int_param(self.name, "steps", p["steps"], 1)
        p["restarts"] = int_param(self.name, "restarts", p["restarts"], 1)
        p["rho"] = float_param(self.name, "rho", p["rho"])
        p["momentum"] = float_param(self.name, "momentum", p["momentum"])
        p["early_exit"] = bool_param(self.name, "early_exit", p["early_exit"])
        if "n_target_classes" in p:
            p["n_target_classes"] = int_param(
                self.name, "n_target_classes", p["n_target_classes"], 1
            )
        if "batch_restarts" in p:
            p["batch_restarts"] = bool_param(self.name, "batch_restarts", p["batch_restarts"])

    # ------------------------------------------------------------------ public
    def passes(self, n_classes: int) -> Passes:
        """Per restart, the gradient at the start and one per step (a forward and a
        backward pass each), and the first check of the clean inputs."""
        runs = (self.params["steps"] + 1) * self.params["restarts"]
        return Passes(forward=runs + 1, backward=runs)

    def perturb(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        *,
        loss: LossFn | None = None,
        success: SuccessFn | None = None,
        sample_seeds: Tensor | None = None,
    ) -> Tensor:
        """Run APGD on the batch; see the module docstring for the return rule."""
        loss_fn, success_fn = self._defaults_for(loss, success)
        x = x.detach()
        if len(x) == 0 or self.eps == 0:
            return x.clamp(0, 1)
        seeds = self._seeds(x, sample_seeds).to(x.device)
        already = None
        if success_fn is not None:
            with torch.no_grad():
                already = success_fn(forward(x), y).to(device=x.device, dtype=torch.bool)
        return self._restarts(forward, x, y, loss_fn, success_fn, seeds, 0, already)[0]

    # ------------------------------------------------------------------ machinery
    def _restarts(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        loss_fn: LossFn,
        success_fn: SuccessFn | None,
        seeds: Tensor,
        stream_base: int | Tensor,
        already: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Restarts one after the other, each on the samples not yet broken.

        ``stream_base``: the random stream of restart 0 (restart r draws from
        ``stream_base + r``), for every row or one per row (int64 ``[B]``).

        Samples marked ``already`` (adversarial before any perturbation, e.g. misclassified
        clean inputs) are not attacked and come back unchanged, as in AutoAttack.
        """
        best_x = x.clone()
        best_loss = torch.full((len(x),), float("-inf"), dtype=torch.float64, device=x.device)
        broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        if already is not None:
            broken |= already
        for restart in range(self.params["restarts"]):
            todo = torch.nonzero(~broken).squeeze(1)
            if len(todo) == 0:
                break
            stream = stream_base + restart
            if isinstance(stream, Tensor):  # one stream per row (APGD-T's grouped targets)
                stream = stream[todo]
            adv, loss_r, ok = self._run(
                forward, x[todo], y[todo], loss_fn, success_fn, seeds[todo], stream
            )
            better = ok | (loss_r > best_loss[todo])
            better &= ~broken[todo]
            best_x[todo] = torch.where(expand_batch(better, adv), adv, best_x[todo])
            best_loss[todo] = torch.where(better, loss_r, best_loss[todo])
            broken[todo] |= ok
        return best_x, broken

    def _init(self, x: Tensor, seeds: Tensor, stream: int | Tensor) -> Tensor:
        shape = tuple(x.shape[1:])
        if self.norm == "linf":
            t = uniform(seeds, shape, stream).to(x) * 2 - 1
            t = t / expand_batch(flat_norm(t, "linf").clamp_min(1e-12), t)
        else:
            t = normal(seeds, shape, stream).to(x)
            t = t / expand_batch(flat_norm(t, "l2").clamp_min(1e-12), t)
        return (x + self.eps * t).clamp(0, 1)

    def _projector(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """Projection onto the eps ball around ``x`` intersected with [0, 1].

        For Linf the two boxes intersect in ``[max(x - eps, 0), min(x + eps, 1)]``: one clamp
        with precomputed bounds per projection instead of four passes, in place (the loop
        projects only tensors it has just computed; in place it costs half).
        """
        if self.norm == "linf":
            lo, hi = (x - self.eps).clamp_(min=0), (x + self.eps).clamp_(max=1)
            return lambda z: z.clamp_(lo, hi)  # z: a fresh tensor (below)
        return lambda z: (x + project(z - x, self.eps, self.norm)).clamp_(0, 1)

    def _run(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        loss_fn: LossFn,
        success_fn: SuccessFn | None,
        seeds: Tensor,
        stream: int | Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run. Returns (returned point, its loss, broken at any iterate).

        With ``early_exit`` (and a success test) a sample's returned point is its first
        successful iterate, and the sample leaves the batch at the next exit check
        (:func:`~featrob.attacks.base.exit_interval`): every per-sample state (iterate,
        previous iterate, gradient, step size, best point, loss history, checkpoint flags)
        is indexed down to the samples still running, whose path does not change, since
        every quantity of a step is computed per sample.
        """
        steps, rho, a = self.params["steps"], self.params["rho"], self.params["momentum"]
        n = len(x)
        early = bool(self.params["early_exit"]) and success_fn is not None
        every = exit_interval(x.device)
        x_adv = self._init(x, seeds, stream)
        out, loss, grad = self.loss_and_grad(forward, x_adv, y, loss_fn)
        score = finite_score(loss)
        ok = self._success(success_fn, out, y, n, x.device)
        # best-loss point (drives restarts from the best) and returned point
        x_best, loss_best, grad_best = x_adv.clone(), score.clone(), grad.clone()
        ret_x, ret_loss, ret_ok = x_adv.clone(), score.clone(), ok.clone()
        # the results of every sample (written when a sample leaves, and at the end)
        res_x, res_loss, res_ok = ret_x.clone(), ret_loss.clone(), ret_ok.clone()
        rows = torch.arange(n, device=x.device)  # positions of the samples still running
        history = torch.empty(steps + 1, n, dtype=torch.float64, device=x.device)
        history[0] = score
        step = torch.full((n,), 2.0 * self.eps, dtype=x.dtype, device=x.device)
        reduced_before = torch.ones(n, dtype=torch.bool, device=x.device)
        best_at_check = loss_best.clone()
        checks = set(checkpoints(steps))
        window_start = 0
        x_prev = x_adv
        proj = self._projector(x)
        for i in range(steps):
            if early and i % every == 0 and bool(ret_ok.any()):
                rows, keep = retire(
                    ret_ok, rows, (res_x, res_loss, res_ok), (ret_x, ret_loss, ret_ok)
                )
                if not len(rows):
                    return res_x, res_loss, res_ok
                x, y, x_adv, x_prev, grad = x[keep], y[keep], x_adv[keep], x_prev[keep], grad[keep]
                x_best, loss_best, grad_best = x_best[keep], loss_best[keep], grad_best[keep]
                ret_x, ret_loss, ret_ok = ret_x[keep], ret_loss[keep], ret_ok[keep]
                step, reduced_before = step[keep], reduced_before[keep]
                best_at_check, history = best_at_check[keep], history[:, keep]
                proj = self._projector(x)
            moment = 1.0 if i == 0 else a
            z = proj(
                torch.addcmul(x_adv, expand_batch(step, x_adv), steepest_direction(grad, self.norm))
            )
            # x + a (z - x) + (1 - a)(x - x_prev) == lerp(2 x - x_prev, z, a)
            x_adv, x_prev = proj(x_adv.mul(2).sub_(x_prev).lerp_(z, moment)), x_adv

            out, loss, grad = self.loss_and_grad(forward, x_adv, y, loss_fn)
            score = finite_score(loss)
            history[i + 1] = score
            ok_now = self._success(success_fn, out, y, len(x), x.device)
            take = better_iterate(score, ok_now, ret_loss, ret_ok)
            if early:  # the first successful iterate stays
                take &= ~ret_ok
            ret_x = take_rows(take, x_adv, ret_x, in_place=True)
            ret_loss = torch.where(take, score, ret_loss)
            ret_ok = ret_ok | ok_now

            improved = score > loss_best
            x_best = take_rows(improved, x_adv, x_best, in_place=True)
            grad_best = torch.where(expand_batch(improved, grad), grad, grad_best)
            loss_best = torch.where(improved, score, loss_best)

            if i in checks:
                window = history[window_start : i + 2]
                increases = (window[1:] > window[:-1]).sum(0)
                oscillating = increases <= rho * (i + 1 - window_start)
                stalled = ~reduced_before & (best_at_check >= loss_best)
                reduce = oscillating | stalled
                step = torch.where(reduce, step / 2, step)
                x_adv = torch.where(expand_batch(reduce, x_adv), x_best, x_adv)
                grad = torch.where(expand_batch(reduce, grad), grad_best, grad)
                reduced_before, best_at_check = reduce, loss_best.clone()
                window_start = i + 1
        res_x[rows], res_loss[rows], res_ok[rows] = ret_x, ret_loss, ret_ok
        return res_x, res_loss, res_ok

    @staticmethod
    def _success(
        success_fn: SuccessFn | None, out: Tensor, y: Tensor, n: int, device: torch.device
    ) -> Tensor:
        if success_fn is None:
            return torch.zeros(n, dtype=torch.bool, device=device)
        with torch.no_grad():
            return success_fn(out, y).to(device=device, dtype=torch.bool)


class APGDDLR(APGD):
    """APGD on the untargeted DLR loss (``apgd-dlr``); needs at least 3 classes."""

    name: ClassVar[str] = "apgd-dlr"
    description: ClassVar[str] = "Auto-PGD on the DLR loss (Croce & Hein 2020)"
    min_classes: ClassVar[int] = 3

    def perturb(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        *,
        loss: LossFn | None = None,
        success: SuccessFn | None = None,
        sample_seeds: Tensor | None = None,
    ) -> Tensor:
        """APGD maximising DLR; a sample is broken when misclassified."""
        if loss is not None:
            raise ConfigError(f"{self.name} optimises the DLR loss; use apgd-ce for a custom loss")
        return super().perturb(
            _checked_classes(forward, self.name, 3),
            x,
            y,
            loss=dlr_loss,
            success=success or misclassified,
            sample_seeds=sample_seeds,
        )


class APGDTargeted(APGD):
    """APGD-T (``apgd-t``): APGD on the targeted DLR loss towards each of the
    ``n_target_classes`` highest-scoring wrong classes of the clean input in turn, each run only
    on the samples no earlier target broke. Success is untargeted (any misclassification).

    ``target_rows`` (64): when few samples are left, several targets run at once, as one
    APGD run over (sample, target) rows, as long as the samples times the targets of the group
    fit in ``target_rows`` rows (or one target at a time when the samples alone do); the
    groups follow one another in target order. Each row draws the random start of its own
    target's stream and every quantity of a step is per row, so a group computes what the
    targets one after the other compute; the results are folded in target order (a sample
    broken by an earlier target of the group ignores the later ones): the returned points are
    those of the one-at-a-time schedule, up to float rounding of the larger batch (Linf
    points bit-identical in float64, tested). It pays where passes on a few samples are
    dominated by per-call overhead (the survivors of a normally trained model; small batches
    on a GPU); ``target_rows=1`` runs the targets one at a time."""

    name: ClassVar[str] = "apgd-t"
    description: ClassVar[str] = "Auto-PGD on the targeted DLR loss over the top-k classes"
    defaults: ClassVar[dict[str, Any]] = {
        **APGD.defaults,
        "n_target_classes": 9,
        "target_rows": 64,
    }
    min_classes: ClassVar[int] = 4

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0, **params: Any) -> None:
        super().__init__(eps, norm, seed, **params)
        self.params["target_rows"] = int_param(
            self.name, "target_rows", self.params["target_rows"], 1
        )

    def passes(self, n_classes: int) -> Passes:
        """APGD's passes once per target class."""
        targets = min(self.params["n_target_classes"], n_classes - 1)
        return targets * super().passes(n_classes)

    def perturb(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        *,
        loss: LossFn | None = None,
        success: SuccessFn | None = None,
        sample_seeds: Tensor | None = None,
    ) -> Tensor:
        """Targeted runs over the top classes; returns the first point that breaks a sample."""
        if loss is not None:
            raise ConfigError(f"{self.name} optimises the targeted DLR loss; it takes no loss")
        x = x.detach()
        if len(x) == 0 or self.eps == 0:
            return x.clamp(0, 1)
        forward = _checked_classes(forward, self.name, 4)
        success_fn = success or misclassified
        seeds = self._seeds(x, sample_seeds).to(x.device)
        with torch.no_grad():
            logits = forward(x)
        k = min(self.params["n_target_classes"], logits.shape[1] - 1)
        targets = top_targets(logits, k)
        result = x.clone()
        with torch.no_grad():
            broken = success_fn(logits, y).to(device=x.device, dtype=torch.bool)
        best_loss = torch.full((len(x),), float("-inf"), dtype=torch.float64, device=x.device)
        restarts, j = self.params["restarts"], 0
        while j < k:
            todo = torch.nonzero(~broken).squeeze(1)
            if len(todo) == 0:
                break
            group, rows, target_of = target_group(todo, j, k, self.params["target_rows"])
            # labels and targets travel together, so the runs can drop broken samples
            pair = torch.stack((y[rows], targets[rows, target_of]), 1)
            stream: int | Tensor = j * restarts if group == 1 else target_of * restarts
            adv, ok = self._restarts(
                forward,
                x[rows],
                pair,
                _pair_targeted_dlr,
                _on_labels(success_fn),
                seeds[rows],
                stream_base=stream,
            )
            with torch.no_grad():
                loss_all = finite_score(_pair_targeted_dlr(forward(adv), pair))
            for g in range(group):  # fold in target order, as the targets one at a time
                part = slice(g * len(todo), (g + 1) * len(todo))
                adv_g, ok_g, loss_g = adv[part], ok[part], loss_all[part]
                still = ~broken[todo]  # not broken by an earlier target
                take = still & (ok_g | (loss_g > best_loss[todo]))
                result[todo] = torch.where(expand_batch(take, adv_g), adv_g, result[todo])
                best_loss[todo] = torch.where(take, loss_g, best_loss[todo])
                broken[todo] |= still & ok_g
            j += group
        return result


def _pair_targeted_dlr(logits: Tensor, pair: Tensor) -> Tensor:
    """Targeted DLR with ``pair[:, 0]`` the labels and ``pair[:, 1]`` the targets."""
    return dlr_targeted_loss(logits, pair[:, 0], pair[:, 1])


def _on_labels(success_fn: SuccessFn) -> SuccessFn:
    """``success_fn`` reading the labels from a ``[B, 2]`` (label, target) pair."""

    def success(logits: Tensor, pair: Tensor) -> Tensor:
        return success_fn(logits, pair[:, 0])

    return success


def _checked_classes(forward: Forward, attack: str, minimum: int) -> Forward:
    """Wrap ``forward`` so a model with too few classes gets a clear error."""

    def wrapped(x: Tensor) -> Tensor:
        out = forward(x)
        if out.dim() != 2 or out.shape[1] < minimum:
            raise ConfigError(
                f"{attack} needs logits of at least {minimum} classes, got shape {tuple(out.shape)}"
            )
        return out

    return wrapped


__all__ = ["APGD", "APGDDLR", "APGDTargeted", "checkpoints", "cross_entropy"]
