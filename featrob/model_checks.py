"""Checks of a run's model before the metrics trust it.

A model whose weights featrob did not train (``--weights``, a zoo's pretrained weights)
can be fed the wrong inputs without any error: another normalisation, another class order,
weights of another data set. Every metric is then computed on the wrong function. Clean
accuracy near chance on the analysed samples is the cheap symptom; the run says so in one
line (terminal, results.json, reports).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featrob.context import RunContext
    from featrob.models.normalization import Normalization


def chance_threshold(num_classes: int, n: int) -> float:
    """Highest clean accuracy still called "near chance" for ``n`` samples of ``num_classes``.

    Chance is ``p = 1/K``; the threshold is the larger of ``1.5 p`` and ``p`` plus two binomial
    standard deviations, so a model at chance is not missed on a small sample and a merely
    weak model on a large one is not flagged.
    """
    p = 1.0 / max(num_classes, 2)
    return max(1.5 * p, p + 2.0 * math.sqrt(p * (1.0 - p) / max(n, 1)))


def near_chance_warning(
    accuracy: float, n: int, num_classes: int, normalization: Normalization
) -> str | None:
    """The warning line for a loaded model at ``accuracy`` on ``n`` samples, or None."""
    if n == 0 or accuracy > chance_threshold(num_classes, n):
        return None
    return (
        f"clean accuracy {accuracy:.2f} on the {n} analysed samples is near chance "
        f"({1 / num_classes:.2f}) or below for a model featrob did not train: check its input "
        f"normalisation (it got {normalization.describe()}: {normalization.source}; "
        "change it with --normalize), the class order of the data set, and that the weights "
        "belong to this architecture and data set"
    )


def loaded_model_warnings(ctx: RunContext) -> list[str]:
    """Warnings about a run's model whose weights featrob did not train (clean accuracy near
    chance). The clean logits go to the feature store, where the metrics find them."""
    clean = ctx.features("logits")
    n = len(clean.labels)
    accuracy = float(clean.correct.float().mean()) if n else 0.0
    line = near_chance_warning(accuracy, n, ctx.num_classes, ctx.model.normalization)
    return [line] if line else []
