"""A complete featrob metric plugin in one file: the distribution of logit margins.

Run it without installing anything::

    featrob run --plugin examples/margin_plugin.py

or package it with an entry point (see README, "Write a plugin").
"""

from __future__ import annotations

import featrob
from featrob import Figure, Finding, Metric, MetricResult, margin_loss


def margin_findings(median: float, share_below: float, threshold: float) -> list[Finding]:
    """The plain-language answer, built from the numbers (reports rank it with the others)."""
    if median != median or share_below != share_below:  # NaN: nothing to say
        return []
    return [
        Finding(
            text=f"{share_below:.0%} of the samples have a clean logit margin below "
            f"{threshold:g} (median margin {median:.2f}).",
            score=0.2 + 0.4 * share_below,  # in [0, 1]: 1 is the run's headline answer
            values={"share_below": share_below, "median_margin": median},
            figure="margins",  # report.html links the sentence to this figure
        )
    ]


class LogitMargin(Metric):
    """Margin = true logit minus the best other logit; small margins are fragile samples."""

    name = "logit_margin"
    description = "distribution of clean logit margins (true minus best other logit)"
    defaults = {"threshold": 1.0, "bins": 30}

    def compute(self, ctx):
        clean = ctx.features("logits")  # computed once, shared through the feature store
        margin = -margin_loss(clean.logits, clean.labels)  # positive when correct
        threshold = self.options["threshold"]
        median = float(margin.median())
        share_below = float((margin < threshold).float().mean())
        return MetricResult(
            summary={
                "median_margin": median,
                "share_below_threshold": share_below,
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
            findings=margin_findings(median, share_below, threshold),
        )


@featrob.hookimpl
def featrob_register_metrics(register):
    """Register the metric."""
    register(LogitMargin)
