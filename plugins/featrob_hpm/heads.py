"""The Hybrid Prototype Mixing (HPM) head (Wang, paper 002, Sec. 3.6, eqs. 14-18).

* ``C_global`` ``[K, D]``: EMA of the ground-truth class means of each training batch
  (:class:`featrob.EMAPrototypes`, momentum 0.98 for at most 10 classes, 0.995
  for more, as the paper's supplement), fed by the training loop through :meth:`observe`;
* ``C_batch`` ``[K, D]`` = ``P^T Z / (column sums of P + eps)`` (eq. 16) with the assignment
  ``P`` taken from the head's own FC logits: in training ``P_ste = P_soft +
  stop_grad(P_hard - P_soft)`` (eq. 15: hard arg-max forward, softmax gradient backward);
* ``C_hybrid = [C_global, C_batch] W_m + b_m`` (eq. 17; ``W_m`` is ``mixer.weight.T``,
  ``[2D, D]``), initialised to the mean of the two (``W_m = [I/2; I/2]``, ``b_m = 0``),
  which is also the "without mixer" ablation;
* logits ``-||z_i - C_hybrid_j||`` (eq. 18).

At evaluation the assignment is the hard arg-max, a :class:`HardAssignment` module whose
gradient is zero (what a deployed model computes, and what a naive attack differentiates);
its ``bpda_substitute()`` is the softmax, so featrob's BPDA (``Plan(attack, bpda=True)``)
differentiates the target exactly through its STE. ``assignment="soft"`` gives the
soft-hybrid surrogate of the MSA protocol (``P_soft`` in the forward pass too).

``C_batch`` depends on the whole batch an input is evaluated in: the same image can get
different logits in batches of 1, 16 or 64, and a lone image (batch size 1) sees a batch
prototype only for its own predicted class, which pulls the decision towards the FC
prediction. Evaluations report the batch size. Ablations (Sec. 4.4): ``use_global=False``
(batch prototypes only), ``mixer="mean"``, ``metric="dot"`` (inner products, not ``-L2``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from featrob import (
    ConfigError,
    EMAPrototypes,
    check_head_options,
    check_head_sizes,
    default_prototype_momentum,
    neg_l2_logits,
)

ASSIGNMENTS = ("hard", "soft")
MIXERS = ("linear", "mean")
METRICS = ("l2", "dot")


def ste_assignment(logits: Tensor) -> Tensor:
    """Eq. 15: one-hot arg-max forward, softmax gradient backward."""
    soft = logits.softmax(dim=1)
    hard = nn.functional.one_hot(logits.argmax(1), logits.shape[1]).to(soft.dtype)
    return soft + (hard - soft).detach()


def batch_prototypes(z: Tensor, assignment: Tensor, eps: float = 1e-6) -> Tensor:
    """Eq. 16: ``assignment^T z / (column sums + eps)`` (``[K, D]``; rows of classes without
    any assigned sample are ~0)."""
    return (assignment.T @ z) / (assignment.sum(0)[:, None] + eps)


class HardAssignment(nn.Module):
    """One-hot arg-max of the FC logits (zero gradient); BPDA substitutes the softmax."""

    def forward(self, logits: Tensor) -> Tensor:
        if self.training:  # eq. 15's straight-through estimator
            return ste_assignment(logits)
        return nn.functional.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype)

    def bpda_substitute(self) -> nn.Module:
        """The softmax: the gradient the STE gives in training."""
        return nn.Softmax(dim=1)


class HPMHead(nn.Module):
    """Hybrid Prototype Mixing head (eqs. 14-18); see the module docstring.

    Args:
        in_features, num_classes: D and K.
        momentum: EMA momentum of ``C_global`` (default 0.98 for <= 10 classes, else 0.995).
        use_global: mix in the dataset-level prototypes (False: the ablation without them).
        mixer: ``"linear"`` (eq. 17) or ``"mean"`` (the ablation without the mixer).
        metric: ``"l2"`` (eq. 18) or ``"dot"`` (the inner-product ablation).
        assignment: ``"hard"`` (the model; STE in training) or ``"soft"`` (the soft-hybrid
            surrogate).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        momentum: float | None = None,
        use_global: bool = True,
        mixer: str = "linear",
        metric: str = "l2",
        assignment: str = "hard",
    ) -> None:
        super().__init__()
        for what, value, allowed in (
            ("mixer", mixer, MIXERS),
            ("metric", metric, METRICS),
            ("assignment", assignment, ASSIGNMENTS),
        ):
            if value not in allowed:
                raise ConfigError(
                    f"head 'hpm' option {what} must be one of {', '.join(allowed)}, got {value!r}"
                )
        d = self.in_features = in_features
        self.num_classes = num_classes
        self.fc = nn.Linear(d, num_classes)
        self.global_prototypes = EMAPrototypes(
            num_classes,
            d,
            default_prototype_momentum(num_classes) if momentum is None else momentum,
        )
        self.use_global, self.mixer_kind, self.metric = use_global, mixer, metric
        self.assignment = assignment
        self.assign = HardAssignment()
        self.mixer = nn.Linear(2 * d, d)
        with torch.no_grad():  # start as the mean of the two prototype sets
            eye = torch.eye(d) / 2
            self.mixer.weight.copy_(torch.cat([eye, eye], dim=1))
            self.mixer.bias.zero_()

    def options(self) -> dict[str, Any]:
        """The constructor options (to rebuild the head, or a variant of it)."""
        return {
            "momentum": self.global_prototypes.momentum,
            "use_global": self.use_global,
            "mixer": self.mixer_kind,
            "metric": self.metric,
            "assignment": self.assignment,
        }

    def fc_logits(self, z: Tensor) -> Tensor:
        """The FC head's logits (the FC-oracle surrogate of the MSA protocol)."""
        return self.fc(z)

    def observe(self, z: Tensor, y: Tensor) -> None:
        """Training hook: EMA update of the dataset-level prototypes (eq. 14)."""
        self.global_prototypes.update(z, y)

    @torch.no_grad()
    def adopt_fc(self, linear: nn.Module) -> bool:
        """Copy a trained linear head into the HPM's FC (the plug-in use starts from the
        model's own classifier). Returns False when shapes do not fit."""
        weight = getattr(linear, "weight", None)
        if not isinstance(weight, Tensor) or weight.shape != self.fc.weight.shape:
            return False
        self.fc.weight.copy_(weight)
        bias = getattr(linear, "bias", None)
        if isinstance(bias, Tensor):
            self.fc.bias.copy_(bias)
        else:
            self.fc.bias.zero_()
        return True

    def hybrid_prototypes(self, z: Tensor, soft: bool | None = None) -> Tensor:
        """``C_hybrid`` ``[K, D]`` for the batch ``z`` (eqs. 15-17); ``soft`` overrides the
        head's assignment mode."""
        logits = self.fc(z)
        soft = self.assignment == "soft" if soft is None else soft
        assign = logits.softmax(1) if soft else self.assign(logits)
        c_batch = batch_prototypes(z, assign)
        c_global = self.global_prototypes.value.to(z.dtype)
        if not self.use_global:
            c_global = torch.zeros_like(c_global)
        if self.mixer_kind == "mean":
            return (c_global + c_batch) / 2
        return self.mixer(torch.cat([c_global, c_batch], dim=1))

    def logits_for(self, z: Tensor, soft: bool | None = None) -> Tensor:
        """Eq. 18 (or the inner-product ablation) with the given assignment mode."""
        c = self.hybrid_prototypes(z, soft)
        if self.metric == "dot":
            return z @ c.T
        return neg_l2_logits(z, c)

    def forward(self, z: Tensor) -> Tensor:
        return self.logits_for(z)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return f"in_features={self.in_features}, num_classes={self.num_classes}, {opts}"


