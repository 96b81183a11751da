"""Per-sample objectives that attacks maximise, and target-class selection.

The DLR losses are those of Croce & Hein (2020), "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks" (AutoAttack), Sec. 4:

* untargeted: ``DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``
* targeted:   ``DLR_T(z, y, t) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``

with ``z_pi1 >= z_pi2 >= ...`` the sorted logits. Both are invariant to shifting and
rescaling the logits, which is why they survive models whose cross-entropy saturates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from featrob.attacks.base import cross_entropy, margin_loss, misclassified

__all__ = [
    "cross_entropy",
    "dlr_loss",
    "dlr_targeted_loss",
    "margin_loss",
    "misclassified",
    "target_group",
    "top_targets",
]

_TINY = 1e-12


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Untargeted difference-of-logits-ratio loss (needs at least 3 classes)."""
    top = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    best_other = margin_loss(logits, y) + true
    return -(true - best_other) / (top[:, 0] - top[:, 2] + _TINY)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR loss towards ``target`` (needs at least 4 classes)."""
    top = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    tgt = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - tgt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY)


def top_targets(logits: Tensor, k: int) -> Tensor:
    """``[B, k]`` target classes: the k highest-scoring classes after the top one, in order
    (AutoAttack's APGD-T and FAB-T attack them one after the other)."""
    return logits.argsort(dim=1, descending=True)[:, 1 : k + 1]


def target_group(todo: Tensor, first: int, k: int, max_rows: int) -> tuple[int, Tensor, Tensor]:
    """The next group of targets APGD-T and FAB-T run at once on the samples ``todo``.

    Targets ``first, first + 1, ...`` (at most up to ``k``) join the group while the samples
    times the targets fit in ``max_rows`` rows (always at least one target).

    Returns:
        ``(group, rows, target_of)``: how many targets, and per (sample, target) row,
        target-major (``todo`` under target ``first``, then under ``first + 1``, ...), the
        sample's position and the target's index into :func:`top_targets`'s columns.
    """
    group = max(1, min(k - first, max_rows // len(todo)))
    rows = todo.repeat(group)
    target_of = torch.arange(first, first + group, device=todo.device)
    return group, rows, target_of.repeat_interleave(len(todo))
