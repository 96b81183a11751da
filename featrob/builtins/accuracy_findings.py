"""Findings of the accuracy metrics: plain sentences built from their summary and tables.

Pure functions of numbers (no model, no run), so a test can feed numbers and read the
sentence; a missing number (None, NaN) gives no finding.
"""

from __future__ import annotations

import math
from typing import Any

from featrob.results import Finding

#: A class whose clean accuracy is this far below the overall one is worth a finding.
NOTABLE_CLEAN_GAP = 0.1


def number(value: Any) -> float | None:
    """``value`` as a finite float, None when it is missing, NaN, infinite or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _worst_classes(
    rows: list[dict[str, Any]], column: str
) -> tuple[float, list[dict[str, Any]]] | None:
    """The lowest ``column`` over the classes that have samples, and the rows that have it."""
    rated = [r for r in rows if (r.get("n") or 0) > 0 and number(r.get(column)) is not None]
    if len(rated) < 2:
        return None
    low = min(float(r[column]) for r in rated)
    return low, [r for r in rated if float(r[column]) == low]


def _subject(rows: list[dict[str, Any]]) -> str:
    """``Class '8' is`` or ``Classes '1', '5' are``."""
    names = ", ".join(f"'{r['class']}'" for r in rows[:3])
    if len(rows) == 1:
        return f"Class {names} is"
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    return f"Classes {names}{more} are"


def _detail(rows: list[dict[str, Any]]) -> str:
    """`` (n=44, clean 88.6%)`` for one class, `` each`` for several."""
    if len(rows) > 1:
        return " each"
    clean = number(rows[0].get("clean"))
    return f" (n={rows[0]['n']}" + (f", clean {clean:.1%})" if clean is not None else ")")


def robust_accuracy_findings(
    summary: dict[str, Any], attacks: list[dict[str, Any]], per_class: list[dict[str, Any]]
) -> list[Finding]:
    """Robust vs clean accuracy and the attack that broke the most samples; the most
    fragile class(es).

    Args:
        summary: the ``robust_accuracy`` summary (``accuracy``, ``clean_accuracy``, ``eps``,
            ``norm``, ``n``).
        attacks: the ``attacks`` table (``attack``, ``attacked``, ``broken`` per attack, in
            the order they ran).
        per_class: the ``per_class`` table (``class``, ``n``, ``clean``, ``robust``).

    Returns:
        Up to two findings, the headline first.
    """
    robust, clean = number(summary.get("accuracy")), number(summary.get("clean_accuracy"))
    if robust is None or clean is None:
        return []
    eps = number(summary.get("eps"))
    threat = f" under {summary.get('norm')} eps={eps:g}" if eps is not None else ""
    text = f"Robust accuracy is at most {robust:.1%}{threat}, against {clean:.1%} clean"
    values: dict[str, Any] = {"robust_accuracy": robust, "clean_accuracy": clean, "eps": eps}
    broken = [(str(r.get("attack")), int(r["broken"])) for r in attacks if r.get("broken")]
    correct = attacks[0].get("attacked") if attacks else None
    if broken and isinstance(correct, int) and correct > 0:
        attack, most = max(broken, key=lambda ab: ab[1])  # the earliest on ties
        total = sum(b for _, b in broken)
        if len(broken) == 1:
            text += f"; {attack} broke {most} of the {correct} correctly classified samples"
        else:
            text += (
                f"; {attack} broke the most, {most} of the {correct} correctly classified "
                f"samples; the {len(attacks)} attacks together broke {total}"
            )
        values.update({"top_attack": attack, "top_attack_broken": most, "correct": correct})
    found = [Finding(text + ".", 1.0, values, figure="after_each_attack")]
    worst = _worst_classes(per_class, "robust")
    if worst is not None and worst[0] < robust:
        low, rows = worst
        row = rows[0]
        found.append(
            Finding(
                f"{_subject(rows)} the most fragile: robust accuracy {low:.1%}{_detail(rows)}, "
                f"against {robust:.1%} over all classes.",
                0.4 + 0.5 * min(1.0, (robust - low) / 0.5),
                {"class": str(row["class"]), "robust_accuracy": low, "overall": robust},
            )
        )
    return found


def clean_accuracy_findings(
    summary: dict[str, Any], per_class: list[dict[str, Any]]
) -> list[Finding]:
    """The hardest class on clean inputs, only when it lags the overall accuracy by at least
    :data:`NOTABLE_CLEAN_GAP`.

    Args:
        summary: the ``clean_accuracy`` summary (``accuracy``, ``n``).
        per_class: its ``per_class`` table (``class``, ``n``, ``accuracy``).

    Returns:
        No finding or one.
    """
    overall = number(summary.get("accuracy"))
    worst = _worst_classes(per_class, "accuracy")
    if overall is None or worst is None or overall - worst[0] < NOTABLE_CLEAN_GAP:
        return []
    low, rows = worst
    return [
        Finding(
            f"{_subject(rows)} the hardest on clean inputs: accuracy {low:.1%}{_detail(rows)}, "
            f"against {overall:.1%} over all classes.",
            0.2 + 0.4 * min(1.0, (overall - low) / 0.5),
            {"class": str(rows[0]["class"]), "accuracy": low, "overall": overall},
        )
    ]
