"""Findings of the ``compression`` metric: how far the model is from the optimal classifier's
tolerance, and how much of the separating direction its gradients see.

A pure function of the summary (no model), so a test can feed numbers and read the
sentence; a missing number (None, NaN) gives no finding.
"""

from __future__ import annotations

import math
from typing import Any

from featrob import Finding

#: Correlations with a larger p-value are reported as no significant link.
SIGNIFICANCE = 0.05


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def compression_findings(summary: dict[str, Any]) -> list[Finding]:
    """The share of pairs broken below ``d_opt`` (with the median fragility), then the median
    local compression ratio against a random direction's and its link to fragility.

    Args:
        summary: the metric's summary (``analysed_pairs``, ``fragile_share``,
            ``fragility.median``, ``local_ratio.median``, ``gaussian_prediction``,
            ``input_dim``, ``spearman.local_ratio~fragility`` and its ``.p``).

    Returns:
        Up to two findings.
    """
    found = []
    pairs = summary.get("analysed_pairs")
    share, median = _number(summary.get("fragile_share")), _number(summary.get("fragility.median"))
    if isinstance(pairs, int) and pairs > 0 and share is not None and median is not None:
        found.append(
            Finding(
                f"{share:.1%} of the {pairs} analysed pairs are broken by a perturbation "
                "shorter than the optimal classifier tolerates (d_opt, half the distance to "
                f"the nearest other-class sample); the median delta_min / d_opt is {median:.2f}.",
                0.4 + 0.5 * share,
                {"fragile_share": share, "fragility_median": median, "pairs": pairs},
                "hist_fragility",
            )
        )
    ratio = _number(summary.get("local_ratio.median"))
    if ratio is not None:
        text = (
            f"The logit gradients see a median {ratio:.0%} of the direction to the nearest "
            "other-class sample (local compression ratio ||P(x' - x)|| / ||x' - x||"
        )
        random = _number(summary.get("gaussian_prediction"))
        dim = summary.get("input_dim")
        if random is not None:
            text += f"; a random direction in {dim} dimensions: {random:.0%}"
        text += ")"
        rho = _number(summary.get("spearman.local_ratio~fragility"))
        p = _number(summary.get("spearman.local_ratio~fragility.p"))
        if rho is not None and p is not None:
            if p < SIGNIFICANCE and rho > 0:
                text += f"; more compressed pairs are more fragile (Spearman rho {rho:.2f})"
            else:
                text += f"; no significant link to fragility (Spearman rho {rho:.2f}, p {p:.2g})"
        found.append(
            Finding(
                text + ".",
                0.35,
                {"local_ratio_median": ratio, "random_direction": random, "spearman": rho},
                "ratio_vs_fragility",
            )
        )
    return found
