"""Fast gradient sign method (Goodfellow et al., "Explaining and Harnessing Adversarial
Examples", ICLR 2015), with the optional random start of Wong et al. ("Fast is better than
free: Revisiting adversarial training", ICLR 2020).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from featrob.attacks.base import (
    Attack,
    Forward,
    LossFn,
    SuccessFn,
    project,
    random_in_ball,
    steepest_direction,
)
from featrob.options import bool_param, float_param
from featrob.plan import Passes


class FGSM(Attack):
    """One steepest-ascent step: ``x_adv = clip(x + project(a * d(grad(x))))``.

    ``d`` is ``sign(grad)`` for Linf (the original FGSM) and ``grad / ||grad||_2`` for L2
    (the "fast gradient method"). The result is clipped to [0, 1].

    Parameters (``defaults``):
        random_start (False): Wong et al.'s variant: start at a uniform point of the eps ball
            (drawn from the per-sample seeds, stream 0), take the gradient there, step by
            ``alpha`` and project back onto the ball.
        alpha (None): absolute step length. None means eps without a random start (plain
            FGSM lands on the ball's surface) and 1.25 eps with one (Wong et al.).

    ``success`` is ignored: there is a single iterate, returned as is.
    """

    name: ClassVar[str] = "fgsm"
    description: ClassVar[str] = "fast gradient sign method, one step (Linf, L2)"
    defaults: ClassVar[dict[str, Any]] = {"random_start": False, "alpha": None}

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0, **params: Any) -> None:
        super().__init__(eps, norm, seed, **params)
        self.params["random_start"] = bool_param(
            self.name, "random_start", self.params["random_start"]
        )
        if self.params["alpha"] is not None:
            self.params["alpha"] = float_param(self.name, "alpha", self.params["alpha"])

    def step_size(self) -> float:
        """The absolute step length ``alpha`` actually used."""
        if self.params["alpha"] is not None:
            return self.params["alpha"]
        return 1.25 * self.eps if self.params["random_start"] else self.eps

    def passes(self, n_classes: int) -> Passes:
        """One gradient."""
        return Passes(forward=1, backward=1)

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
        """One FGSM step on the batch; see :meth:`Attack.perturb`."""
        loss_fn, _ = self._defaults_for(loss, success)
        x = x.detach()
        if len(x) == 0 or self.eps == 0:
            return x.clamp(0, 1)
        x_start = x.clamp(0, 1)
        if self.params["random_start"]:
            seeds = self._seeds(x, sample_seeds)
            delta = random_in_ball(seeds, tuple(x.shape[1:]), self.eps, self.norm, stream=0)
            x_start = (x + project(delta.to(x.device, x.dtype), self.eps, self.norm)).clamp(0, 1)
        _, _, grad = self.loss_and_grad(forward, x_start, y, loss_fn)
        stepped = x_start + self.step_size() * steepest_direction(grad, self.norm)
        return (x + project(stepped - x, self.eps, self.norm)).clamp(0, 1)
