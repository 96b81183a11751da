"""Findings of the ``scale`` metric: how much more fragile low-scale samples are.

Pure functions of the summary and tables (no model), so a test can feed numbers and read
the sentence; a missing number (None, NaN) gives no finding.
"""

from __future__ import annotations

import math
from typing import Any

from featrob import Finding
from featrob_scale.analysis import HIGH_FRACTION, LOW_FRACTION

LOW_RANGE = f"samples in the lowest {LOW_FRACTION:.0%} of their class's feature-scale range"
HIGH_RANGE = f"those in the highest {1 - HIGH_FRACTION:.0%}"
LOW_QUANTILE = f"each class's {LOW_FRACTION:.0%} lowest-scale samples"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def perturbation_labels(summary: dict[str, Any]) -> list[str]:
    """The perturbations of the run's model at the full resolution (no ``merged.`` or
    ``compare.`` keys)."""
    return [
        key[: -len(".error_rate")]
        for key in summary
        if key.endswith(".error_rate") and not key.startswith(("merged.", "compare."))
    ]


def _comparison(summary: dict[str, Any], label: str) -> tuple[str, float, float] | None:
    """``(kind, low, reference)``: the low-scale error rate and what it is compared with."""
    low, high = summary.get(f"{label}.low_error_rate"), summary.get(f"{label}.high_error_rate")
    if _number(low) is not None and _number(high) is not None:
        return "range", float(low), float(high)
    low, overall = (
        summary.get(f"{label}.low_quantile_error_rate"),
        summary.get(f"{label}.error_rate"),
    )
    if _number(low) is not None and _number(overall) is not None:
        return "quantile", float(low), float(overall)
    return None


def _figure(
    label: str, classes: list[dict[str, Any]], figures: list[str]
) -> tuple[str | None, str | None]:
    """The class whose low-scale samples are most fragile next to its high-scale ones, and
    its figure key (None when no class has both)."""
    gaps = [
        (float(r["low_error_rate"]) - float(r["high_error_rate"]), str(r["class"]))
        for r in classes
        if _number(r.get("low_error_rate")) is not None
        and _number(r.get("high_error_rate")) is not None
    ]
    if not gaps:
        return None, None
    name = max(gaps)[1]
    key = f"{label}.{name}"
    return name, key if key in figures else None


def scale_findings(
    summary: dict[str, Any],
    tables: dict[str, list[dict[str, Any]]] | None = None,
    figures: list[str] | None = None,
) -> list[Finding]:
    """Low-scale vs high-scale error under the perturbation where the gap is largest, and
    the per-class trend of error against scale under it.

    Args:
        summary: the metric's summary (``LABEL.low_error_rate``, ``LABEL.high_error_rate``,
            ``LABEL.low_quantile_error_rate``, ``LABEL.error_rate``, ``LABEL.judged_classes``,
            ``LABEL.separated_classes``, ``LABEL.decreasing_error_classes``,
            ``LABEL.classes_with_trend``).
        tables: its tables (``LABEL.classes`` picks the class whose figure shows the gap).
        figures: its figure keys.

    Returns:
        Up to two findings.
    """
    compared = {
        label: c for label in perturbation_labels(summary) if (c := _comparison(summary, label))
    }
    if not compared:
        return []
    label = max(compared, key=lambda k: compared[k][1] - compared[k][2])
    kind, low, ref = compared[label]
    low_desc, ref_desc = (
        (LOW_RANGE, HIGH_RANGE) if kind == "range" else (LOW_QUANTILE, "all samples")
    )
    values: dict[str, Any] = {"perturbation": label, "low_error_rate": low, "reference": ref}
    if low > ref:
        times = f", {low / ref:.1f}x as often" if ref > 0 else ""
        text = (
            f"Under {label}, {low_desc} are misclassified at {low:.1%}, against {ref:.1%} for "
            f"{ref_desc}{times}"
        )
        score = 0.3 + 0.5 * min(1.0, (low - ref) / 0.3)
    else:
        text = (
            f"Under {label}, {low_desc} are not more fragile: error {low:.1%}, against "
            f"{ref:.1%} for {ref_desc}"
        )
        score = 0.15
    judged = summary.get(f"{label}.judged_classes")
    separated = summary.get(f"{label}.separated_classes")
    if kind == "quantile":
        text += " (pooled over classes, not tested for significance)"
    elif isinstance(judged, int) and judged > 0 and isinstance(separated, int):
        text += (
            f"; their bootstrap intervals separate in {separated} of the {judged} classes "
            "with enough samples"
        )
    else:
        text += " (too few samples per class for a significance test)"
    name, figure = _figure(label, (tables or {}).get(f"{label}.classes", []), figures or [])
    if name is not None and low > ref:
        text += f"; class '{name}' shows it most"
    found = [Finding(text + ".", score, values, figure)]
    falls, judged = (
        summary.get(f"{label}.decreasing_error_classes"),
        summary.get(f"{label}.classes_with_trend"),
    )
    if isinstance(falls, int) and isinstance(judged, int) and judged > 0:
        found.append(
            Finding(
                f"Under {label}, the error rate falls as the feature scale grows (Spearman "
                f"over sections) in {falls} of the {judged} classes with enough sections.",
                0.2 + 0.4 * falls / judged,
                {"perturbation": label, "classes": falls, "judged_classes": judged},
            )
        )
    return found
