"""The L2 prototype head and the Hybrid Prototype Mixing (HPM) head (Wang, paper 002, Sec. 3.6).

``L2Head``: logits ``-||z - c_k||`` to one prototype per class. Prototypes are learned
parameters by default: they train with the backbone under the same loss as an FC head, so
the two heads differ only in the decision form (Sec. 3.2's comparison); ``prototypes="ema"``
keeps EMA class means instead (updated by :meth:`L2Head.observe`).

``HPMHead`` (eqs. 14-18):

* ``C_global`` ``[K, D]``: EMA of the ground-truth class means of each training batch,
  momentum ``lambda`` (0.98 for at most 10 classes, 0.995 for more, as the paper's
  supplement); a class's first mean initialises its row (an EMA from zero would drag the
  prototypes to the origin for ~1 / (1 - lambda) batches; the paper does not say);
* ``C_batch`` ``[K, D]`` = ``P_ste^T Z / (column sums of P_ste + eps)`` with
  ``P_ste = P_soft + stop_grad(P_hard - P_soft)`` from the FC logits (eqs. 15-16): the
  forward uses the hard arg-max assignment, the backward the softmax's gradient;
* ``C_hybrid = [C_global, C_batch] W_m + b_m`` (eq. 17, ``W_m`` is ``mixer.weight.T``,
  ``[2D, D]``), initialised to the mean of the two (``W_m = [I/2; I/2]``, ``b_m = 0``),
  which is also the "without mixer" ablation;
* logits ``-||z_i - C_hybrid_j||`` (eq. 18).

``C_batch`` depends on the whole batch an input is evaluated in: the same image can get
different logits in batches of 1, 16 or 64. Evaluations must report the batch size.
Ablations (Sec. 4.4): ``use_global=False`` (batch prototypes only), ``mixer="mean"``,
``metric="dot"`` (inner products instead of ``-L2``). ``assignment="soft"`` gives the
soft-hybrid surrogate of the MSA protocol (``P_soft`` in the forward pass too).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Added to squared distances before the square root, so gradients stay finite at 0.
_TINY = 1e-12


def ste_assignment(logits: Tensor) -> Tensor:
    """Eq. 15: one-hot arg-max forward, softmax gradient backward."""
    soft = logits.softmax(dim=1)
    hard = nn.functional.one_hot(logits.argmax(1), logits.shape[1]).to(soft.dtype)
    return soft + (hard - soft).detach()


def batch_prototypes(z: Tensor, assignment: Tensor, eps: float = 1e-6) -> Tensor:
    """Eq. 16: ``assignment^T z / (column sums + eps)`` (``[K, D]``; rows of classes without
    any assigned sample are ~0)."""
    return (assignment.T @ z) / (assignment.sum(0)[:, None] + eps)


def neg_l2_logits(z: Tensor, prototypes: Tensor) -> Tensor:
    """``-||z_i - c_j||`` ``[B, K]`` with finite gradients where ``z_i = c_j``."""
    sq = (z * z).sum(1, keepdim=True) - 2 * z @ prototypes.T + (prototypes * prototypes).sum(1)
    return -(sq.clamp(min=0) + _TINY).sqrt()


def default_momentum(num_classes: int) -> float:
    """The paper's EMA momentum: 0.98 for at most 10 classes, 0.995 for more."""
    return 0.98 if num_classes <= 10 else 0.995


