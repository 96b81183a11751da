"""The largest and smallest value each feature takes over an Linf ball (paper 004, Sec. 4.4).

For a feature extractor ``f`` (``[B, *shape] -> [B, D]``), features ``j`` and samples ``x``,
PGD maximises ``f_j(x + delta)`` and, separately, minimises it over ``||delta||_inf <= eps``
inside the [0, 1] box. The sensitivity of ``f_j`` (Definition 2) is then the mean over samples
of ``max(|f_j(x_max) - f_j(x)|, |f_j(x_min) - f_j(x)|)``.

Batching: every (direction, feature, sample) triple is one PGD "sample". The input block is
replicated ``2 K`` times (``K`` features, two directions) and the per-replica objective is
``sign * out[:, j]``; samples are independent in eval mode, so one forward/backward pass of
the replicated batch gives every replica's gradient, exactly what a separate PGD per feature
would compute. Each replica's random start comes from its sample's seed (the same start for
every feature and direction of a sample), so the batched run and a per-feature loop
(:func:`per_feature_extremes`) start alike and agree to float tolerance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from featrob import Attack

Forward = Callable[[Tensor], Tensor]


def _objective(out: Tensor, target: Tensor) -> Tensor:
    """``sign * out[feature]`` per replica; ``target[:, 0]`` the feature, ``[:, 1]`` the sign."""
    value = out.gather(1, target[:, :1]).squeeze(1)
    return value * target[:, 1].to(value.dtype)


def feature_extremes(
    forward: Forward, x: Tensor, features: Tensor, attack: Attack, seeds: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Clean, highest and lowest value of each feature in ``features`` for each sample.

    Args:
        forward: the extractor, ``[B, *shape] -> [B, D]`` (eval mode: samples independent).
        x: ``[B, *shape]`` inputs in [0, 1].
        features: ``[K]`` feature indices.
        attack: a PGD-type :class:`~featrob.Attack` (its eps, norm, steps).
        seeds: ``[B]`` per-sample seeds of the random starts.

    Returns:
        ``clean``, ``high``, ``low``, each ``[B, K]``: ``f_j(x)``, the largest and the
        smallest ``f_j`` found in the ball.
    """
    b, k = len(x), len(features)
    features = features.to(x.device)
    with torch.no_grad():
        clean = forward(x)[:, features]
    reps = 2 * k
    xr = x.repeat(reps, *([1] * (x.dim() - 1)))
    feat = features.repeat_interleave(b).repeat(2)
    sign = torch.ones(2 * k * b, dtype=torch.long, device=x.device)
    sign[k * b :] = -1
    target = torch.stack([feat, sign], dim=1)
    adv = attack.perturb(forward, xr, target, loss=_objective, sample_seeds=seeds.repeat(reps))
    with torch.no_grad():
        reached = forward(adv).gather(1, feat[:, None]).squeeze(1).view(2, k, b)
    return clean, reached[0].T, reached[1].T


def per_feature_extremes(
    forward: Forward, x: Tensor, features: Tensor, attack: Attack, seeds: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`feature_extremes` the straightforward way: one PGD run per feature and
    direction on the sample batch (the reference of the benchmark and the tests)."""
    with torch.no_grad():
        clean = forward(x)[:, features]
    highs, lows = [], []
    for j in features.tolist():
        for sign, out in ((1, highs), (-1, lows)):
            target = torch.tensor([[j, sign]], device=x.device).expand(len(x), 2)
            adv = attack.perturb(forward, x, target, loss=_objective, sample_seeds=seeds)
            with torch.no_grad():
                out.append(forward(adv)[:, j])
    return clean, torch.stack(highs, 1), torch.stack(lows, 1)


def largest_change(clean: Tensor, high: Tensor, low: Tensor) -> Tensor:
    """``max(|high - clean|, |low - clean|)`` elementwise (Definition 2's inner supremum)."""
    return torch.maximum((high - clean).abs(), (low - clean).abs())
