"""Clean and robust accuracy, overall and per class."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from featrob.context import RunContext
from featrob.metrics import Metric
from featrob.results import Figure, MetricResult


def per_class_rows(ctx: RunContext, columns: dict[str, Tensor]) -> list[dict[str, Any]]:
    """One row per class: sample count and the mean of each boolean column."""
    rows = []
    for k, name in enumerate(ctx.class_names):
        mask = ctx.labels == k
        n = int(mask.sum())
        row: dict[str, Any] = {"class": name, "n": n}
        for col, values in columns.items():
            row[col] = float(values[mask].double().mean()) if n else None
        rows.append(row)
    return rows


class CleanAccuracy(Metric):
    """Accuracy on unperturbed inputs, overall and per class."""

    name: ClassVar[str] = "clean_accuracy"
    description: ClassVar[str] = "accuracy on clean inputs, overall and per class"

    def compute(self, ctx: RunContext) -> MetricResult:
        """Read the logits (from the store when present) and count."""
        clean = ctx.features("logits")
        correct = clean.correct
        return MetricResult(
            summary={"accuracy": float(correct.double().mean()), "n": len(correct)},
            tables={"per_class": per_class_rows(ctx, {"accuracy": correct})},
            arrays={
                "correct": correct.numpy(),
                "predictions": clean.predictions.numpy(),
                "indices": ctx.indices.numpy(),
            },
        )


class RobustAccuracy(Metric):
    """Robust accuracy under the run's attacks, evaluated the AutoAttack way.

    Attacks (``--attack``, default the ``standard`` preset: APGD-CE, APGD-T, FAB-T, Square)
    run in order, each only on the samples still robust; a sample is robust only if it is
    classified correctly clean and no attack broke it. The result keeps, per sample, which
    attack broke it, the lowest margin reached and that point's perturbation norm, and the
    gradient-masking checks' warnings.
    """

    name: ClassVar[str] = "robust_accuracy"
    description: ClassVar[str] = "AutoAttack-style robust accuracy with a per-sample worst case"

    def compute(self, ctx: RunContext) -> MetricResult:
        """Evaluate (reusing stored attack records) and report."""
        ev = ctx.evaluate()
        summary: dict[str, Any] = {
            "accuracy": ev.robust_accuracy,
            "clean_accuracy": ev.clean_accuracy,
            "eps": ev.eps,
            "norm": ev.norm,
            "n": len(ev.robust),
        }
        for step in ev.steps:
            summary[f"{step.label}.robust_after"] = step.robust_after
        steps = [
            {
                "attack": s.label,
                "attacked": s.attacked,
                "broken": s.broken,
                "robust_after": s.robust_after,
                "seconds": round(s.seconds, 3),
                "from_store": s.from_store,
                "params": s.spec["attack"]["params"],
            }
            for s in ev.steps
        ]
        figure = Figure(
            kind="bar",
            title=f"Robust accuracy after each attack ({ev.norm}, eps={ev.eps:g})",
            xlabel="attack (cumulative)",
            ylabel="accuracy",
            series=[
                {
                    "label": "robust accuracy",
                    "x": ["clean"] + [s.label for s in ev.steps],
                    "y": [ev.clean_accuracy] + [s.robust_after for s in ev.steps],
                }
            ],
        )
        return MetricResult(
            summary=summary,
            tables={
                "attacks": steps,
                "per_class": per_class_rows(ctx, {"clean": ev.clean_correct, "robust": ev.robust}),
            },
            arrays={
                "indices": ev.indices.numpy(),
                "robust": ev.robust.numpy(),
                "broken_by": ev.broken_by.numpy(),
                "margin": ev.margin.numpy(),
                "perturbation_norm": ev.norms.numpy(),
                **{f"flag_{k}": v.numpy() for k, v in ev.flags.items()},
            },
            figures={"after_each_attack": figure},
            warnings=list(ev.warnings),
        )
