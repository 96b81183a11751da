"""The ``hpm-sensitivity`` metric: FC vs L2 head sensitivity on a real model (paper 002,
Secs. 3.3-3.4, Figures 2-3).

On the analysed samples' backbone features ``z`` and the feature changes ``eps`` that the
run's first attack causes:

* per sample (own class ``y``): ``S_c`` (eq. 3, the FC weight row ``w_y``), ``sup S_d`` (eq. 5,
  the L2 prototype ``c_y``), and condition (8); with both heads on one backbone, (8) implies
  ``S_c >= sup S_d`` exactly, so the count of violations is a check (it must be 0);
* the angles between features and the reference vectors of the FC head (its weight rows)
  and of the L2 head (the class means of the training features), split into positive (own
  class) and negative samples, with truncated-normal fits on [0, pi] (eq. 12);
* the modelled CDF of ``|cos theta_c| / |sin theta_d|`` (eq. 13, from the fits) against the
  empirical CDF of the same ratio (FC angles against independently paired L2 angles), and
  the isotropic model's CDF (eq. 29) at the feature dimension for contrast.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from featrob import ConfigError, Figure, Metric, MetricResult, Passes, PlanInfo
from featrob_hpm import sensitivity as sens
from featrob_hpm.findings import hpm_sensitivity_findings
from featrob_hpm.finetune import train_features

if TYPE_CHECKING:
    from featrob import RunContext

#: Points of the CDF curves (a log grid of the ratio).
CDF_GRID = np.logspace(-3, 1, 121)


def _fit(pos: torch.Tensor, neg: torch.Tensor, num_classes: int) -> tuple:
    alpha = 1.0 / num_classes
    return (
        alpha,
        sens.fit_truncated_normal(pos.numpy()),
        sens.fit_truncated_normal(neg.numpy()),
    )


class FeatureSensitivity(Metric):
    """FC vs L2 sensitivity, the angle model of eqs. 12-13 and the isotropic model of eq. 29.

    Options (``defaults``):
        attack (None): the attack whose feature changes are measured (default: the run's
            first attack).
    """

    name: ClassVar[str] = "hpm-sensitivity"
    description: ClassVar[str] = (
        "FC vs L2-head feature sensitivity, angle fits and eq. 13 / eq. 29 CDFs (paper 002)"
    )
    defaults: ClassVar[dict[str, Any]] = {"attack": None}

    def passes(self, plan: PlanInfo) -> Passes:
        """The training features (one forward pass each) and the attack on every sample,
        for the FC and the L2 head."""
        attack = plan.make_attack(self.options["attack"]) if self.options["attack"] else None
        attacked = plan.evaluation_passes([attack] if attack else plan.attacks[:1])
        return Passes(forward=plan.n_train + 2 * plan.n_samples) + 2 * attacked

    def compute(self, ctx: RunContext) -> MetricResult:
        fc = ctx.model.head
        if not isinstance(fc, nn.Linear):
            raise ConfigError(
                f"{self.name} needs a model with a linear (FC) head, got {type(fc).__name__}"
            )
        attack = ctx.make_attack(self.options["attack"])
        z = ctx.features("features").values.double()
        z_adv = ctx.features("features", perturbation=attack).values.double()
        y = ctx.labels.long()
        train_z, train_y = train_features(ctx.model, ctx)
        protos = torch.zeros(ctx.num_classes, z.shape[1], dtype=torch.float64)
        protos.index_add_(0, train_y.long(), train_z.double())
        protos /= torch.bincount(train_y.long(), minlength=ctx.num_classes).clamp(min=1)[:, None]
        w = fc.weight.detach().cpu().double()

        eps = z_adv - z
        w_y, c_y = w[y], protos[y]
        s_c = sens.fc_sensitivity(z, eps, w_y)
        s_d = sens.l2_sensitivity_sup(z, eps.norm(dim=1), c_y)
        cond = sens.condition8(
            sens.angle_cos(z, w_y), sens.angle_cos(z, c_y), sens.angle_cos(eps, w_y)
        )
        violations = int((cond & (s_c < s_d * (1 - 1e-9))).sum())

        fc_pos, fc_neg = sens.class_angles(z, w, y)
        l2_pos, l2_neg = sens.class_angles(z, protos, y)
        fc_fit = _fit(fc_pos, fc_neg, ctx.num_classes)
        l2_fit = _fit(l2_pos, l2_neg, ctx.num_classes)
        modelled = sens.empirical_cdf_model(CDF_GRID, fc_fit, l2_fit)
        fc_all = torch.cat([fc_pos, fc_neg]).numpy()
        l2_all = torch.cat([l2_pos, l2_neg]).numpy()
        paired = ctx.rng(f"{self.name}.pairing").permutation(l2_all)[: len(fc_all)]
        ratio = np.abs(np.cos(fc_all)) / np.maximum(np.abs(np.sin(paired)), 1e-300)
        empirical = (ratio[None, :] <= CDF_GRID[:, None]).mean(1)
        isotropic = sens.isotropic_cdf(CDF_GRID, z.shape[1])

        finite = torch.isfinite(s_c) & torch.isfinite(s_d)
        summary: dict[str, Any] = {
            "samples": len(z),
            "feature_dim": z.shape[1],
            "attack": attack.label(),
            "fc_more_sensitive_share": float((s_c[finite] > s_d[finite]).double().mean()),
            "condition8_share": float(cond.double().mean()),
            "condition8_violations": violations,
            "s_c.median": float(s_c[finite].median()),
            "sup_s_d.median": float(s_d[finite].median()),
            "cdf_model_vs_empirical_ks": float(np.abs(modelled - empirical).max()),
            "cdf_isotropic_vs_empirical_ks": float(np.abs(isotropic - empirical).max()),
        }
        for head, (_alpha, pos, neg), angles in (
            ("fc", fc_fit, (fc_pos, fc_neg)),
            ("l2", l2_fit, (l2_pos, l2_neg)),
        ):
            summary[f"{head}.mu_pos_deg"], summary[f"{head}.sigma_pos_deg"] = np.degrees(pos)
            summary[f"{head}.mu_neg_deg"], summary[f"{head}.sigma_neg_deg"] = np.degrees(neg)
            summary[f"{head}.mean_pos_deg"] = math.degrees(float(angles[0].mean()))
            summary[f"{head}.mean_neg_deg"] = math.degrees(float(angles[1].mean()))
        summary = {k: float(v) if isinstance(v, np.floating) else v for k, v in summary.items()}
        figures = {
            "angles": Figure(
                kind="hist",
                series=[
                    {"label": f"{h} {s}", "values": np.degrees(a.numpy()).tolist(), "bins": 60}
                    for h, pair in (("fc", (fc_pos, fc_neg)), ("l2", (l2_pos, l2_neg)))
                    for s, a in zip(("positive", "negative"), pair, strict=True)
                ],
                title="Angles between features and class reference vectors (Fig. 2)",
                xlabel="angle (degrees)",
                ylabel="count",
            ),
            "ratio_cdf": Figure(
                kind="line",
                series=[
                    {"label": "empirical", "x": CDF_GRID.tolist(), "y": empirical.tolist()},
                    {"label": "model (eq. 13)", "x": CDF_GRID.tolist(), "y": modelled.tolist()},
                    {
                        "label": "isotropic (eq. 29)",
                        "x": CDF_GRID.tolist(),
                        "y": isotropic.tolist(),
                    },
                ],
                title="CDF of |cos theta_c| / |sin theta_d| (Fig. 3)",
                xlabel="x",
                ylabel="P(ratio <= x)",
                options={"logx": True},
            ),
        }
        return MetricResult(
            summary=summary,
            arrays={
                "s_c": s_c.numpy(),
                "sup_s_d": s_d.numpy(),
                "condition8": cond.numpy(),
                "cdf_grid": CDF_GRID,
                "cdf_empirical": empirical,
                "cdf_model": modelled,
                "cdf_isotropic": isotropic,
            },
            figures=figures,
            warnings=(
                [f"{violations} samples satisfy condition (8) but have S_c < sup S_d"]
                if violations
                else []
            ),
            findings=hpm_sensitivity_findings(summary),
        )