class _HeadView(nn.Module):
    """A surrogate head computing another function of an HPM head's parameters."""

    def __init__(self, head: HPMHead) -> None:
        super().__init__()
        self.hpm = head
        self.in_features, self.num_classes = head.in_features, head.num_classes


class FCOracle(_HeadView):
    """Surrogate 1 of the MSA protocol: the HPM head's own FC logits."""

    def forward(self, z: Tensor) -> Tensor:
        return self.hpm.fc_logits(z)


class SoftHybrid(_HeadView):
    """Surrogate 2 of the MSA protocol: the HPM head with ``P_soft`` in the forward pass."""

    def forward(self, z: Tensor) -> Tensor:
        return self.hpm.logits_for(z, soft=True)


def hpm(in_features: int, num_classes: int, **options: Any) -> nn.Module:
    """Factory of the registered ``hpm`` head (options as :class:`HPMHead`)."""
    check_head_sizes("hpm", in_features, num_classes)
    check_head_options("hpm", options, ("momentum", "use_global", "mixer", "metric", "assignment"))
    use_global = options.pop("use_global", True)
    if not isinstance(use_global, bool):
        raise ConfigError(f"head 'hpm' option use_global must be true or false, got {use_global!r}")
    return HPMHead(in_features, num_classes, use_global=use_global, **options)
