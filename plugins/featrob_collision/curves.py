"""Optimal-loss curves (paper 003, Algorithm 2 and Figures 5-15): for every layer, projection
and eps, the optimal cross-entropy and 0-1 loss of the conflict graph ``d <= eps``, averaged
over projections, as tables, summary keys and figures."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from featrob import Figure
from featrob_collision.conflict import ConflictGraph, optimal_loss
from featrob_collision.distances import LayerDistances

LOG2 = math.log(2.0)


def default_eps_grid(half_distances: np.ndarray, points: int = 20) -> list[float]:
    """``points`` evenly spaced eps up to the largest half input distance (every pair
    collides by then: ``d <= ||x - x'|| / 2`` at every layer)."""
    top = float(np.max(half_distances)) if len(half_distances) else 1.0
    return [round(top * (i + 1) / points, 6) for i in range(points)]


def layer_curves(
    layer: LayerDistances, n1: int, n2: int, eps_grid: list[float], solver: str
) -> list[dict[str, Any]]:
    """Per eps: mean and spread over projections of both optimal losses, edges, solvers."""
    rows = []
    dist = layer.values["distance"]
    for eps in eps_grid:
        ce, zo, edges, solvers = [], [], [], Counter()
        for k in range(dist.shape[1]):
            graph = ConflictGraph.from_distances(dist[:, k].reshape(n1, n2), eps)
            res = optimal_loss(graph, solver)
            ce.append(res.cross_entropy)
            zo.append(res.zero_one)
            edges.append(res.edges)
            solvers[res.solver] += 1
        rows.append(
            {
                "layer": layer.layer,
                "eps": eps,
                "cross_entropy": float(np.mean(ce)),
                "cross_entropy_std": float(np.std(ce)),
                "zero_one": float(np.mean(zo)),
                "zero_one_std": float(np.std(zo)),
                "edges": float(np.mean(edges)),
                "solver": ", ".join(f"{s} x{c}" for s, c in solvers.items()),
            }
        )
    return rows


def layer_summary(layer: LayerDistances, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary keys of one layer: distance quantiles, convergence, curve landmarks."""
    v = layer.values
    eps = np.array([r["eps"] for r in rows])
    ce = np.array([r["cross_entropy"] for r in rows])
    half = np.flatnonzero(ce >= LOG2 / 2)
    return {
        "dim": layer.dim,
        "distance.median": float(np.median(v["distance"])),
        "distance.q10": float(np.quantile(v["distance"], 0.1)),
        "distance.q90": float(np.quantile(v["distance"], 0.9)),
        "converged_share": float(np.mean(v["converged"])),
        "iterations.mean": float(np.mean(v["iterations"])),
        "residual.max": float(np.max(v["residual"])),
        # first eps where the optimal CE reaches half of its saturation value log 2
        "eps_half_saturation": float(eps[half[0]]) if len(half) else None,
        # mean optimal CE over the eps grid, as a share of log 2 (1: saturated everywhere)
        "ce_mean_share": float(ce.mean() / LOG2) if len(ce) else None,
        "searched_pairs": layer.computed,
        "seconds": round(layer.seconds, 3),
    }


def curve_figures(rows: list[dict[str, Any]], fab: dict[str, Any] | None) -> dict[str, Figure]:
    """CE and 0-1 curves against eps, one line per layer (log 2 marked); FAB at the logits."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))

    def series(key: str) -> list[dict[str, Any]]:
        return [
            {
                "label": name,
                "x": [r["eps"] for r in rows if r["layer"] == name],
                "y": [r[key] for r in rows if r["layer"] == name],
            }
            for name in layers
        ]

    figs = {
        "optimal_cross_entropy": Figure(
            "line",
            series("cross_entropy"),
            title="Optimal cross-entropy over the conflict graph, by layer",
            xlabel="eps (L2)",
            ylabel="optimal adversarial cross-entropy",
            options={"hline": LOG2},
        ),
        "optimal_zero_one": Figure(
            "line",
            series("zero_one"),
            title="Optimal 0-1 loss over the conflict graph, by layer",
            xlabel="eps (L2)",
            ylabel="optimal adversarial 0-1 loss",
            options={"hline": 0.5},
        ),
    }
    if fab is not None:
        logit = [r for r in rows if r["layer"] == "logits"]
        figs["fab_vs_collision"] = Figure(
            "line",
            [
                {"label": "FAB error of the model", "x": fab["eps"], "y": fab["error"]},
                {
                    "label": "collision 0-1 loss (logits)",
                    "x": [r["eps"] for r in logit],
                    "y": [r["zero_one"] for r in logit],
                },
            ],
            title="FAB error vs the optimal collision loss at the logits (Figure 5)",
            xlabel="eps (L2)",
            ylabel="0-1 loss",
        )
    return figs
