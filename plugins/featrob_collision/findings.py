"""Findings of the ``collision`` metric: the layer where the optimal loss rises first.

A pure function of the summary (no model), so a test can feed numbers and read the
sentence; a missing number (None, NaN) gives no finding.
"""

from __future__ import annotations

import math
from typing import Any

from featrob import Finding


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def collision_findings(summary: dict[str, Any]) -> list[Finding]:
    """The layer whose optimal cross-entropy lower bound reaches half of its saturation
    value (log 2) at the smallest eps, i.e. where cross-class collisions get cheapest.

    Args:
        summary: the metric's summary (``layers``, ``LAYER.eps_half_saturation``,
            ``classes``, ``pairs``, ``eps_max``).

    Returns:
        One finding, or none when the summary lacks the layers.
    """
    layers = [name for name in str(summary.get("layers") or "").split(", ") if name]
    if not layers:
        return []
    half = {name: _number(summary.get(f"{name}.eps_half_saturation")) for name in layers}
    reached = {name: eps for name, eps in half.items() if eps is not None}
    classes = summary.get("classes")
    pairs = summary.get("pairs")
    scope = f" for classes {classes}" if classes else ""
    tail = f" ({pairs} pairs)" if isinstance(pairs, int) else ""
    if not reached:
        eps_max = _number(summary.get("eps_max"))
        if eps_max is None:
            return []
        return [
            Finding(
                f"The optimal cross-entropy lower bound{scope} stays below half of log 2 at "
                f"every layer up to L2 eps={eps_max:.3g}{tail}: no cheap collisions found.",
                0.15,
                {"eps_max": eps_max},
                "optimal_cross_entropy",
            )
        ]
    first = min(reached, key=lambda name: (reached[name], layers.index(name)))
    eps = reached[first]
    others = [
        f"{eps_other:.3g} at {'the ' if name in ('input', 'logits') else 'layer '}{name}"
        for name in ("input", "logits")
        if name != first and (eps_other := half.get(name)) is not None
    ]
    against = f", against {' and '.join(others)}" if others else ""
    where = "the input" if first == "input" else f"layer {first}"
    base = half.get("input")
    score = 0.2
    if first != "input" and base:
        score = 0.3 + 0.4 * min(1.0, (1 - eps / base) / 0.5)
    return [
        Finding(
            f"The optimal cross-entropy lower bound{scope} rises first at {where}: it reaches "
            f"half of log 2 at L2 eps={eps:.3g}{against}{tail}.",
            score,
            {"layer": first, "eps_half_saturation": eps, "input": base},
            "optimal_cross_entropy",
        )
    ]
