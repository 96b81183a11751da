"""Loss functions of the built-in training methods."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from featrob.adversaries import crafting, kl_adversary
from featrob.attacks.pgd import PGD
from featrob.models.base import FeatrobModel
from featrob.trainer import TrainingMethod


class StandardTraining(TrainingMethod):
    """Cross-entropy on clean inputs."""

    name: ClassVar[str] = "standard"
    description: ClassVar[str] = "cross-entropy on clean inputs"

    def loss(self, model: FeatrobModel, x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy."""
        return F.cross_entropy(model(x), y)


def _pgd(method: TrainingMethod, steps: int):
    """PGD for training: every sample gets its highest-loss point (no early exit, which
    would hand the update the first misclassified, weaker point)."""
    return PGD(eps=method.eps, norm=method.norm, steps=steps, random_start=True, early_exit=False)


class PGDTraining(TrainingMethod):
    """Madry et al. (2018): cross-entropy on PGD adversarial examples.

    Examples are crafted as :func:`crafting` says (eval mode, BPDA substitutes), then the
    update runs in train mode. PGD uses ``attack_steps`` steps of 2.5 eps / steps from a
    random start.
    """

    name: ClassVar[str] = "pgd"
    description: ClassVar[str] = "adversarial training on PGD examples (Madry et al.)"

    def loss(self, model: FeatrobModel, x: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy on adversarial inputs."""
        attack = _pgd(self, self.config.attack_steps)
        seeds = torch.randint(0, 2**62, (len(x),))
        with crafting(model):
            x_adv = attack.perturb(model, x, y, sample_seeds=seeds).detach()
        model.train()
        return F.cross_entropy(model(x_adv), y)


class TradesTraining(TrainingMethod):
    """Zhang et al. (2019), TRADES: ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` where x'
    maximises the KL term by PGD from ``x + 0.001 N(0, I)``; beta is ``trades_beta``."""

    name: ClassVar[str] = "trades"
    description: ClassVar[str] = (
        "TRADES: clean CE + beta * KL to adversarial outputs (Zhang et al.)"
    )

    def loss(self, model: FeatrobModel, x: Tensor, y: Tensor) -> Tensor:
        """TRADES objective."""
        x_adv = kl_adversary(model, x, self.eps, self.norm, self.config.attack_steps)
        model.train()
        logits = model(x)
        logits_adv = model(x_adv)
        robust = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.config.trades_beta * robust