class _EMAPrototypes(nn.Module):
    """EMA class means ``[K, D]`` of ground-truth batch centroids (eq. 14)."""

    def __init__(self, num_classes: int, dim: int, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("value", torch.zeros(num_classes, dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, z: Tensor, y: Tensor) -> None:
        """``C <- lambda C + (1 - lambda) C_gt_batch`` for the classes in the batch."""
        k = self.value.shape[0]
        onehot = nn.functional.one_hot(y.long(), k).to(z.dtype)
        counts = onehot.sum(0)
        present = counts > 0
        means = (onehot.T @ z.detach()) / counts.clamp(min=1)[:, None]
        fresh = present & ~self.seen
        old = present & self.seen
        self.value[fresh] = means[fresh].to(self.value.dtype)
        lam = self.momentum
        self.value[old] = lam * self.value[old] + (1 - lam) * means[old].to(self.value.dtype)
        self.seen |= present


class L2Head(nn.Module):
    """Logits ``-||z - c_k||`` (learned prototypes, or EMA class means)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        prototypes: str = "learned",
        momentum: float | None = None,
    ) -> None:
        super().__init__()
        if prototypes not in ("learned", "ema"):
            raise ValueError(f"prototypes must be 'learned' or 'ema', got {prototypes!r}")
        self.mode = prototypes
        if prototypes == "learned":
            self.prototypes = nn.Parameter(torch.randn(num_classes, in_features) * 0.1)
        else:
            self.ema = _EMAPrototypes(
                num_classes, in_features, momentum or default_momentum(num_classes)
            )

    def centers(self) -> Tensor:
        """The current prototypes ``[K, D]``."""
        return self.prototypes if self.mode == "learned" else self.ema.value

    def observe(self, z: Tensor, y: Tensor) -> None:
        """Training hook: update EMA prototypes from a batch (no-op for learned ones)."""
        if self.mode == "ema":
            self.ema.update(z, y)

    def forward(self, z: Tensor) -> Tensor:
        return neg_l2_logits(z, self.centers())


class HPMHead(nn.Module):
    """Hybrid Prototype Mixing head (eqs. 14-18); see the module docstring."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        momentum: float | None = None,
        use_global: bool = True,
        mixer: str = "linear",
        metric: str = "l2",
        assignment: str = "ste",
    ) -> None:
        super().__init__()
        if mixer not in ("linear", "mean"):
            raise ValueError(f"mixer must be 'linear' or 'mean', got {mixer!r}")
        if metric not in ("l2", "dot"):
            raise ValueError(f"metric must be 'l2' or 'dot', got {metric!r}")
        if assignment not in ("ste", "soft"):
            raise ValueError(f"assignment must be 'ste' or 'soft', got {assignment!r}")
        d = in_features
        self.fc = nn.Linear(d, num_classes)
        self.global_prototypes = _EMAPrototypes(
            num_classes, d, momentum or default_momentum(num_classes)
        )
        self.use_global, self.mixer_kind, self.metric = use_global, mixer, metric
        self.assignment = assignment
        self.mixer = nn.Linear(2 * d, d)
        with torch.no_grad():  # start as the mean of the two prototype sets
            eye = torch.eye(d) / 2
            self.mixer.weight.copy_(torch.cat([eye, eye], dim=1))
            self.mixer.bias.zero_()

    def fc_logits(self, z: Tensor) -> Tensor:
        """The FC head's logits (the FC-oracle surrogate of the MSA protocol)."""
        return self.fc(z)

    def observe(self, z: Tensor, y: Tensor) -> None:
        """Training hook: EMA update of the dataset-level prototypes (eq. 14)."""
        self.global_prototypes.update(z, y)

    def hybrid_prototypes(self, z: Tensor) -> Tensor:
        """``C_hybrid`` ``[K, D]`` for the batch ``z`` (eqs. 15-17)."""
        logits = self.fc(z)
        assign = ste_assignment(logits) if self.assignment == "ste" else logits.softmax(1)
        c_batch = batch_prototypes(z, assign)
        c_global = self.global_prototypes.value.to(z.dtype)
        if not self.use_global:
            c_global = torch.zeros_like(c_global)
        if self.mixer_kind == "mean":
            return (c_global + c_batch) / 2
        return self.mixer(torch.cat([c_global, c_batch], dim=1))

    def forward(self, z: Tensor) -> Tensor:
        c = self.hybrid_prototypes(z)
        if self.metric == "dot":
            return z @ c.T
        return neg_l2_logits(z, c)
