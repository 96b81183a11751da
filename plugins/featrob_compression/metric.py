"""The ``compression`` metric: how far a model's L2 robustness is from the optimal classifier's,
and how much of the direction that separates the classes its gradients see (paper 001).

Per pair (sample, nearest other-class sample) it reports ``d_opt``, the local and path
compression ratios, the predicted attack length of eqs. 8-9, the minimal perturbation the
minimum-norm attack finds and the fragility ``delta_min / d_opt``; the summary holds their
distributions and Spearman correlations, tables the class pairs. Everything is L2:
``d_opt`` is an L2 distance.

``delta_target`` is the smallest perturbation found that makes ``f_y' > f_y``, i.e. that
crosses the pairwise boundary ``g = 0`` the theory and eqs. 8-9 describe (FAB on that one
hyperplane, ``pairwise=True``). Such an input is misclassified, though possibly into a third
class; requiring the prediction to become ``y'`` exactly made FAB fail on ~10% of MNIST
pairs at any budget (its walk ends in a third class's region). ``delta_untargeted`` is the
smallest misclassifying perturbation found by the untargeted run or any targeted one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from featrob import (
    ConfigError,
    Metric,
    MetricResult,
    MinimumNormAttack,
    Passes,
    PlanInfo,
    bool_param,
    int_param,
    parse_call,
)
from featrob_compression.findings import compression_findings
from featrob_compression.pairs import compute_pairs
from featrob_compression.report import class_pair_rows, derived, figures, summarise

if TYPE_CHECKING:
    from featrob import RunContext

PAIR_MODES = ("nearest", "each")

#: Summary keys shown side by side when two models are compared.
COMPARED_KEYS = (
    "analysed_pairs",
    "local_ratio.median",
    "abs_cos.median",
    "path_compression.median",
    "delta_target.median",
    "fragility.median",
    "fragile_share",
    "spearman.local_ratio~fragility",
)


class FeatureCompression(Metric):
    """Compression ratios against the optimal classifier's tolerance, per pair.

    Options (``defaults``):
        pairs ("nearest"): ``"nearest"``: each sample with its nearest sample of any other
            class in the evaluated set; ``"each"``: with its nearest sample of every other
            class (K - 1 pairs per sample: fuller class-pair tables, K - 1 times the cost).
        path_points (16): K, points on the segment x -> x' for the path quantities.
        attack ("fab"): the minimum-norm attack measuring ``delta_min`` (a registered
            :class:`~featrob.MinimumNormAttack` with an L2 version; parameters
            as in ``"fab(steps=200, restarts=3)"``).
        untargeted (True): also measure the untargeted ``delta_min`` of every sample.
        compare (None): a training method (``"pgd"``, ``"trades"``) or a checkpoint path:
            the same analysis on that model, side by side (the paper's theory predicts that
            a more robust model compresses less: larger ratios).
    """

    name: ClassVar[str] = "compression"
    description: ClassVar[str] = (
        "feature-compression ratios vs the optimal classifier's L2 tolerance (paper 001)"
    )
    defaults: ClassVar[dict[str, Any]] = {
        "pairs": "nearest",
        "path_points": 16,
        "attack": "fab",
        "untargeted": True,
        "compare": None,
    }
    budgets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"path_points": 8, "attack": "fab(steps=50)"},
        "paper": {"pairs": "each", "attack": "fab(restarts=3)"},
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o["pairs"] not in PAIR_MODES:
            raise ConfigError(
                f"{self.name}: pairs must be one of {', '.join(PAIR_MODES)}, got {o['pairs']!r}"
            )
        o["path_points"] = int_param(self.name, "path_points", o["path_points"], 1)
        o["untargeted"] = bool_param(self.name, "untargeted", o["untargeted"])
        if not isinstance(o["attack"], str):
            raise ConfigError(f"{self.name}: attack must be an attack spec such as 'fab'")

    def make_attack(self, ctx: RunContext, input_dim: int) -> MinimumNormAttack:
        """The minimum-norm attack, L2, with ``eps`` = the diameter of the [0, 1] box (eps only
        sizes FAB's random restarts: ``min(best norm so far, eps) / 2``)."""
        name, _ = parse_call(self.options["attack"])
        cls = ctx.attacks.get(name)
        if not issubclass(cls, MinimumNormAttack):
            raise ConfigError(
                f"{self.name}: attack {name!r} is not a minimum-norm attack; use 'fab'"
            )
        if "l2" not in cls.norms:
            raise ConfigError(f"{self.name}: attack {name!r} has no L2 version")
        return ctx.make_attack(self.options["attack"], eps=math.sqrt(input_dim), norm="l2")

    def passes(self, plan: PlanInfo) -> Passes:
        """Per pair: the path points (a forward and the two class outputs' backward
        passes each) and the targeted minimum-norm attack (counted as the attack on a
        two-class problem); the untargeted attack per sample; twice with ``compare``."""
        o = self.options
        pairs = plan.n_samples * (plan.n_classes - 1 if o["pairs"] == "each" else 1)
        attack = plan.make_attack(o["attack"], norm="l2")
        path = Passes(forward=o["path_points"], backward=2 * o["path_points"])
        one_model = pairs * (path + (attack.passes(2) or Passes()))
        if o["untargeted"]:
            one_model = one_model + plan.n_samples * (attack.passes(plan.n_classes) or Passes())
        return (2 if o["compare"] else 1) * one_model

    def compute(self, ctx: RunContext) -> MetricResult:
        """Analyse the run's model (and the comparison model when asked)."""
        result = self.analyse_model(ctx)
        result.findings = compression_findings(result.summary)
        compare = self.options["compare"]
        if compare:
            other_ctx = ctx.compared(compare)
            other = self.analyse_model(other_ctx)
            this_label = ctx.model_label
            rows = [
                {"model": this_label, **{k: result.summary.get(k) for k in COMPARED_KEYS}},
                {"model": str(compare), **{k: other.summary.get(k) for k in COMPARED_KEYS}},
            ]
            result.tables["comparison"] = rows
            for key in COMPARED_KEYS:
                result.summary[f"compare.{key}"] = other.summary.get(key)
            result.warnings += [f"compared model: {w}" for w in other.warnings]
        return result

    def analyse_model(self, ctx: RunContext) -> MetricResult:
        """Pairs, statistics, tables and figures for the context's model."""
        o = self.options
        input_dim = math.prod(ctx.split.image_shape)
        attack = self.make_attack(ctx, input_dim)
        table = compute_pairs(
            ctx, attack, mode=o["pairs"], points=o["path_points"], untargeted=o["untargeted"]
        )
        values = derived(table)
        summary = summarise(table, values, input_dim)
        summary["from_store_samples"] = table.from_store
        summary["pairs_mode"] = o["pairs"]
        warnings = []
        if summary["analysed_pairs"] == 0:
            warnings.append(
                "no pair could be analysed (every sample misclassified, duplicated across "
                "classes, or the attack failed); analyse more samples"
            )
        if summary["attack_failed_pairs"]:
            warnings.append(
                f"{summary['attack_failed_pairs']} pairs: {attack.name} found no perturbation "
                "across the boundary to the partner's class; raise its steps or restarts"
            )
        err = summary.get("path_identity_error.median")
        if err is not None and err > 0.1:
            warnings.append(
                f"eq. 8's quadrature error has median {err:.2f}: raise "
                "metrics.compression.path_points"
            )
        arrays = {
            "sample_index": ctx.indices.numpy()[table.sample],
            "partner_index": ctx.indices.numpy()[table.partner],
            "class": table.y,
            "partner_class": table.y2,
            "correct": table.correct,
            **{name: np.asarray(v) for name, v in values.items()},
        }
        return MetricResult(
            summary=summary,
            tables={"class_pairs": class_pair_rows(table, values, ctx.class_names)},
            arrays=arrays,
            figures=figures(table, values, ctx.rng("compression.figures")),
            warnings=warnings,
        )
