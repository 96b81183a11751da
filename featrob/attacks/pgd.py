"""Projected gradient descent (Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018) for the Linf and L2 threat models.

PGD maximises a per-sample objective (cross-entropy by default) by repeated steepest-ascent
steps, each followed by a projection onto the eps ball and the [0, 1] box. Random restarts
run in one batched pass (the batch replicated R times along dim 0) unless memory forbids it.

"""

from __future__ import annotations

import difflib
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from featrob.attacks.base import (
    Attack,
    Forward,
    LossFn,
    SuccessFn,
    better_iterate,
    exit_interval,
    expand_batch,
    finite_score,
    project,
    random_in_ball,
    steepest_direction,
)
from featrob.errors import ConfigError
from featrob.options import bool_param, float_param, int_param
from featrob.plan import Passes

SCHEDULES = ("constant", "cosine", "step")


class PGD(Attack):
    """Madry et al. PGD with random starts, batched restarts and step-size schedules.

    Each step is ``x <- clip(x + project(x + a_t * d(grad) - x))`` where ``d`` is
    ``sign(grad)`` (Linf) or ``grad / ||grad||_2`` (L2), the projection is onto the eps ball
    and the clip onto [0, 1]. The returned point is, per sample, the best iterate over all
    steps (including the start and the final point) and all restarts.

    Parameters (``defaults``):
        steps (10): gradient steps per restart; 0 returns the (random) start.
        step_size (None): absolute step length a (Linf: per pixel; L2: Euclidean). Overrides
            ``rel_step_size``.
        rel_step_size (None): step length as a fraction of eps; None means ``2.5 / steps``
            (Madry et al.: 2.5 eps / steps lets a walk from any start reach the far side of
            the ball).
        random_start (True): start uniformly in the eps ball (L2: uniform in the ball),
            drawn from the per-sample seeds with ``stream = restart``, so a sample's start
            depends only on its seed and the restart number, never on the batch.
        restarts (1): independent random starts; the best result per sample is kept. Without
            ``random_start`` every restart would be identical, so only one runs.
        schedule ("constant"): step-size factor at step t of T:
            ``"constant"`` 1; ``"cosine"`` ``0.1 + 0.45 (1 + cos(pi t / (T - 1)))``, decaying
            from 1 at the first step to 0.1 at the last; ``"step"`` 1, halved for
            ``t >= T/2`` and halved again for ``t >= 3T/4``.
        batch_restarts (True): run all restarts in one pass on an R-times larger batch
            (fast); False loops over restarts (R times less memory). Same result either way.
        drop_stationary (False): stop computing a replica once a step leaves its iterate
            exactly where it was. PGD is deterministic, so such a replica would repeat the same
            point, gradient and non-move at every later step: dropping it changes nothing but
            the cost. Exact for Linf under any schedule (a coordinate clipped back by a step of
            one size is clipped back by any) and for L2 under the constant schedule; for L2
            with a decaying schedule the option is refused. It pays where many replicas stall
            early (a ReLU feature pushed to 0, a zero gradient), as in the sensitivity
            plugin; it costs one host-device sync per step, so it is off by default.
        early_exit (True): with a success test, stop computing a replica once an iterate
            succeeds and keep that first successful iterate as the replica's result (the best
            over restarts is then the highest-loss first success). The success flags are those
            of a full run; the points of successful samples are not the highest-loss ones.
            Exit checks run every step on a CPU and every
            :data:`~featrob.attacks.base.EXIT_CHECK_EVERY_ACCELERATOR` steps elsewhere (one
            host-device sync each); the result does not depend on when they run. ``False``
            for callers that use the points (adversarial training does).

    Best iterate (without early exit): when ``success`` is given (the default for the
    default cross-entropy loss is "misclassified"), a successful iterate beats any
    unsuccessful one and among iterates of the same success the highest loss wins (ties keep
    the earlier iterate/restart).
    Without ``success`` the highest-loss iterate wins. A NaN loss counts as -inf.

    Gradients come from ``torch.autograd.grad`` w.r.t. the input only, under
    ``torch.enable_grad()``: model parameter ``.grad`` is never touched and the model's
    train/eval mode is left as the caller set it (use eval() for deterministic results).
    """

    name: ClassVar[str] = "pgd"
    description: ClassVar[str] = "Madry et al. projected gradient descent (Linf, L2)"
    defaults: ClassVar[dict[str, Any]] = {
        "steps": 10,
        "step_size": None,
        "rel_step_size": None,
        "random_start": True,
        "restarts": 1,
        "schedule": "constant",
        "batch_restarts": True,
        "drop_stationary": False,
        "early_exit": True,
    }

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0, **params: Any) -> None:
        super().__init__(eps, norm, seed, **params)
        p = self.params
        p["steps"] = int_param(self.name, "steps", p["steps"], 0)
        p["restarts"] = int_param(self.name, "restarts", p["restarts"], 1)
        for key in ("step_size", "rel_step_size"):
            if p[key] is not None:
                p[key] = float_param(self.name, key, p[key])
        for key in ("random_start", "batch_restarts", "drop_stationary", "early_exit"):
            p[key] = bool_param(self.name, key, p[key])
        if p["schedule"] not in SCHEDULES:
            close = difflib.get_close_matches(str(p["schedule"]), SCHEDULES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{self.name}: unknown schedule {p['schedule']!r}{hint}; "
                f"use one of {', '.join(SCHEDULES)}"
            )
        if p["drop_stationary"] and self.norm != "linf" and p["schedule"] != "constant":
            raise ConfigError(
                f"{self.name}: drop_stationary is exact only for Linf or the constant schedule; "
                f"turn it off for {self.norm} with schedule {p['schedule']!r}"
            )

    # ------------------------------------------------------------------ step sizes
    def base_step_size(self) -> float:
        """The absolute step length before the schedule is applied."""
        p = self.params
        if p["step_size"] is not None:
            return p["step_size"]
        rel = p["rel_step_size"]
        if rel is None:
            rel = 2.5 / max(p["steps"], 1)
        return rel * self.eps

    def step_sizes(self) -> list[float]:
        """Absolute step length of every step (the schedule applied to the base step)."""
        steps, schedule, base = self.params["steps"], self.params["schedule"], self.base_step_size()
        sizes = []
        for t in range(steps):
            if schedule == "cosine":
                factor = (
                    1.0 if steps == 1 else 0.1 + 0.45 * (1 + math.cos(math.pi * t / (steps - 1)))
                )
            elif schedule == "step":
                factor = 0.5 ** ((t >= steps / 2) + (t >= 3 * steps / 4))
            else:
                factor = 1.0
            sizes.append(base * factor)
        return sizes

    # ------------------------------------------------------------------ attack
    def passes(self, n_classes: int) -> Passes:
        """A forward and a backward pass per step and restart."""
        runs = self.params["steps"] * self.params["restarts"]
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
        """Run PGD on the batch; see :meth:`Attack.perturb` and the class docstring."""
        loss_fn, success_fn = self._defaults_for(loss, success)
        x = x.detach()
        if len(x) == 0 or self.eps == 0:
            return x.clamp(0, 1)
        seeds = self._seeds(x, sample_seeds)
        random_start = self.params["random_start"]
        restarts = self.params["restarts"] if random_start else 1

        if self.params["batch_restarts"] or restarts == 1:
            xr = x.repeat(restarts, *([1] * (x.dim() - 1)))
            yr = y.repeat(restarts, *([1] * (y.dim() - 1)))
            starts = list(range(restarts)) if random_start else None
            adv, best_loss, best_ok = self._run(forward, xr, yr, loss_fn, success_fn, seeds, starts)
            adv = adv.view(restarts, *x.shape)
            best_loss = best_loss.view(restarts, -1)
            best_ok = best_ok.view(restarts, -1)
        else:
            runs = [
                self._run(forward, x, y, loss_fn, success_fn, seeds, [r]) for r in range(restarts)
            ]
            adv = torch.stack([r[0] for r in runs])
            best_loss = torch.stack([r[1] for r in runs])
            best_ok = torch.stack([r[2] for r in runs])

        # Reduce over restarts with the same rule as over steps (first restart wins ties).
        out, out_loss, out_ok = adv[0], best_loss[0], best_ok[0]
        for r in range(1, restarts):
            better = better_iterate(best_loss[r], best_ok[r], out_loss, out_ok)
            out = torch.where(expand_batch(better, out), adv[r], out)
            out_loss = torch.where(better, best_loss[r], out_loss)
            out_ok = torch.where(better, best_ok[r], out_ok)
        return out

    def _run(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        loss_fn: LossFn,
        success_fn: SuccessFn | None,
        seeds: Tensor,
        starts: list[int] | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One PGD run on ``x`` (possibly restart-replicated); returns best x, loss, success.

        ``starts`` lists the random-start stream of each replica block (None: no random
        start); ``x`` holds ``len(starts)`` copies of the original batch, block after block.
        """
        eps, norm = self.eps, self.norm
        if starts is None:
            delta = torch.zeros_like(x)
        else:
            shape = tuple(x.shape[1:])
            delta = torch.cat([random_in_ball(seeds, shape, eps, norm, stream=r) for r in starts])
            delta = delta.to(device=x.device, dtype=x.dtype)
        x_cur = (x + project(delta, eps, norm)).clamp(0, 1)

        best_x = x_cur.clone()
        best_loss = torch.full((len(x),), float("-inf"), dtype=torch.float64, device=x.device)
        best_ok = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        # The replicas still moving (None: all of them, without the indexing cost).
        active: Tensor | None = None
        early = bool(self.params["early_exit"]) and success_fn is not None
        every = exit_interval(x.device)

        def update(x_it: Tensor, out: Tensor, value: Tensor, y_it: Tensor) -> None:
            score = finite_score(value)
            if success_fn is None:
                ok = torch.zeros_like(score, dtype=torch.bool)
            else:
                with torch.no_grad():
                    ok = success_fn(out.detach(), y_it).to(device=x.device, dtype=torch.bool)
            if active is None:
                better = better_iterate(score, ok, best_loss, best_ok)
                if early:  # the first successful iterate stays
                    better &= ~best_ok
                best_x.copy_(torch.where(expand_batch(better, x_it), x_it, best_x))
                best_loss.copy_(torch.where(better, score, best_loss))
                best_ok.copy_(torch.where(better, ok, best_ok))
                return
            old_x, old_loss, old_ok = best_x[active], best_loss[active], best_ok[active]
            better = better_iterate(score, ok, old_loss, old_ok)
            if early:
                better &= ~old_ok
            best_x[active] = torch.where(expand_batch(better, x_it), x_it, old_x)
            best_loss[active] = torch.where(better, score, old_loss)
            best_ok[active] = torch.where(better, ok, old_ok)

        x0, y_act = x, y
        for t, size in enumerate(self.step_sizes()):
            out, value, grad = self.loss_and_grad(forward, x_cur, y_act, loss_fn)
            update(x_cur, out, value, y_act)
            stepped = x_cur + size * steepest_direction(grad, norm)
            x_new = (x0 + project(stepped - x0, eps, norm)).clamp(0, 1)
            running = None
            if self.params["drop_stationary"]:
                running = (x_new != x_cur).flatten(1).any(1)
            if early and t % every == 0:
                unbroken = ~(best_ok if active is None else best_ok[active])
                running = unbroken if running is None else running & unbroken
            if running is not None and not bool(running.all()):
                keep = running.nonzero().squeeze(1)
                active = keep if active is None else active[keep]
                x_new, x0, y_act = x_new[keep], x0[keep], y_act[keep]
                if len(x_new) == 0:
                    return best_x, best_loss, best_ok
            x_cur = x_new

        with torch.no_grad():  # the final iterate needs its loss too
            out = forward(x_cur)
            update(x_cur, out, loss_fn(out, y_act), y_act)
        return best_x, best_loss, best_ok
