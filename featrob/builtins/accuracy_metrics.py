"""Clean and robust accuracy, overall and per class."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from featrob.budgets import STANDARD_COMMAND, budget_attacks
from featrob.builtins.accuracy_findings import clean_accuracy_findings, robust_accuracy_findings
from featrob.context import RunContext
from featrob.metrics import Metric
from featrob.plan import Passes, PlanInfo
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

    def passes(self, plan: PlanInfo) -> Passes:
        """One forward pass per sample."""
        return Passes(forward=plan.n_samples)

    def compute(self, ctx: RunContext) -> MetricResult:
        """Read the logits (from the store when present) and count."""
        clean = ctx.features("logits")
        correct = clean.correct
        result = MetricResult(
            summary={"accuracy": float(correct.double().mean()), "n": len(correct)},
            tables={"per_class": per_class_rows(ctx, {"accuracy": correct})},
            arrays={
                "correct": correct.numpy(),
                "predictions": clean.predictions.numpy(),
                "indices": ctx.indices.numpy(),
            },
        )
        result.findings = clean_accuracy_findings(result.summary, result.tables["per_class"])
        return result


class RobustAccuracy(Metric):
    """Robust accuracy under the run's attacks, evaluated the AutoAttack way.

    Attacks (``--attack``, default the budget's: APGD-CE with 20 steps under ``quick``, an
    upper bound the result says it is; the ``standard`` preset, APGD-CE, APGD-T, FAB-T,
    Square, under ``standard`` and ``paper``) run in order, each only on the samples still
    robust; a sample is robust only if it is classified correctly clean and no attack broke
    it. The result keeps, per sample, which
    attack broke it, the lowest margin reached and that point's perturbation norm, and the
    gradient-masking checks' warnings. Attacks stop on a sample at its first adversarial point
    (early exit; the ``attacks`` table's ``early_exit`` column): for broken samples the margin
    and norm are that point's; ``--attack "apgd-ce(early_exit=false)"`` runs the full budget.
    """

    name: ClassVar[str] = "robust_accuracy"
    description: ClassVar[str] = "AutoAttack-style robust accuracy with a per-sample worst case"

    def passes(self, plan: PlanInfo) -> Passes:
        """The run's evaluation on every sample (and the clean logits)."""
        return plan.evaluation_passes() + Passes(forward=plan.n_samples)

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
                "early_exit": s.early_exit,
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
        result = MetricResult(
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
            warnings=list(ev.warnings) + quick_budget_notes(ctx, ev.robust_accuracy),
        )
        result.findings = robust_accuracy_findings(summary, steps, result.tables["per_class"])
        return result


def quick_budget_notes(ctx: RunContext, robust_accuracy: float) -> list[str]:
    """Under the ``quick`` budget's own attack, the plain statement that the robust accuracy
    is an upper bound, with the command for the standard evaluation (none otherwise)."""
    if ctx.config.budget != "quick" or ctx.config.attacks:
        return []
    attacks = ", ".join(budget_attacks("quick"))
    return [
        f"robust accuracy {robust_accuracy:.1%} is an upper bound: the quick budget ran only "
        f"{attacks}; `{STANDARD_COMMAND}` runs AutoAttack's standard evaluation"
    ]
