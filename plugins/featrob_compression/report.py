"""Summary statistics, class-pair tables and figures of a :class:`PairTable` (NumPy only)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import spearmanr

from featrob import Figure
from featrob_compression.pairs import PairTable

#: Quantities summarised by their distribution (quantiles, mean).
DISTRIBUTIONS = (
    "d_opt",
    "local_ratio",
    "abs_cos",
    "path_compression",
    "path_grad_norm",
    "path_identity_error",
    "delta_target",
    "delta_untargeted",
    "fragility",
    "fragility_untargeted",
    "predicted_length",
    "predicted_boundary",
    "linear_boundary",
    "boundary_over_delta",
    "length_over_delta",
)

#: (x, y) pairs whose Spearman correlation across pairs the summary reports. A positive rho
#: of a compression ratio against fragility means: stronger compression (a smaller ratio)
#: goes with a smaller ``delta_min / d_opt``, as the paper's explanation predicts.
CORRELATIONS = (
    ("local_ratio", "fragility"),
    ("abs_cos", "fragility"),
    ("path_compression", "fragility"),
    ("local_ratio", "fragility_untargeted"),
    ("predicted_boundary", "delta_target"),
    ("linear_boundary", "delta_target"),
    ("predicted_length", "delta_target"),
)

#: Column quantities of the class-pair table (medians).
PAIR_COLUMNS = ("d_opt", "local_ratio", "abs_cos", "path_compression", "delta_target", "fragility")

#: Most points drawn in a scatter figure (a seeded subsample beyond that).
MAX_SCATTER = 3000


def derived(table: PairTable) -> dict[str, np.ndarray]:
    """The stored quantities plus the ratios built from them."""
    v = dict(table.values)
    with np.errstate(divide="ignore", invalid="ignore"):
        d_opt = np.where(v["d_opt"] > 0, v["d_opt"], np.nan)
        v["fragility"] = v["delta_target"] / d_opt
        v["fragility_untargeted"] = v["delta_untargeted"] / d_opt
        v["boundary_over_delta"] = v["predicted_boundary"] / v["delta_target"]
        v["length_over_delta"] = v["predicted_length"] / v["delta_target"]
    return v


def valid_mask(table: PairTable, values: dict[str, np.ndarray]) -> np.ndarray:
    """Pairs that enter the statistics: the sample is classified correctly, the partner is
    a different image (``d_opt > 0``) and the targeted attack found a perturbation."""
    return (
        table.correct
        & (values["d_opt"] > 0)
        & np.isfinite(values["delta_target"])
        & np.isfinite(values["local_ratio"])
    )


def distribution(values: np.ndarray) -> dict[str, float | None]:
    """Mean and quantiles of the finite values (None when there are none)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return {"mean": None, "q10": None, "median": None, "q90": None}
    q10, med, q90 = np.quantile(v, [0.1, 0.5, 0.9])
    return {"mean": float(v.mean()), "q10": float(q10), "median": float(med), "q90": float(q90)}


def correlation(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None, int]:
    """Spearman rho and p-value over the pairs where both are finite (None below 3)."""
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return None, None, n
    rho, p = spearmanr(x[ok], y[ok])
    return float(rho), float(p), n


def summarise(table: PairTable, values: dict[str, np.ndarray], input_dim: int) -> dict[str, Any]:
    """The flat summary: counts, distributions, fragile share, correlations."""
    ok = valid_mask(table, values)
    out: dict[str, Any] = {
        "pairs": len(table.sample),
        "analysed_pairs": int(ok.sum()),
        "misclassified_pairs": int((~table.correct).sum()),
        "attack_failed_pairs": int((table.correct & ~np.isfinite(values["delta_target"])).sum()),
        "input_dim": int(input_dim),
        "gaussian_prediction": float(np.sqrt(2.0 / input_dim)) if input_dim > 0 else None,
    }
    for name in DISTRIBUTIONS:
        for stat, value in distribution(values[name][ok]).items():
            out[f"{name}.{stat}"] = value
    frag = values["fragility"][ok]
    out["fragile_share"] = float((frag < 1).mean()) if len(frag) else None
    frag_u = values["fragility_untargeted"][ok]
    frag_u = frag_u[np.isfinite(frag_u)]
    out["fragile_share_untargeted"] = float((frag_u < 1).mean()) if len(frag_u) else None
    for xname, yname in CORRELATIONS:
        rho, p, _ = correlation(values[xname][ok], values[yname][ok])
        out[f"spearman.{xname}~{yname}"] = rho
        out[f"spearman.{xname}~{yname}.p"] = p
    return out


def class_pair_rows(
    table: PairTable, values: dict[str, np.ndarray], names: list[str]
) -> list[dict[str, Any]]:
    """One row per (class, partner class) with its pair count and column medians."""
    ok = valid_mask(table, values)
    rows = []
    keys = np.stack([table.y[ok], table.y2[ok]], 1)
    if not len(keys):
        return rows
    groups, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    for g, (c, c2) in enumerate(groups.tolist()):  # a loop over class pairs (<= K^2)
        sel = inverse == g
        row: dict[str, Any] = {"class": names[c], "partner_class": names[c2], "n": int(sel.sum())}
        for col in PAIR_COLUMNS:
            v = values[col][ok][sel]
            v = v[np.isfinite(v)]
            row[f"median_{col}"] = float(np.median(v)) if len(v) else None
        rows.append(row)
    return rows


def figures(
    table: PairTable, values: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, Figure]:
    """Scatter of compression ratio vs fragility, predicted vs measured length, histograms."""
    ok = np.flatnonzero(valid_mask(table, values))
    shown = ok if len(ok) <= MAX_SCATTER else np.sort(rng.choice(ok, MAX_SCATTER, replace=False))

    def series(xname: str, yname: str, label: str) -> dict[str, Any]:
        return {
            "label": label,
            "x": values[xname][shown].tolist(),
            "y": values[yname][shown].tolist(),
        }

    out = {
        "ratio_vs_fragility": Figure(
            "scatter",
            [series("local_ratio", "fragility", "pairs")],
            title="Local compression ratio vs empirical fragility",
            xlabel="||P (x' - x)|| / ||x' - x||",
            ylabel="delta_min / d_opt",
            options={"hline": 1.0},
        ),
        "predicted_vs_measured": Figure(
            "scatter",
            [series("predicted_boundary", "delta_target", "pairs")],
            title="Predicted length to the boundary (eqs. 8-9) vs minimal perturbation",
            xlabel="g(x) / path-mean |grad g|",
            ylabel="delta_min (targeted)",
            options={"diagonal": True},
        ),
    }
    for name, label in (
        ("local_ratio", "local compression ratio"),
        ("abs_cos", "|cos(grad g, x' - x)|"),
        ("path_compression", "path compression"),
        ("fragility", "delta_min / d_opt"),
    ):
        v = values[name][ok]
        out[f"hist_{name}"] = Figure(
            "hist",
            [{"label": label, "values": v[np.isfinite(v)].tolist(), "bins": 30}],
            title=f"Distribution of {label}",
            xlabel=label,
            ylabel="pairs",
        )
    return out
