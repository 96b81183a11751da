"""A complete featrob metric plugin in one file: the distribution of logit margins.

Run it without installing anything::

    featrob run --plugin examples/margin_plugin.py

or package it with an entry point (see README, "Write a plugin").
"""

from __future__ import annotations

import featrob
from featrob import Figure, Metric, MetricResult, margin_loss


class LogitMargin(Metric):
    """Margin = true logit minus the best other logit; small margins are fragile samples."""

    name = "logit_margin"
    description = "distribution of clean logit margins (true minus best other logit)"
    defaults = {"threshold": 1.0, "bins": 30}

    def compute(self, ctx):
        clean = ctx.features("logits")  # computed once, shared through the feature store
        margin = -margin_loss(clean.logits, clean.labels)  # positive when correct
        threshold = self.options["threshold"]
        return MetricResult(
            summary={
                "median_margin": float(margin.median()),
                "share_below_threshold": float((margin < threshold).float().mean()),
                "threshold": threshold,
            },
            arrays={"margin": margin.numpy(), "indices": ctx.indices.numpy()},
            figures={
                "margins": Figure(
                    kind="hist",
                    title="Clean logit margins",
                    xlabel="margin",
                    ylabel="samples",
                    series=[
                        {"label": "margin", "values": margin.tolist(), "bins": self.options["bins"]}
                    ],
                )
            },
        )


@featrob.hookimpl
def featrob_register_metrics(register):
    """Register the metric."""
    register(LogitMargin)
