"""The ``scale`` metric: vulnerability by feature-vector scale section (Park & Lee 2025).

For the clean inputs and each perturbation (FGSM, Gabor noise with one pattern for every
sample, and any registered attack), features come from the shared feature store: a second
run with another section count, bootstrap size or significance threshold recomputes no
feature, only the statistics.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from featrob import (
    ConfigError,
    Metric,
    MetricResult,
    Passes,
    PlanInfo,
    float_param,
    int_param,
    parse_call,
)
from featrob_scale.analysis import Settings, analyse
from featrob_scale.findings import scale_findings
from featrob_scale.layout import (
    class_figure,
    named_rows,
    scatter_figure,
    section_table,
)
from featrob_scale.sections import assign_sections, cosine, merge_sections, scales

if TYPE_CHECKING:
    from featrob import RunContext


class ScaleSections(Metric):
    """Error rate and feature cosine under perturbations, per class and scale section.

    Options (``defaults``):
        layer ("features"): the feature layer; the default is the layer before the output
            layer, as in the paper; any named layer works (conv maps are flattened).
        sections (10): S, the number of equal sections of ``[0, max scale of the class]``.
        merge (1): also report coarser sections made of ``merge`` adjacent ones (the paper's
            pairwise aggregation 20 -> 10 is ``sections=20, merge=2``); summary keys of the
            merged resolution are prefixed ``merged.``.
        perturbations (["fgsm", "gabor", "pgd"]): attack specs, any registered attack, at
            the run's eps and norm (Gabor is Linf only and skipped under L2).
        eps (None): perturbation size; None takes the run's ``--eps``.
        min_count (100): sections with fewer samples are not significant (the paper's 100).
        min_sections (3): significant sections a class needs for a Spearman trend.
        resamples (1000), level (0.95): bootstrap resamples and confidence level.
        compare (None): a training method (``"scale-aware"``) or a checkpoint path: the same
            analysis and the run's robust accuracy on that model, side by side with the
            run's model (the method's model is trained once, then cached).
    """

    name: ClassVar[str] = "scale"
    description: ClassVar[str] = (
        "error rate and feature cosine under perturbations by feature-scale section (Park & Lee)"
    )
    defaults: ClassVar[dict[str, Any]] = {
        "layer": "features",
        "sections": 10,
        "merge": 1,
        "perturbations": ["fgsm", "gabor", "pgd"],
        "eps": None,
        "min_count": 100,
        "min_sections": 3,
        "resamples": 1000,
        "level": 0.95,
        "compare": None,
    }
    budgets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"resamples": 200},
        # 20 sections aggregated pairwise to 10 (the paper's Table 3); the paper's 1,000
        # images per class are the run's data: --n-per-class 1000 on a large enough set
        "paper": {"sections": 20, "merge": 2},
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        o["sections"] = int_param(self.name, "sections", o["sections"], 1)
        o["merge"] = int_param(self.name, "merge", o["merge"], 1)
        if o["sections"] % o["merge"]:
            raise ConfigError(
                f"{self.name}: sections ({o['sections']}) must be a multiple of merge "
                f"({o['merge']})"
            )
        o["min_count"] = int_param(self.name, "min_count", o["min_count"], 1)
        o["min_sections"] = int_param(self.name, "min_sections", o["min_sections"], 2)
        o["resamples"] = int_param(self.name, "resamples", o["resamples"], 10)
        o["level"] = float_param(self.name, "level", o["level"], positive=True)
        if not o["level"] < 1:
            raise ConfigError(f"{self.name}: level must be in (0, 1), got {o['level']!r}")
        if o["eps"] is not None:
            o["eps"] = float_param(self.name, "eps", o["eps"])
        perts = o["perturbations"]
        if isinstance(perts, str):
            perts = [perts]
        if not isinstance(perts, (list, tuple)) or not all(isinstance(p, str) for p in perts):
            raise ConfigError(f"{self.name}: perturbations must be a list of attack specs")
        o["perturbations"] = list(perts)

    # ------------------------------------------------------------------ entry point
    def passes(self, plan: PlanInfo) -> Passes:
        """Each perturbation on every sample and the features before and after it; with
        ``compare``, the same on the other model and the run's attacks on it."""
        attacks = [plan.make_attack(spec) for spec in self.options["perturbations"]]
        one_model = plan.attack_passes(attacks) + Passes(
            forward=plan.n_samples * (1 + len(attacks))
        )
        if self.options["compare"]:
            return 2 * one_model + plan.evaluation_passes()
        return one_model

    def compute(self, ctx: RunContext) -> MetricResult:
        """Analyse the run's model (and the comparison model when asked)."""
        perturbations, skipped = self.perturbations(ctx)
        result = self.analyse_model(ctx, perturbations, skipped)
        result.findings = scale_findings(result.summary, result.tables, list(result.figures))
        compare = self.options["compare"]
        if compare:
            other_ctx = ctx.compared(compare)
            other = self.analyse_model(other_ctx, perturbations, skipped)
            this_label = ctx.model_label
            p_labels = [label for label, _ in perturbations]
            rows = [
                comparison_row(this_label, ctx, result, p_labels),
                comparison_row(str(compare), other_ctx, other, p_labels),
            ]
            result.tables["comparison"] = rows
            for key, value in rows[1].items():
                if key != "model":
                    result.summary[f"compare.{key}"] = value
            result.warnings += [f"compared model: {w}" for w in other.warnings]
        return result

    # ------------------------------------------------------------------ one model
    def perturbations(self, ctx: RunContext) -> tuple[list[tuple[str, Any]], list[str]]:
        """Instantiated perturbations with their labels, and warnings for skipped ones."""
        out, warnings = [], []
        for spec in self.options["perturbations"]:
            name, _ = parse_call(spec)
            if ctx.config.norm not in ctx.attacks.get(name).norms:
                warnings.append(f"{spec}: skipped, it has no {ctx.config.norm} version")
                continue
            out.append((spec.replace(" ", ""), ctx.make_attack(spec, eps=self.options["eps"])))
        return out, warnings

    def analyse_model(
        self, ctx: RunContext, perturbations: list[tuple[str, Any]], skipped: list[str]
    ) -> MetricResult:
        """Sections, statistics, tables and figures for the context's model, under the
        labelled ``perturbations`` (``skipped``: warnings for the ones left out)."""
        o = self.options
        layer = o["layer"]
        clean = ctx.features(layer)
        feats = clean.values.numpy()
        labels = clean.labels.numpy().astype(np.int64)
        names = ctx.class_names
        scale = scales(feats)
        section, class_max = assign_sections(scale, labels, ctx.num_classes, o["sections"])
        clean_wrong = ~clean.correct.numpy()
        resolutions = [("", o["sections"], section)]
        if o["merge"] > 1:
            merged = merge_sections(section, o["merge"])
            resolutions.append(("merged.", o["sections"] // o["merge"], merged))

        warnings = list(skipped)
        summary: dict[str, Any] = {
            "layer": layer,
            "feature_dim": int(feats.reshape(len(feats), -1).shape[1]),
            "sections": o["sections"],
            "n": len(labels),
            "clean_error_rate": float(clean_wrong.mean()),
            "median_scale": float(np.median(scale)),
        }
        tables: dict[str, list[dict[str, Any]]] = {}
        arrays: dict[str, np.ndarray] = {
            "indices": clean.indices.numpy(),
            "labels": labels,
            "scale": scale,
            "section": section + 1,
            "class_max_scale": class_max,
        }
        figures = {}
        present = np.bincount(labels, minlength=ctx.num_classes) > 0
        for prefix, s_count, sec in resolutions:
            counts = np.bincount(labels * s_count + sec, minlength=ctx.num_classes * s_count)
            counts = counts.reshape(ctx.num_classes, s_count)
            rows = [
                {"class": c, "section": s + 1, "n": int(counts[c, s])}
                for c in np.nonzero(present)[0].tolist()
                for s in range(s_count)
            ]
            tables[f"{prefix}section_sizes"] = section_table(rows, names, s_count, "n")
        for label, attack in perturbations:
            pert = ctx.features(layer, attack)
            cos = cosine(feats, pert.values.numpy())
            wrong = ~pert.correct.numpy()
            arrays[f"{label}.cosine"] = cos
            arrays[f"{label}.wrong"] = wrong
            stream = zlib.crc32(label.encode())
            for prefix, s_count, sec in resolutions:
                settings = Settings(
                    sections=s_count,
                    min_count=o["min_count"],
                    min_sections=o["min_sections"],
                    resamples=o["resamples"],
                    level=o["level"],
                    seed=ctx.config.seed,
                )
                res = analyse(
                    labels, sec, class_max, cos, wrong, clean_wrong, settings, stream, scale
                )
                for key, value in res.summary.items():
                    summary[f"{prefix}{label}.{key}"] = value
                tables[f"{prefix}{label}.error_rate"] = section_table(
                    res.rows, names, s_count, "error_rate"
                )
                tables[f"{prefix}{label}.sections"] = named_rows(res.rows, names)
                tables[f"{prefix}{label}.classes"] = named_rows(res.classes, names)
                if prefix:
                    continue
                for c, name in enumerate(names):
                    mine = [r for r in res.rows if r["class"] == c]
                    if mine:
                        figures[f"{label}.{name}"] = class_figure(mine, name, label, s_count)
        if (
            not any(v for k, v in summary.items() if k.endswith(".significant_sections") and v)
            and perturbations
        ):
            warnings.append(
                f"no scale section holds min_count={o['min_count']} samples ({len(labels)} "
                "samples analysed): analyse more samples (--n-per-class, --split train) or "
                "lower metrics.scale.min_count"
            )
        if summary["feature_dim"] == 2:
            weight = getattr(ctx.model.head, "weight", None)
            head_weight = (
                weight.detach().cpu().numpy()
                if weight is not None and tuple(weight.shape) == (ctx.num_classes, 2)
                else None
            )
            figures["feature_scatter"] = scatter_figure(
                feats, labels, names, head_weight, ctx.rng("scale.scatter")
            )
        return MetricResult(
            summary=summary, tables=tables, arrays=arrays, figures=figures, warnings=warnings
        )


#: Per-perturbation summary keys shown side by side when two models are compared.
COMPARED_KEYS = (
    "error_rate",
    "lowest_section_error_rate",
    "low_quantile_error_rate",
    "low_error_rate",
    "high_error_rate",
    "median_cosine",
    "decreasing_error_classes",
)


def comparison_row(
    label: str, ctx: RunContext, result: MetricResult, p_labels: list[str]
) -> dict[str, Any]:
    """Clean accuracy, the run's robust accuracy (its ``--attack`` list, AutoAttack style)
    and the per-perturbation section figures of one model."""
    evaluation = ctx.evaluate()
    row: dict[str, Any] = {
        "model": label,
        "clean_accuracy": evaluation.clean_accuracy,
        "robust_accuracy": evaluation.robust_accuracy,
    }
    for p_label in p_labels:
        for key in COMPARED_KEYS:
            row[f"{p_label}.{key}"] = result.summary.get(f"{p_label}.{key}")
    return row
