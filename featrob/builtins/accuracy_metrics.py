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
            arrays={"correct": correct.numpy(), "indices": ctx.indices.numpy()},
        )


class RobustAccuracy(Metric):
    """Accuracy under each configured attack and under their per-sample worst case.

    A sample counts as robust only if it is classified correctly on the clean input and
    under every attack (``--attack`` may be repeated).
    """

    name: ClassVar[str] = "robust_accuracy"
    description: ClassVar[str] = "accuracy under the run's attacks and their per-sample worst case"

    def compute(self, ctx: RunContext) -> MetricResult:
        """Run (or read) each attack and take the per-sample worst case."""
        robust = ctx.features("logits").correct.clone()
        summary: dict[str, Any] = {"eps": ctx.config.eps, "norm": ctx.config.norm}
        columns: dict[str, Tensor] = {}
        attack_rows = []
        for attack in ctx.run_attacks():
            correct = ctx.features("logits", attack).correct
            label = attack.label()
            summary[f"{attack.name}.accuracy"] = float(correct.double().mean())
            attack_rows.append(
                {"attack": label, **attack.spec(), "accuracy": float(correct.double().mean())}
            )
            columns[attack.name] = correct
            robust &= correct
        summary["accuracy"] = float(robust.double().mean())
        summary["n"] = len(robust)
        columns["worst_case"] = robust
        figure = Figure(
            kind="bar",
            title=f"Robust accuracy per class ({ctx.config.norm}, eps={ctx.config.eps:g})",
            xlabel="class",
            ylabel="accuracy",
            series=[
                {
                    "label": name,
                    "x": ctx.class_names,
                    "y": [r[name] for r in per_class_rows(ctx, {name: v})],
                }
                for name, v in columns.items()
            ],
        )
        return MetricResult(
            summary=summary,
            tables={"attacks": attack_rows, "per_class": per_class_rows(ctx, columns)},
            arrays={"robust": robust.numpy(), "indices": ctx.indices.numpy()},
            figures={"per_class": figure},
        )


__all__ = ["CleanAccuracy", "RobustAccuracy", "per_class_rows"]
