"""Summary, tables, figures and arrays of the ``sensitivity`` metric (NumPy only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from featrob.results import Figure, MetricResult
from featrob_sensitivity.theorem import per_sample_estimate, robust_accuracy_bound

if TYPE_CHECKING:
    from featrob_sensitivity.metric import ModelSensitivity

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def eps_label(eps: float) -> str:
    """Key fragment of an eps value (``eps=0.03137``)."""
    return f"eps={eps:.4g}"


def model_rows(m: ModelSensitivity) -> list[dict[str, Any]]:
    """One row per eps: the sensitivity distribution over features, accuracy and bounds."""
    rows = []
    for ext, acc in zip(m.extremes, m.robust_accuracy, strict=True):
        raw = ext.sensitivity
        values = raw if m.scales is None else raw * m.scales
        q = np.quantile(values, QUANTILES)
        live = raw > 0  # features that move at all (a ReLU unit off on every sample does not)
        row: dict[str, Any] = {
            "model": m.label,
            "eps": ext.eps,
            "normalised": m.scales is not None,
            "mean": float(values.mean()),
            "live_features": int(live.sum()),
            "live_mean": float(values[live].mean()) if live.any() else 0.0,
            "median": float(q[2]),
            "q10": float(q[0]),
            "q25": float(q[1]),
            "q75": float(q[3]),
            "q90": float(q[4]),
            "max": float(values.max()),
            "raw_mean": float(raw.mean()),
            "clean_accuracy": m.clean_accuracy,
            "robust_accuracy": acc,
        }
        if m.scales is not None and len(m.features) == m.dim:
            bound = robust_accuracy_bound(m.margin, values)
            row.update({f"bound_{k}": v for k, v in bound.items()})
            row["per_sample_estimate"] = per_sample_estimate(m.margin, ext.change * m.scales)
        rows.append(row)
    return rows


def build_result(models: list[ModelSensitivity], bins: int) -> MetricResult:
    """The metric's result: the run's model first, compared models after it."""
    tables = {"sensitivity": [row for m in models for row in model_rows(m)]}
    run = models[0]
    summary: dict[str, Any] = {
        "layer": run.layer,
        "layer_width": run.dim,
        "features_analysed": len(run.features),
        "samples": len(run.margin),
        "normalised": run.scales is not None,
        "models": ", ".join(m.label for m in models),
        "from_store": all(e.computed_cells == 0 for m in models for e in m.extremes),
    }
    keys = (
        "mean",
        "median",
        "q10",
        "q90",
        "live_features",
        "live_mean",
        "raw_mean",
        "robust_accuracy",
        "bound_best",
    )
    for row in tables["sensitivity"]:
        prefix = "" if row["model"] == run.label else f"{row['model']}."
        for key in (*keys, "bound_vacuous"):
            if key in row:
                summary[f"{prefix}{eps_label(row['eps'])}.{key}"] = row[key]
    warnings = _warnings(models)
    for m in models[1:]:
        summary.update(_trend(run, m))
    arrays: dict[str, np.ndarray] = {"features": run.features}
    for m in models:
        if m.scales is not None:
            arrays[f"{m.label}.scales"] = m.scales
        for ext in m.extremes:
            raw = ext.sensitivity
            arrays[f"{m.label}.{eps_label(ext.eps)}.raw"] = raw
            if m.scales is not None:
                arrays[f"{m.label}.{eps_label(ext.eps)}.normalised"] = raw * m.scales
    return MetricResult(
        summary=summary,
        tables=tables,
        arrays=arrays,
        figures=_figures(models, bins),
        warnings=warnings,
    )


def _trend(run: ModelSensitivity, other: ModelSensitivity) -> dict[str, Any]:
    """Whether ``other`` is less sensitive / more robust than the run's model at every eps
    (the paper's finding for an adversarially trained model)."""
    mine, theirs = model_rows(run), model_rows(other)
    lower = all(b["mean"] < a["mean"] for a, b in zip(mine, theirs, strict=True))
    accs = [(a["robust_accuracy"], b["robust_accuracy"]) for a, b in zip(mine, theirs, strict=True)]
    higher = (
        all(b > a for a, b in accs) if all(a is not None and b is not None for a, b in accs)
        else None
    )  # fmt: skip
    return {
        f"{other.label}.lower_sensitivity_every_eps": lower,
        f"{other.label}.higher_robust_accuracy_every_eps": higher,
    }


def _warnings(models: list[ModelSensitivity]) -> list[str]:
    out = []
    for m in models:
        if m.scales is None:
            out.append(
                f"{m.label}: layer {m.layer!r} does not feed a linear head: sensitivities are "
                "raw (not normalised) and Theorem 3's bound is not available"
            )
        elif len(m.features) < m.dim:
            out.append(
                f"{m.label}: {len(m.features)} of {m.dim} features analysed: Theorem 3's "
                'bound needs all of them (set features = "all")'
            )
        else:
            vacuous = [f"{r['eps']:.4g}" for r in model_rows(m) if r.get("bound_vacuous")]
            if vacuous:
                out.append(
                    f"{m.label}: Theorem 3's bound is vacuous (<= 0) at eps "
                    f"{', '.join(vacuous)}: the summed feature sensitivities exceed the share "
                    "of samples with a large enough margin"
                )
    return out


def _figures(models: list[ModelSensitivity], bins: int) -> dict[str, Figure]:
    """Figure 2 (histograms per eps, one series per model) and Figure 1 (accuracy vs eps)."""
    rows = {m.label: model_rows(m) for m in models}
    unit = "normalised" if all(m.scales is not None for m in models) else "raw"
    figs: dict[str, Figure] = {}
    for i, ext in enumerate(models[0].extremes):
        series = []
        for m in models:
            raw = m.extremes[i].sensitivity
            values = raw if m.scales is None else raw * m.scales
            series.append({"label": m.label, "values": values.tolist(), "bins": bins})
        figs[f"histogram_{eps_label(ext.eps)}"] = Figure(
            "hist",
            series,
            title=f"Sensitivity of features, Linf eps = {ext.eps:.4g}",
            xlabel=f"sensitivity ({unit})",
            ylabel="features",
        )
    figs["mean_sensitivity"] = Figure(
        "line",
        [
            {"label": label, "x": [r["eps"] for r in rs], "y": [r["mean"] for r in rs]}
            for label, rs in rows.items()
        ],
        title="Mean feature sensitivity against eps",
        xlabel="eps (Linf)",
        ylabel=f"mean sensitivity ({unit})",
    )
    if all(r["robust_accuracy"] is not None for rs in rows.values() for r in rs):
        figs["robust_accuracy"] = Figure(
            "line",
            [
                {
                    "label": m.label,
                    "x": [0.0, *[r["eps"] for r in rows[m.label]]],
                    "y": [m.clean_accuracy, *[r["robust_accuracy"] for r in rows[m.label]]],
                }
                for m in models
            ],
            title="PGD-20 accuracy against eps",
            xlabel="eps (Linf)",
            ylabel="accuracy",
        )
    return figs
