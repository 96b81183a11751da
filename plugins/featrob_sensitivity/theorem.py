"""Normalising sensitivities by the linear head, and Theorem 3's robust-accuracy bound.

**Normalisation.** The paper (Sec. 3.1) writes the classifier as ``sgn(alpha . f(x) + b)``
and assumes ``||alpha||_inf = 1``, "since we can control the scale of each feature by
multiplying it by some constant"; Sec. 4.4 then "normalises the sensitivity of features with
the weight of the linear layer" without a formula. We rescale feature ``j`` by

    s_j = max_c W[c, j] - min_c W[c, j]        (the range of the head's column j)

(``g_j = s_j f_j``, head weights ``W[:, j] / s_j``): the logits are unchanged, and every
pairwise logit difference ``z_y - z_c = sum_j (W[y, j] - W[c, j]) f_j + ...`` has weights of
magnitude at most 1 on the rescaled features, i.e. each one-vs-one head is in the Linf unit
ball. For two classes this is ``s_j = |alpha_j|`` with ``alpha = W[1] - W[0]``, the paper's
binary setting. The normalised sensitivity of feature ``j`` is ``s_j`` times its raw one.

**Theorem 3** (derived here for K classes; the paper's proof applies Markov's inequality per
feature and loses the union bound over features). Let ``margin(x) = z_y - max_{c != y} z_c``
and ``S(x) = sum_j s_j sup_delta |f_j(x + delta) - f_j(x)|``. Every pairwise logit
difference moves by at most ``S(x)``, so a sample with ``margin(x) >= t`` and ``S(x) < t``
stays correct. Markov's inequality on ``S`` gives, for any ``t > 0``,

    robust accuracy >= P[margin >= t] - E[S] / t,    E[S] = sum_j eps_j

with ``eps_j`` the normalised sensitivities. At ``t = 1`` with every ``eps_j <= eps`` this is
the paper's ``1 - gamma - m eps``. We report the paper's form (``m max_j eps_j``), the
sum form (tighter, same proof) and the best ``t`` over the observed margins. The bound is
*vacuous* when it is ``<= 0``. It is only as good as the measured sensitivities: PGD finds
lower estimates of each supremum, so the bound is an estimate, not a certificate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def head_weight(head: nn.Module) -> np.ndarray | None:
    """``W`` ``[K, D]`` of a linear head (``nn.Linear``), else None (no normalisation)."""
    if isinstance(head, nn.Linear):
        return head.weight.detach().double().cpu().numpy()
    return None


def feature_scales(weight: np.ndarray) -> np.ndarray:
    """``s_j``: the range of each head column (see the module docstring)."""
    return weight.max(axis=0) - weight.min(axis=0)


def margins(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """``z_y - max_{c != y} z_c`` per sample (negative where misclassified)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    own = z[np.arange(len(z)), y]
    other = z.copy()
    other[np.arange(len(z)), y] = -np.inf
    return own - other.max(axis=1)


def robust_accuracy_bound(margin: np.ndarray, sensitivities: np.ndarray) -> dict[str, Any]:
    """Theorem 3's lower bounds on robust accuracy from margins and normalised sensitivities.

    Args:
        margin: ``[N]`` logit margins of the evaluated samples.
        sensitivities: ``[m]`` normalised sensitivities ``eps_j`` of all ``m`` features.

    Returns:
        ``margin_share`` (``P[margin >= 1]``, the theorem's ``1 - gamma``), ``paper``
        (``1 - gamma - m max_j eps_j``), ``sum`` (``1 - gamma - sum_j eps_j``), ``best``
        with ``best_t`` (the sum form at the best threshold ``t``), and ``vacuous`` (the best
        bound is ``<= 0``).
    """
    margin = np.asarray(margin, dtype=np.float64)
    eps = np.asarray(sensitivities, dtype=np.float64)
    total = float(eps.sum())
    share = float((margin >= 1).mean()) if len(margin) else 0.0
    best, best_t = share - total, 1.0
    candidates = np.unique(margin[margin > 0])
    if len(candidates) and total > 0:
        # P[margin >= t] is a step function; the bound peaks at a sample's margin.
        tail = 1.0 - np.searchsorted(np.sort(margin), candidates, side="left") / len(margin)
        values = tail - total / candidates
        i = int(np.argmax(values))
        if values[i] > best:
            best, best_t = float(values[i]), float(candidates[i])
    return {
        "margin_share": share,
        "paper": share - len(eps) * float(eps.max(initial=0.0)),
        "sum": share - total,
        "best": best,
        "best_t": best_t,
        "vacuous": best <= 0,
    }


def per_sample_estimate(margin: np.ndarray, scaled_change: np.ndarray) -> float:
    """Share of samples with ``S(x) < margin(x)``, ``S`` from the measured changes
    (``[N, m]``, normalised). Not a bound (PGD underestimates each supremum, and the sum
    of per-feature suprema overestimates the joint one); it shows how much Markov's
    inequality costs the theorem."""
    s = np.asarray(scaled_change, dtype=np.float64).sum(axis=1)
    return float((s < np.asarray(margin)).mean()) if len(s) else 0.0
