"""Findings of the ``msa`` and ``hpm-sensitivity`` metrics: the MSA-vs-naive gap (gradient
obfuscation), FC vs HPM robustness, batch dependence, FC vs L2 sensitivity.

Pure functions of the summaries (no model), so a test can feed numbers and read the
sentence; a missing number (None, NaN) gives no finding.
"""

from __future__ import annotations

import math
from typing import Any

from featrob import Finding


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _eps_prefixes(summary: dict[str, Any]) -> list[str]:
    """``eps0.1``-style prefixes with both the MSA and the naive accuracy."""
    return [
        key[: -len(".hpm.msa")]
        for key in summary
        if key.startswith("eps")
        and key.endswith(".hpm.msa")
        and _number(summary[key]) is not None
        and _number(summary.get(key[: -len(".msa")] + ".naive")) is not None
    ]


def msa_findings(summary: dict[str, Any]) -> list[Finding]:
    """The naive-vs-MSA gap (where it is largest), FC vs HPM robust accuracy there, and how
    much the HPM head's predictions change with the evaluation batch.

    Args:
        summary: the ``msa`` summary (``epsE.hpm.msa``, ``epsE.hpm.naive``,
            ``epsE.fc.robust``, ``epsE.hpm.square_only``, ``batch.B.INPUTS_changed``,
            ``batch_size``).

    Returns:
        Up to three findings.
    """
    found = []
    prefixes = _eps_prefixes(summary)
    if prefixes:
        gap = {p: summary[f"{p}.hpm.naive"] - summary[f"{p}.hpm.msa"] for p in prefixes}
        prefix = max(prefixes, key=lambda p: gap[p])
        msa, naive = float(summary[f"{prefix}.hpm.msa"]), float(summary[f"{prefix}.hpm.naive"])
        at = f"eps={prefix[3:]}"
        values: dict[str, Any] = {"eps": prefix[3:], "msa": msa, "naive": naive}
        if naive > msa:
            text = (
                f"Attacked naively, the HPM head looks {(naive - msa) * 100:.1f} points more "
                f"robust than under the Mixed Surrogate Attack at {at} ({naive:.1%} vs "
                f"{msa:.1%}): the naive evaluation overestimates its robustness"
            )
            score = 0.3 + 0.5 * min(1.0, (naive - msa) / 0.2)
        else:
            text = (
                f"The naive evaluation of the HPM head is not more optimistic than the Mixed "
                f"Surrogate Attack at {at} ({naive:.1%} vs {msa:.1%})"
            )
            score = 0.15
        square_only = summary.get(f"{prefix}.hpm.square_only")
        if isinstance(square_only, int) and square_only > 0:
            text += f"; only the gradient-free Square attack broke {square_only} samples"
            values["square_only"] = square_only
        found.append(Finding(text + ".", score, values))
        fc = _number(summary.get(f"{prefix}.fc.robust"))
        if fc is not None:
            found.append(
                Finding(
                    f"Under the MSA protocol the HPM head keeps {msa:.1%} robust accuracy at "
                    f"{at}, against {fc:.1%} for the FC head on the same backbone.",
                    0.35,
                    {"eps": prefix[3:], "hpm": msa, "fc": fc},
                )
            )
    changed = [
        (float(v), key.split(".")[1], key.split(".", 2)[2][: -len("_changed")])
        for key, v in summary.items()
        if key.startswith("batch.") and key.endswith("_changed") and _number(v) is not None
    ]
    if changed and max(changed)[0] > 0:
        share, size, inputs = max(changed)
        what = f"MSA adversarial (eps={inputs[7:]})" if inputs.startswith("msa_eps") else inputs
        run = summary.get("batch_size")
        against = f" than at the run's batch size {run}" if run is not None else ""
        found.append(
            Finding(
                f"The HPM head's predictions depend on the evaluation batch: {share:.1%} of "
                f"the {what} inputs are classified differently at batch size {size}"
                f"{against}.",
                0.2 + 0.3 * min(1.0, share / 0.3),
                {"changed": share, "batch_size": int(size), "inputs": inputs},
            )
        )
    return found


def hpm_sensitivity_findings(summary: dict[str, Any]) -> list[Finding]:
    """How often the FC head is more sensitive than the L2 head's worst case, and how well
    the angle model fits.

    Args:
        summary: the ``hpm-sensitivity`` summary (``fc_more_sensitive_share``,
            ``s_c.median``, ``sup_s_d.median``, ``samples``, ``attack``,
            ``cdf_model_vs_empirical_ks``, ``cdf_isotropic_vs_empirical_ks``).

    Returns:
        Up to two findings.
    """
    found = []
    share = _number(summary.get("fc_more_sensitive_share"))
    s_c, s_d = _number(summary.get("s_c.median")), _number(summary.get("sup_s_d.median"))
    if share is not None and s_c is not None and s_d is not None:
        found.append(
            Finding(
                f"The FC head is more sensitive than the L2 head's worst case on {share:.1%} "
                f"of the {summary.get('samples')} samples under {summary.get('attack')} "
                f"(median S_c {s_c:.3g}, sup S_d {s_d:.3g}).",
                0.2 + 0.3 * share,
                {"fc_more_sensitive_share": share, "s_c_median": s_c, "sup_s_d_median": s_d},
            )
        )
    model = _number(summary.get("cdf_model_vs_empirical_ks"))
    isotropic = _number(summary.get("cdf_isotropic_vs_empirical_ks"))
    if model is not None and isotropic is not None:
        found.append(
            Finding(
                f"The angle model (eq. 13) fits the measured CDF of |cos theta_c| / "
                f"|sin theta_d| within KS distance {model:.3f}; the isotropic model (eq. 29) "
                f"is {isotropic:.3f} off.",
                0.15,
                {"ks_model": model, "ks_isotropic": isotropic},
                "ratio_cdf",
            )
        )
    return found
