"""Adversarial fine-tuning with the Improved KL (IKL) loss of Cui et al. ("Decoupled
Kullback-Leibler Divergence Loss", NeurIPS 2024), which the HPM paper (002, supplement
Sec. 6.2) uses to fine-tune its head.

The loss implemented here, for clean logits ``n = f(x)``, adversarial logits ``a = f(x')``
and label ``y`` (``K`` classes, batch of ``B``)::

    L = CE(n, y)
        + beta  * 1/4 * mean_i  sum_{j,k} w_{y_i j} w_{y_i k} ((n_ij - n_ik) - (a_ij - a_ik))^2
        + alpha * mean_i  -sum_j softmax(n_i / T)_j log softmax(a_i / T)_j

* the first IKL term is the weighted MSE of the pairwise logit gaps (DKL's wMSE); gradients
  flow through both the clean and the adversarial gaps (IKL's "breaking the asymmetry");
* the weights are class-wise, not sample-wise (IKL's "global information"):
  ``w_y = mean softmax(n / T)`` over the clean training samples of class ``y`` seen so far
  (their code uses the previous epoch's mean and uniform ``1/K`` in the first epoch; here a
  running mean over everything seen, uniform until a class appears, because a featrob
  training method has no epoch hook), detached;
* the second term is the soft-label cross-entropy at temperature ``T``, with the clean
  probabilities detached.

Defaults ``alpha = 4``, ``beta = 20``, ``T = 4`` as their CIFAR-10 code. ``x'`` maximises
``KL(f(x) || f(x'))`` by ``train.attack_steps`` PGD steps (TRADES' inner maximisation, which
is what their code's attack optimises: the soft-label CE at ``T = 1``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from featrob import FeatrobModel, TrainingMethod, kl_adversary


def ikl_loss(
    logits_adv: Tensor,
    logits_clean: Tensor,
    weights: Tensor,
    *,
    alpha: float = 4.0,
    beta: float = 20.0,
    temperature: float = 4.0,
) -> Tensor:
    """The IKL terms (without the clean CE) for ``[B, K]`` logits and ``[B, K]`` class weights
    (rows ``w_{y_i}``, summing to 1); see the module docstring."""
    gap_clean = logits_clean[:, :, None] - logits_clean[:, None, :]
    gap_adv = logits_adv[:, :, None] - logits_adv[:, None, :]
    pair_w = (weights[:, :, None] * weights[:, None, :]).detach()
    wmse = 0.25 * ((gap_clean - gap_adv) ** 2 * pair_w).sum() / pair_w.sum()
    soft = F.softmax(logits_clean / temperature, dim=1).detach()
    sce = -(soft * F.log_softmax(logits_adv / temperature, dim=1)).sum(1).mean()
    return beta * wmse + alpha * sce


class IKLTraining(TrainingMethod):
    """Clean CE + the IKL loss on TRADES-style adversarial examples (Cui et al.)."""

    name: ClassVar[str] = "ikl"
    description: ClassVar[str] = (
        "adversarial training with the IKL loss (Cui et al.; HPM fine-tuning, paper 002)"
    )
    defaults: ClassVar[dict[str, Any]] = {"alpha": 4.0, "beta": 20.0, "temperature": 4.0}

    def __init__(self, config: Any, eps: float, norm: str, **options: Any) -> None:
        super().__init__(config, eps, norm, **options)
        self._sums: Tensor | None = None
        self._counts: Tensor | None = None

    def class_weights(self, y: Tensor, num_classes: int) -> Tensor:
        """``[B, K]`` rows ``w_{y_i}``: running class means of the clean soft labels."""
        if self._sums is None:
            return torch.full((len(y), num_classes), 1.0 / num_classes, device=y.device)
        means = self._sums / self._counts.clamp(min=1)[:, None]
        uniform = torch.full_like(means, 1.0 / num_classes)
        table = torch.where((self._counts > 0)[:, None], means, uniform)
        return table[y]

    @torch.no_grad()
    def _accumulate(self, logits_clean: Tensor, y: Tensor) -> None:
        k = logits_clean.shape[1]
        soft = F.softmax(logits_clean.float() / self.options["temperature"], dim=1)
        onehot = F.one_hot(y, k).to(soft.dtype)
        if self._sums is None:
            self._sums = torch.zeros(k, k, device=soft.device)
            self._counts = torch.zeros(k, device=soft.device)
        self._sums += onehot.T @ soft
        self._counts += onehot.sum(0)

    def loss(self, model: FeatrobModel, x: Tensor, y: Tensor) -> Tensor:
        """``CE(f(x), y) + IKL(f(x'), f(x))``."""
        x_adv = kl_adversary(model, x, self.eps, self.norm, self.config.attack_steps)
        model.train()
        logits, logits_adv = model(x), model(x_adv)
        weights = self.class_weights(y, logits.shape[1])
        self._accumulate(logits, y)
        robust = ikl_loss(
            logits_adv,
            logits,
            weights,
            alpha=self.options["alpha"],
            beta=self.options["beta"],
            temperature=self.options["temperature"],
        )
        return F.cross_entropy(logits, y) + robust
