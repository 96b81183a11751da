"""Per (class, section) statistics and per-class trends for one perturbation.

The inputs are plain arrays (clean and perturbed feature vectors, labels, predictions), so
the analysis is testable on synthetic features where the answer is known and independent
of how the features were computed.

Trend statistics (Park & Lee, section 4.5, made testable):

* Spearman's rho of the error rate, and of the median cosine, against the section index,
  over the class's significant sections (``n >= min_count``). Fewer than ``min_sections``
  significant sections give no rho (with two points rho is +-1 by construction).
* A class "has a falling error rate" when its rho of the error rate is negative.
* The paper checks that the 95% bootstrap CIs of low sections (1-3 of 10) and high sections
  (7-10) do not overlap. Two forms here: (a) per section, the error-rate CI of the class's
  lowest significant section against that of its highest one (separated, and the low one
  higher); (b) pooled, all samples of the class in the low fraction ``[0, 0.3)`` of its
  scale range against all in ``[0.6, 1]``, judged only when both pools hold ``min_count``
  samples. Extreme sections rarely reach 100 samples (the scale distribution is roughly
  Gaussian, section 4.5), and ReLU feature layers often leave the low fraction empty, so
  (b) is often not judged; (a) is judged whenever two sections are significant.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import ConstantInputWarning, spearmanr

from featrob_scale.sections import (
    bootstrap_median_ci,
    bootstrap_rate_ci,
    box_stats,
    group_rng,
)

#: Low and high parts of a class's scale range (fractions of its maximum scale): with 10
#: sections, sections 1-3 and 7-10, the groups the paper compares.
LOW_FRACTION, HIGH_FRACTION = 0.3, 0.6


@dataclass
class Settings:
    """How sections are judged (the metric's options)."""

    sections: int = 10
    min_count: int = 100
    min_sections: int = 3
    resamples: int = 1000
    level: float = 0.95
    seed: int = 0


@dataclass
class PerturbationAnalysis:
    """Everything measured for one perturbation at one section resolution.

    Attributes:
        rows: one dict per (class, section), including empty sections.
        classes: one dict per class: trend statistics and the pooled low/high comparison.
        summary: overall numbers (keys without the perturbation prefix).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    classes: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def low_high(section: np.ndarray, sections: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the samples in the low and high parts of their class's scale range."""
    return section < round(LOW_FRACTION * sections), section >= round(HIGH_FRACTION * sections)


def _groups(labels: np.ndarray, section: np.ndarray, sections: int):
    """Sample indices of every (class, section) group: a dict ``(c, s) -> indices``, built
    with one stable sort (no loop over samples)."""
    key = labels.astype(np.int64) * sections + section
    order = np.argsort(key, kind="stable")
    keys, starts = np.unique(key[order], return_index=True)
    bounds = np.append(starts, len(order))
    return {
        (int(k) // sections, int(k) % sections): order[bounds[i] : bounds[i + 1]]
        for i, k in enumerate(keys)
    }


def section_rows(
    labels: np.ndarray,
    section: np.ndarray,
    class_max: np.ndarray,
    cos: np.ndarray,
    wrong: np.ndarray,
    clean_wrong: np.ndarray,
    settings: Settings,
    stream: int = 0,
) -> list[dict[str, Any]]:
    """Statistics of every (class, section): size, share, cosine box and CI, error rate
    and CI, clean error rate, significance. ``stream`` separates the random numbers of
    different perturbations."""
    s_count = settings.sections
    groups = _groups(labels, section, s_count)
    class_n = np.bincount(labels, minlength=len(class_max))
    rows = []
    for c in range(len(class_max)):
        if class_n[c] == 0:
            continue
        width = class_max[c] / s_count
        for s in range(s_count):
            idx = groups.get((c, s), np.zeros(0, dtype=np.int64))
            n = len(idx)
            rng = group_rng(settings.seed, stream, c, s)
            values, errors = cos[idx], int(wrong[idx].sum())
            box = box_stats(values)
            cos_ci = bootstrap_median_ci(values, rng, settings.resamples, settings.level)
            err_ci = bootstrap_rate_ci(errors, n, rng, settings.resamples, settings.level)
            rows.append(
                {
                    "class": c,
                    "section": s + 1,
                    "scale_lo": float(s * width),
                    "scale_hi": float((s + 1) * width),
                    "n": n,
                    "share": n / int(class_n[c]),
                    "significant": n >= settings.min_count,
                    "cos_median": box.med,
                    "cos_q1": box.q1,
                    "cos_q3": box.q3,
                    "cos_whislo": box.whislo,
                    "cos_whishi": box.whishi,
                    "cos_ci_lo": cos_ci[0],
                    "cos_ci_hi": cos_ci[1],
                    "error_rate": errors / n if n else float("nan"),
                    "error_ci_lo": err_ci[0],
                    "error_ci_hi": err_ci[1],
                    "clean_error_rate": float(clean_wrong[idx].mean()) if n else float("nan"),
                }
            )
    return rows


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho, NaN when undefined (constant input, fewer than two points)."""
    if len(x) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        rho = spearmanr(x, y).statistic
    return float(rho)


def _separated(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when two intervals do not overlap."""
    return a[0] > b[1] or b[0] > a[1]


def class_trends(
    rows: list[dict[str, Any]],
    labels: np.ndarray,
    section: np.ndarray,
    cos: np.ndarray,
    wrong: np.ndarray,
    num_classes: int,
    settings: Settings,
    stream: int = 0,
) -> list[dict[str, Any]]:
    """Per class: Spearman trends over significant sections and the pooled low/high check."""
    low, high = low_high(section, settings.sections)
    out = []
    for c in range(num_classes):
        mine = [r for r in rows if r["class"] == c and r["significant"]]
        if not any(r["class"] == c for r in rows):
            continue
        idx = np.array([r["section"] for r in mine], dtype=float)
        enough = len(mine) >= settings.min_sections
        rho_err = spearman(idx, np.array([r["error_rate"] for r in mine])) if enough else None
        rho_cos = spearman(idx, np.array([r["cos_median"] for r in mine])) if enough else None
        row: dict[str, Any] = {
            "class": c,
            "significant_sections": len(mine),
            "lowest_significant_section": mine[0]["section"] if mine else None,
            "rho_error": rho_err,
            "rho_cosine": rho_cos,
            "error_falls": None if rho_err is None or np.isnan(rho_err) else bool(rho_err < 0),
            "cosine_rises": None if rho_cos is None or np.isnan(rho_cos) else bool(rho_cos > 0),
        }
        rng = group_rng(settings.seed, stream, c, 10_000)
        for part, mask in (("low", low), ("high", high)):
            sel = (labels == c) & mask
            n, errors = int(sel.sum()), int(wrong[sel].sum())
            row[f"{part}_n"] = n
            row[f"{part}_error_rate"] = errors / n if n else None
            row[f"{part}_error_ci"] = list(
                bootstrap_rate_ci(errors, n, rng, settings.resamples, settings.level)
            )
            row[f"{part}_cos_median"] = float(np.median(cos[sel])) if n else None
            row[f"{part}_cos_ci"] = list(
                bootstrap_median_ci(cos[sel], rng, settings.resamples, settings.level)
            )
        if len(mine) >= 2:  # the paper's per-section check: first vs last significant section
            first, last = mine[0], mine[-1]
            row["first_last_sections"] = [first["section"], last["section"]]
            row["first_last_error_separated"] = bool(
                _separated(
                    (first["error_ci_lo"], first["error_ci_hi"]),
                    (last["error_ci_lo"], last["error_ci_hi"]),
                )
                and first["error_rate"] > last["error_rate"]
            )
        else:
            row["first_last_sections"] = None
            row["first_last_error_separated"] = None
        judged = row["low_n"] >= settings.min_count and row["high_n"] >= settings.min_count
        row["low_high_judged"] = judged
        row["error_ci_separated"] = (
            _separated(row["low_error_ci"], row["high_error_ci"]) if judged else None
        )
        row["cosine_ci_separated"] = (
            _separated(row["low_cos_ci"], row["high_cos_ci"]) if judged else None
        )
        out.append(row)
    return out


def _nanmedian(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.median(finite)) if finite else None


def _low_quantile_error(labels: np.ndarray, scale: np.ndarray, wrong: np.ndarray) -> float:
    """Error rate of the samples below their class's LOW_FRACTION scale quantile."""
    low = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        mine = labels == c
        low |= mine & (scale < np.quantile(scale[mine], LOW_FRACTION))
    return float(wrong[low].mean()) if low.any() else float("nan")


def analyse(
    labels: np.ndarray,
    section: np.ndarray,
    class_max: np.ndarray,
    cos: np.ndarray,
    wrong: np.ndarray,
    clean_wrong: np.ndarray,
    settings: Settings,
    stream: int = 0,
    scale: np.ndarray | None = None,
) -> PerturbationAnalysis:
    """Rows, class trends and summary for one perturbation.

    With ``scale`` the summary adds ``low_quantile_error_rate``: the error rate of each
    class's lowest-scale 30% of samples, pooled (a fixed share of samples, so two models
    can be compared even when their scale distributions differ).
    """
    num_classes = len(class_max)
    rows = section_rows(labels, section, class_max, cos, wrong, clean_wrong, settings, stream)
    classes = class_trends(rows, labels, section, cos, wrong, num_classes, settings, stream)
    low, high = low_high(section, settings.sections)
    lowest = np.zeros(len(labels), dtype=bool)  # each class's lowest significant section
    for r in classes:
        if r["lowest_significant_section"] is not None:
            lowest |= (labels == r["class"]) & (section == r["lowest_significant_section"] - 1)
    summary = {
        "error_rate": float(wrong.mean()) if len(wrong) else None,
        "median_cosine": float(np.median(cos)) if len(cos) else None,
        "decreasing_error_classes": sum(1 for r in classes if r["error_falls"]),
        "increasing_cosine_classes": sum(1 for r in classes if r["cosine_rises"]),
        "classes_with_trend": sum(1 for r in classes if r["error_falls"] is not None),
        "median_rho_error": _nanmedian([r["rho_error"] for r in classes]),
        "median_rho_cosine": _nanmedian([r["rho_cosine"] for r in classes]),
        "separated_classes": sum(
            1
            for r in classes
            if r["error_ci_separated"] and r["low_error_rate"] > r["high_error_rate"]
        ),
        "judged_classes": sum(1 for r in classes if r["low_high_judged"]),
        "first_last_separated_classes": sum(1 for r in classes if r["first_last_error_separated"]),
        "low_error_rate": float(wrong[low].mean()) if low.any() else None,
        "high_error_rate": float(wrong[high].mean()) if high.any() else None,
        "lowest_section_error_rate": float(wrong[lowest].mean()) if lowest.any() else None,
        "low_quantile_error_rate": _low_quantile_error(labels, scale, wrong)
        if scale is not None
        else None,
        "significant_sections": sum(1 for r in rows if r["significant"]),
    }
    return PerturbationAnalysis(rows=rows, classes=classes, summary=summary)
