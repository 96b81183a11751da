"""Summary, tables, figures and arrays of the ``sensitivity`` metric (NumPy only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from featrob import Figure, MetricResult
from featrob_sensitivity.theorem import per_sample_estimate, robust_accuracy_bound

if TYPE_CHECKING:
    from featrob_sensitivity.measure import FeatureExtremes
    from featrob_sensitivity.metric import ModelSensitivity

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def eps_label(eps: float) -> str:
    """Key fragment of an eps value (``eps=0.03137``)."""
    return f"eps={eps:.4g}"


def _values(m: ModelSensitivity, ext: FeatureExtremes) -> np.ndarray:
    """Per-feature sensitivity at one eps: normalised by the head when possible, else raw."""
    raw = ext.sensitivity
    return raw if m.scales is None else raw * m.scales


def model_rows(m: ModelSensitivity) -> list[dict[str, Any]]:
    """One row per eps: the sensitivity distribution over features, accuracy and bounds."""
    rows = []
    for ext, acc in zip(m.extremes, m.robust_accuracy, strict=True):
        raw = ext.sensitivity
        values = _values(m, ext)
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
    rows = [model_rows(m) for m in models]  # bounds and quantiles, once per model
    tables = {"sensitivity": [row for model in rows for row in model]}
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
    warnings = _warnings(models, rows)
    for m, theirs in zip(models[1:], rows[1:], strict=True):
        summary.update(_trend(rows[0], theirs, m.label))
    arrays: dict[str, np.ndarray] = {"features": run.features}
    for m in models:
        if m.scales is not None:
            arrays[f"{m.label}.scales"] = m.scales
        for ext in m.extremes:
            arrays[f"{m.label}.{eps_label(ext.eps)}.raw"] = ext.sensitivity
            if m.scales is not None:
                arrays[f"{m.label}.{eps_label(ext.eps)}.normalised"] = _values(m, ext)
    return MetricResult(
        summary=summary,
        tables=tables,
        arrays=arrays,
        figures=_figures(models, rows, bins),
        warnings=warnings,
    )


def _trend(mine: list[dict[str, Any]], theirs: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """Whether the model with rows ``theirs`` is less sensitive / more robust than the run's
    model (rows ``mine``) at every eps (the paper's finding for adversarial training)."""
    lower = all(b["mean"] < a["mean"] for a, b in zip(mine, theirs, strict=True))
    accs = [(a["robust_accuracy"], b["robust_accuracy"]) for a, b in zip(mine, theirs, strict=True)]
    higher = (
        all(b > a for a, b in accs) if all(a is not None and b is not None for a, b in accs)
        else None
    )  # fmt: skip
    return {
        f"{label}.lower_sensitivity_every_eps": lower,
        f"{label}.higher_robust_accuracy_every_eps": higher,
    }


def _warnings(models: list[ModelSensitivity], rows: list[list[dict[str, Any]]]) -> list[str]:
    out = []
    for m, m_rows in zip(models, rows, strict=True):
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
            vacuous = [f"{r['eps']:.4g}" for r in m_rows if r.get("bound_vacuous")]
            if vacuous:
                out.append(
                    f"{m.label}: Theorem 3's bound is vacuous (<= 0) at eps "
                    f"{', '.join(vacuous)}: the summed feature sensitivities exceed the share "
                    "of samples with a large enough margin"
                )
    return out


def _figures(
    models: list[ModelSensitivity], per_model: list[list[dict[str, Any]]], bins: int
) -> dict[str, Figure]:
    """Figure 2 (histograms per eps, one series per model) and Figure 1 (accuracy vs eps)."""
    rows = {m.label: r for m, r in zip(models, per_model, strict=True)}
    unit = "normalised" if all(m.scales is not None for m in models) else "raw"
    figs: dict[str, Figure] = {}
    for i, ext in enumerate(models[0].extremes):
        series = []
        for m in models:
            values = _values(m, m.extremes[i])
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
