"""The Mixed Surrogate Attack (MSA) protocol of paper 002 (Sec. 3.7), reusable for any head.

Step 1: APGD-CE and APGD-DLR generated on each surrogate of the HPM model, every adversarial
set judged on the target: (1) the FC oracle (the head's FC logits), (2) the soft-hybrid model
(``P_soft`` in the forward pass), (3) the target through its STE (BPDA: hard arg-max forward,
softmax gradient). Step 2: Square on the target. The robust accuracy is the per-sample worst
case over every attack. Each attack runs on every clean-correct sample (not only on the ones
still robust), so each attack's own accuracy is reported too.

The naive evaluation (APGD-CE and APGD-DLR straight on the deployed model, whose hard
arg-max has zero gradient) is run beside it to show the obfuscation gap; it is not part of
the worst case, so "MSA <= naive" is a real check. The FC baseline gets the same budget:
APGD-CE, APGD-DLR and Square on the model itself, as AutoAttack would (the paper drops FAB).

HPM logits depend on the batch; every adversarial set is judged on the target in batches of
the run's ``batch_size`` (reported).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from featrob import Attack, Evaluation, FeatrobModel, Plan
from featrob_hpm.heads import FCOracle, HPMHead, SoftHybrid

GRADIENT_ATTACKS = ("apgd-ce", "apgd-dlr")


@dataclass
class WorstCase:
    """Per-attack evaluations of one model and their per-sample worst case.

    Attributes:
        clean_correct: ``[N]`` clean correctness on the target.
        robust: ``[N]`` robust to every attack of the protocol.
        per_attack: label -> ``[N]`` robust to that attack alone.
        evaluations: label -> the :class:`Evaluation` (margins, points, warnings).
    """

    clean_correct: Tensor
    robust: Tensor
    per_attack: dict[str, Tensor] = field(default_factory=dict)
    evaluations: dict[str, Evaluation] = field(default_factory=dict)

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.double().mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.double().mean())

    def accuracy(self, label: str) -> float:
        """Robust accuracy under one attack alone."""
        return float(self.per_attack[label].double().mean())

    def worst_points(self) -> Tensor:
        """Per sample the point of the attack with the lowest margin on the target."""
        labels = list(self.evaluations)
        margins = torch.stack([self.evaluations[k].margin for k in labels])
        best = margins.argmin(0)
        points = torch.stack([self.evaluations[k].x_adv for k in labels])
        return points[best, torch.arange(points.shape[1])]

    def warnings(self) -> list[str]:
        return [f"{k}: {w}" for k, e in self.evaluations.items() for w in e.warnings]


def worst_case(plans: Sequence[Plan], evaluate: Callable[[Plan], Evaluation]) -> WorstCase:
    """Run each plan on every sample (``evaluate([plan])`` on the target, e.g.
    ``lambda plan: ctx.evaluate([plan], model=target)``) and take the per-sample worst case."""
    result: WorstCase | None = None
    for plan in plans:
        ev = evaluate(plan)
        if result is None:
            result = WorstCase(ev.clean_correct, ev.robust.clone())
        result.robust &= ev.robust
        result.per_attack[plan.label] = ev.robust
        result.evaluations[plan.label] = ev
    if result is None:
        raise ValueError("worst_case needs at least one plan")
    return result


def surrogates(model: FeatrobModel) -> dict[str, FeatrobModel]:
    """The MSA's white-box surrogates of an HPM model (sharing its backbone and head)."""
    head = model.head
    if not isinstance(head, HPMHead):
        raise TypeError(f"MSA surrogates need an HPM head, got {type(head).__name__}")
    return {
        "fc-oracle": model.with_head(FCOracle(head), surrogate="fc-oracle"),
        "soft-hybrid": model.with_head(SoftHybrid(head), surrogate="soft-hybrid"),
    }


def msa_plans(model: FeatrobModel, make: Callable[[str], Attack]) -> list[Plan]:
    """Step 1 (APGD-CE/DLR on the FC oracle, the soft hybrid, the target via BPDA) and
    step 2 (Square on the target)."""
    plans = []
    for name, surrogate in surrogates(model).items():
        plans += [Plan(make(a), surrogate=surrogate, surrogate_name=name) for a in GRADIENT_ATTACKS]
    plans += [Plan(make(a), bpda=True) for a in GRADIENT_ATTACKS]
    plans.append(Plan(make("square")))
    return plans


def baseline_plans(make: Callable[[str], Attack]) -> list[Plan]:
    """The same budget on a plain model: APGD-CE, APGD-DLR, Square."""
    return [Plan(make(a)) for a in (*GRADIENT_ATTACKS, "square")]


def naive_plans(make: Callable[[str], Attack]) -> list[Plan]:
    """APGD-CE and APGD-DLR straight on the deployed model (what a naive user runs)."""
    return [Plan(make(a), label=f"{a}@naive") for a in GRADIENT_ATTACKS]
