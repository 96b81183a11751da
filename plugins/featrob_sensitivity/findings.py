"""Findings of the ``sensitivity`` metric: how concentrated feature sensitivity is, and the
robust accuracy measured beside it.

A pure function of per-feature numbers (no model), so a test can feed arrays and read the
sentence; a missing number (None, NaN) gives no finding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from featrob import Finding
from featrob_sensitivity.report import eps_label

if TYPE_CHECKING:
    from featrob_sensitivity.metric import ModelSensitivity


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return None
    return float(value) if math.isfinite(value) else None


def carrying_half(values: np.ndarray) -> int | None:
    """How many of the most sensitive features carry half of the summed sensitivity (None
    when the sum is not positive and finite)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    total = float(values.sum()) if len(values) else 0.0
    if not math.isfinite(total) or total <= 0:
        return None
    cumulative = np.cumsum(np.sort(values)[::-1])
    return int(np.searchsorted(cumulative, total / 2, side="left")) + 1


def sensitivity_findings(
    eps: float,
    values: np.ndarray,
    *,
    layer: str = "features",
    robust_accuracy: float | None = None,
    bound: float | None = None,
    samples: int | None = None,
    figure: str | None = None,
    accuracy_figure: str | None = None,
) -> list[Finding]:
    """The share of features carrying half of the sensitivity (and the features that do not
    move), then the PGD robust accuracy at the same eps with Theorem 3's bound.

    Args:
        eps: the Linf radius the sensitivities were measured at.
        values: ``[K]`` per-feature sensitivities (normalised by the head when possible).
        layer: the analysed layer.
        robust_accuracy: PGD robust accuracy of the analysed samples at ``eps`` (None: off).
        bound: Theorem 3's best lower bound on it (None, or <= 0: vacuous, not quoted).
        samples: number of analysed samples.
        figure: key of the histogram of ``values``.
        accuracy_figure: key of the robust-accuracy figure.

    Returns:
        Up to two findings.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    found = []
    k = carrying_half(values) if np.isfinite(values).all() else None
    if k is not None:
        n = len(values)
        still = int((values <= 0).sum())
        text = (
            f"Half of the total feature sensitivity at layer {layer} (Linf eps={eps:.3g}) sits "
            f"in the {k} most sensitive of the {n} analysed features ({k / n:.0%})"
        )
        if still:
            text += f"; {still} features do not move at all"
        found.append(
            Finding(
                text + ".",
                0.3 + 0.5 * max(0.0, 1 - 2 * k / n),
                {"eps": eps, "features": k, "of": n, "share": k / n, "still": still},
                figure,
            )
        )
    acc = _number(robust_accuracy)
    if acc is not None:
        on = f" of the {samples} analysed samples" if samples else ""
        text = f"PGD robust accuracy{on} at Linf eps={eps:.3g} is {acc:.1%}"
        b = _number(bound)
        if b is not None and b > 0:
            text += f"; Theorem 3 bounds it below by {b:.1%} from margins and sensitivities"
        found.append(
            Finding(
                text + ".", 0.2, {"eps": eps, "robust_accuracy": acc, "bound": b}, accuracy_figure
            )
        )
    return found


def model_findings(model: ModelSensitivity, summary: dict[str, Any]) -> list[Finding]:
    """:func:`sensitivity_findings` of one measured model at its largest eps (``summary``:
    the metric's, for Theorem 3's bound)."""
    if not model.extremes:
        return []
    ext = model.extremes[-1]
    values = ext.sensitivity if model.scales is None else ext.sensitivity * model.scales
    key = eps_label(ext.eps)
    return sensitivity_findings(
        ext.eps,
        values,
        layer=model.layer,
        robust_accuracy=model.robust_accuracy[-1] if model.robust_accuracy else None,
        bound=summary.get(f"{key}.bound_best"),
        samples=len(model.margin),
        figure=f"histogram_{key}",
        accuracy_figure="robust_accuracy",
    )
