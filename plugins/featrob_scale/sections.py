"""Scale sections and the statistics of one (class, section) group (pure NumPy).

Park & Lee (Mathematics 2025, section 4.2) split, per class, the range ``[0, max scale of the
class]`` of feature-vector scales (L2 norms) into S equal sections and compare, section by
section, the cosine similarity of clean and perturbed feature vectors (section 4.3) and the
error rate ``ER_c^i = m_c^i / n_c^i`` (section 4.4). Section 4.5 adds 95% bootstrap
confidence intervals from 1,000 resamples and ignores sections with fewer than 100 samples.

Everything here is vectorised over samples; the only loops run over groups (classes x
sections, at most a few hundred) and never over samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Tukey's whisker reach, in inter-quartile ranges (matplotlib's default ``whis``).
WHISKER_IQR = 1.5


def scales(features: np.ndarray) -> np.ndarray:
    """Feature-vector scale = L2 norm of each row of ``features`` ``[N, ...]`` (flattened)."""
    flat = features.reshape(len(features), -1).astype(np.float64)
    return np.sqrt(np.einsum("nd,nd->n", flat, flat))


def cosine(clean: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity ``x . x' / (|x| |x'|)``; 0 where either vector is zero
    (a dead feature vector has no direction, and the paper's formula is undefined there)."""
    a = clean.reshape(len(clean), -1).astype(np.float64)
    b = perturbed.reshape(len(perturbed), -1).astype(np.float64)
    denom = np.sqrt(np.einsum("nd,nd->n", a, a) * np.einsum("nd,nd->n", b, b))
    dot = np.einsum("nd,nd->n", a, b)
    out = np.zeros(len(a))
    np.divide(dot, denom, out=out, where=denom > 0)
    return np.clip(out, -1.0, 1.0)


def assign_sections(scale: np.ndarray, labels: np.ndarray, num_classes: int, sections: int):
    """Section index (0-based) of every sample, and each class's maximum scale.

    Section ``i`` of class ``c`` holds the scales in ``[i, i + 1) * max_c / S``; the class
    maximum itself falls in the last section. A class whose scales are all zero puts every
    sample in section 0.

    Returns:
        ``(section [N] int64, class_max [K] float64)``; ``class_max`` is NaN for a class
        without samples.
    """
    if sections < 1:
        raise ValueError(f"sections must be >= 1, got {sections}")
    class_max = np.full(num_classes, -np.inf)
    np.maximum.at(class_max, labels, scale)
    top = class_max[labels]
    rel = np.divide(scale, top, out=np.zeros_like(scale), where=top > 0)
    section = np.minimum(np.floor(rel * sections).astype(np.int64), sections - 1)
    class_max[np.isneginf(class_max)] = np.nan
    return section, class_max


def merge_sections(section: np.ndarray, factor: int) -> np.ndarray:
    """Pairwise (``factor`` 2) or coarser aggregation: fine sections ``1-2 -> 1, 3-4 -> 2``
    ..., as the paper combines S = 1-20 into S = 1-10 (section 4.6)."""
    return section // factor


@dataclass
class BoxStats:
    """A box plot's numbers (matplotlib ``bxp`` keys) for one group."""

    med: float
    q1: float
    q3: float
    whislo: float
    whishi: float

    def as_dict(self) -> dict[str, float]:
        """``{"med", "q1", "q3", "whislo", "whishi"}``."""
        return {k: float(v) for k, v in vars(self).items()}


def box_stats(values: np.ndarray) -> BoxStats:
    """Median, quartiles and Tukey whiskers (the most extreme values within 1.5 IQR of the
    box), as matplotlib's ``boxplot`` draws them. NaNs for an empty group."""
    if len(values) == 0:
        nan = float("nan")
        return BoxStats(nan, nan, nan, nan, nan)
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    iqr = q3 - q1
    inside_low = values[values >= q1 - WHISKER_IQR * iqr]
    inside_high = values[values <= q3 + WHISKER_IQR * iqr]
    return BoxStats(med, q1, q3, inside_low.min(), inside_high.max())


def bootstrap_median_ci(
    values: np.ndarray, rng: np.random.Generator, resamples: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the median (all resamples at once)."""
    if len(values) == 0:
        return float("nan"), float("nan")
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    medians = np.median(values[draws], axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(medians, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_rate_ci(
    errors: int, n: int, rng: np.random.Generator, resamples: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of an error rate ``errors / n``.

    Resampling n zero/one outcomes with replacement and counting the ones is exactly a
    Binomial(n, errors / n) draw, so the bootstrap distribution is drawn as binomials: the
    same distribution as index resampling, without materialising ``resamples x n`` indices.
    """
    if n == 0:
        return float("nan"), float("nan")
    rates = rng.binomial(n, errors / n, size=resamples) / n
    alpha = (1 - level) / 2
    lo, hi = np.quantile(rates, [alpha, 1 - alpha])
    return float(lo), float(hi)


def group_rng(seed: int, *parts: int) -> np.random.Generator:
    """A generator for one group, independent of which other groups exist or run first."""
    return np.random.default_rng([seed, *parts])
