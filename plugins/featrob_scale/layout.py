"""Tables in the paper's layout and figures described by their data.

* Table 1/2 analogue: one row per class, one column per section (``"1"`` .. ``"S"``) holding
  the error rate, plus a ``section_sizes`` table with the same layout holding sample counts.
* Figures 5-8 analogue: per class, box plots of the clean-vs-perturbed cosine per section
  (matplotlib ``bxp`` statistics, so no renderer needs the raw values), the error-rate line
  on a second axis and the section histogram.
* Figure 3 analogue: for a 2-D feature layer, the clean feature scatter per class with the
  output layer's weight vectors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from featrob import Figure

#: At most this many points per class in the feature scatter (the figure is data, kept small).
SCATTER_POINTS_PER_CLASS = 1000


def section_table(
    rows: list[dict[str, Any]], class_names: list[str], sections: int, key: str
) -> list[dict[str, Any]]:
    """Class x section table of ``key`` (``error_rate``, ``n``, ...); None for empty cells."""
    table = []
    for c, name in enumerate(class_names):
        mine = {r["section"]: r for r in rows if r["class"] == c}
        if not mine:
            continue
        row: dict[str, Any] = {"class": name}
        for s in range(1, sections + 1):
            r = mine.get(s)
            value = r[key] if r is not None else None
            row[str(s)] = None if r is None or (key != "n" and r["n"] == 0) else value
        table.append(row)
    return table


def named_rows(rows: list[dict[str, Any]], class_names: list[str]) -> list[dict[str, Any]]:
    """Rows with the class index replaced by its name."""
    return [{**r, "class": class_names[r["class"]]} for r in rows]


def class_figure(rows: list[dict[str, Any]], class_name: str, label: str, sections: int) -> Figure:
    """Box plots of cosine per section, error-rate line and section histogram of one class."""
    by_section = {r["section"]: r for r in rows}
    xs = list(range(1, sections + 1))
    stats, errors, counts, significant = [], [], [], []
    for s in xs:
        r = by_section[s]
        stats.append(
            {
                "label": str(s),
                "med": r["cos_median"],
                "q1": r["cos_q1"],
                "q3": r["cos_q3"],
                "whislo": r["cos_whislo"],
                "whishi": r["cos_whishi"],
                "ci": [r["cos_ci_lo"], r["cos_ci_hi"]],
            }
        )
        errors.append(r["error_rate"])
        counts.append(r["n"])
        significant.append(r["significant"])
    return Figure(
        kind="box",
        title=f"{class_name}: cosine(clean, {label}) and error rate by scale section",
        xlabel="scale section",
        ylabel="cosine similarity",
        series=[{"label": "cosine", "x": xs, "stats": stats}],
        options={
            "secondary": {
                "kind": "line",
                "label": "error rate",
                "x": xs,
                "y": errors,
                "ylabel": "error rate",
            },
            "histogram": {"label": "samples", "x": xs, "y": counts},
            "significant": significant,
        },
    )


def scatter_figure(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    head_weight: np.ndarray | None,
    rng: np.random.Generator,
) -> Figure:
    """2-D feature scatter per class with the output layer's weight vectors (Figure 3)."""
    series = []
    for c, name in enumerate(class_names):
        idx = np.nonzero(labels == c)[0]
        if len(idx) > SCATTER_POINTS_PER_CLASS:
            idx = np.sort(rng.choice(idx, SCATTER_POINTS_PER_CLASS, replace=False))
        series.append(
            {"label": name, "x": features[idx, 0].tolist(), "y": features[idx, 1].tolist()}
        )
    options: dict[str, Any] = {}
    if head_weight is not None:
        options["vectors"] = [
            {"label": name, "x": float(w[0]), "y": float(w[1])}
            for name, w in zip(class_names, head_weight, strict=False)
        ]
    return Figure(
        kind="scatter",
        title="2-D feature vectors and output-layer weight vectors",
        xlabel="feature 1",
        ylabel="feature 2",
        series=series,
        options=options,
    )
