"""The ``sensitivity`` metric: how far each feature moves under an Linf perturbation (paper 004).

For every feature ``f_j`` of a layer (the penultimate one by default) and every analysed
sample, PGD maximises and minimises ``f_j`` over the Linf ball; the feature's sensitivity at
eps is the mean over samples of the larger change (Definition 2), normalised by the linear
head (:mod:`featrob_sensitivity.theorem`). Beside it, at the same eps values: PGD-20 robust
accuracy (the paper's Figure 1) and Theorem 3's bound. ``compare`` adds other models (PGD- or
TRADES-trained, or checkpoints) in one report, the paper's normal vs adversarial comparison.

Beside the mean over all features the summary gives the number of *live* features (those
that move at all) and their mean: adversarial training can lower the mean mostly by
switching features off (MNIST small CNN, PGD: 25 of 100 live, each as sensitive as the
normal model's) rather than by making the live ones robust.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from featrob import (
    ConfigError,
    Metric,
    MetricResult,
    Passes,
    PlanInfo,
    int_param,
    parse_fraction,
)
from featrob_sensitivity.extremes import feature_extremes
from featrob_sensitivity.findings import model_findings
from featrob_sensitivity.measure import FeatureExtremes, entry_params, measure_extremes
from featrob_sensitivity.report import build_result
from featrob_sensitivity.theorem import feature_scales, head_weight, margins

if TYPE_CHECKING:
    from featrob import RunContext


@dataclass
class ModelSensitivity:
    """One model's measurements.

    Attributes:
        label: the model's name in tables (its training method, or the compare spec).
        layer: the analysed layer; ``dim`` its width; ``features`` the analysed indices.
        scales: ``[K]`` normalisation ``s_j`` of the analysed features, None without a
            linear head on this layer.
        margin: ``[N]`` logit margins of the analysed samples.
        extremes: per eps, the measured extremes.
        robust_accuracy, clean_accuracy: per eps, under the accuracy attack (None if off).
    """

    label: str
    layer: str
    dim: int
    features: np.ndarray
    scales: np.ndarray | None
    margin: np.ndarray
    extremes: list[FeatureExtremes] = field(default_factory=list)
    robust_accuracy: list[float | None] = field(default_factory=list)
    clean_accuracy: float = float("nan")


class FeatureSensitivity(Metric):
    """Per-feature sensitivity under Linf perturbation, with robust accuracy and Theorem 3.

    Options (``defaults``):
        layer ("features"): the analysed layer (any named layer; normalisation and Theorem
            3 need the feature layer feeding a linear head).
        eps (None): Linf radii in [0, 1] pixel units; None is the run's eps. The paper's list
            is ``["2/255", "3/255", "4/255", "10/255"]`` (its 0.04, 0.06, 0.08, 0.2 in
            standardised units); cost is linear in the number of values.
        samples (32): analysed samples, a seeded subset of the run's (the paper: 512). The
            small defaults keep a default ``featrob run`` (every installed metric) at
            seconds on a 2-core CPU; the example config has the paper-like budget.
        features ("all"): every feature of the layer, or a number: a seeded subset.
        steps (20): PGD steps per feature and direction; random start in the ball.
        rel_step_size (None): step as a fraction of eps; None is PGD's ``2.5 / steps``
            (eps / 8 at 20 steps), constant schedule; the best iterate is kept. A replica
            whose iterate stops moving (a ReLU feature pushed to 0, a zero gradient, a
            corner of the box) is dropped from later passes (PGD's exact
            ``drop_stationary``): most of the speed-up on a 2-core CPU.
        accuracy_steps (20): PGD steps of the robust-accuracy evaluation (0: skip it).
        batch_inputs (None): most PGD replicas (samples x features x 2) per pass; None is
            what fits the run's ``--max-memory`` (the extractor's forward/backward cost per
            input, measured), or four times the run's batch size without a budget. Memory
            scales with it; results do not.
        compare (None): a training method (``"pgd"``, ``"trades"``), a checkpoint, or a list
            of them: the same analysis on those models, side by side.
        bins (30): histogram bins of the figures.
    """

    name: ClassVar[str] = "sensitivity"
    description: ClassVar[str] = (
        "per-feature sensitivity under Linf PGD, robust accuracy and Theorem 3 (paper 004)"
    )
    defaults: ClassVar[dict[str, Any]] = {
        "layer": "features",
        "eps": None,
        "samples": 32,
        "features": "all",
        "steps": 20,
        "rel_step_size": None,
        "accuracy_steps": 20,
        "batch_inputs": None,
        "compare": None,
        "bins": 30,
    }
    budgets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"samples": 16},
        # the paper's 512 test images at its four radii (0.04 ... 0.2 standardised)
        "paper": {"samples": 512, "eps": ["2/255", "3/255", "4/255", "10/255"]},
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o["eps"] is not None:
            eps = o["eps"] if isinstance(o["eps"], (list, tuple)) else [o["eps"]]
            if not eps:
                raise ConfigError(f"{self.name}: eps must list at least one value")
            o["eps"] = sorted({parse_fraction(e, f"{self.name}: eps") for e in eps})
            if o["eps"][-1] > 1:
                raise ConfigError(f"{self.name}: Linf eps must be in [0, 1], got {o['eps'][-1]}")
        for key, low in (("samples", 1), ("steps", 1), ("accuracy_steps", 0), ("bins", 1)):
            o[key] = int_param(self.name, key, o[key], low)
        if o["features"] != "all":
            o["features"] = int_param(self.name, "features", o["features"], 1)
        if o["batch_inputs"] is not None:
            o["batch_inputs"] = int_param(self.name, "batch_inputs", o["batch_inputs"], 2)
        compare = o["compare"]
        compare = [] if compare is None else [compare] if isinstance(compare, str) else compare
        if not isinstance(compare, (list, tuple)) or not all(isinstance(c, str) for c in compare):
            raise ConfigError(f"{self.name}: compare takes a method, a checkpoint or a list")
        o["compare"] = list(compare)

    def passes(self, plan: PlanInfo) -> Passes | None:
        """Per eps, sample and feature: PGD up and down (``steps`` each, and the check of
        the best iterate); the robust-accuracy PGD per eps and sample; the clean features;
        all of it once per compared model."""
        o = self.options
        features = plan.num_features if o["features"] == "all" else o["features"]
        if not features:
            return None
        n = min(o["samples"], plan.n_samples)
        eps = len(o["eps"] or [plan.config.eps])
        pgd = Passes(forward=o["steps"] + 2, backward=o["steps"])
        accuracy = Passes(forward=o["accuracy_steps"] + 3, backward=o["accuracy_steps"])
        one_model = eps * n * (2 * features * pgd + accuracy) + Passes(forward=n)
        return (1 + len(o["compare"])) * one_model

    def compute(self, ctx: RunContext) -> MetricResult:
        """Measure the run's model and every compared one; build tables and figures."""
        positions = self._positions(ctx)
        models = [self.analyse(ctx.model_label, ctx.restricted(positions))]
        for spec in self.options["compare"]:
            other = ctx.compared(spec).restricted(positions)
            models.append(self.analyse(spec, other))
        result = build_result(models, self.options["bins"])
        result.findings = model_findings(models[0], result.summary)
        return result

    def eps_values(self, ctx: RunContext) -> list[float]:
        """The configured eps list, or the run's eps when the run is Linf."""
        if self.options["eps"] is not None:
            return self.options["eps"]
        if ctx.config.norm != "linf":
            raise ConfigError(
                f"{self.name} measures Linf sensitivity and the run is {ctx.config.norm}: "
                f'set metrics.{self.name}.eps (e.g. ["2/255", "4/255"])'
            )
        return [ctx.config.eps]

    def _positions(self, ctx: RunContext) -> np.ndarray:
        n = len(ctx.split)
        if self.options["samples"] >= n:
            return np.arange(n)
        chosen = ctx.rng("sensitivity.samples").choice(n, self.options["samples"], replace=False)
        return np.sort(chosen)

    def replicas_per_pass(
        self, ctx: RunContext, forward, x: torch.Tensor, seeds: torch.Tensor, dim: int
    ) -> int:
        """PGD replicas per pass: what fits ``--max-memory`` (two PGD steps of the real cell
        measured at two sizes), or four evaluation batches without a budget."""
        probe_attack = ctx.make_attack("pgd", eps=0.1, norm="linf", steps=2)

        def cell(n: int) -> None:  # n replicas: b samples x k features x 2 directions
            b = max(1, min(len(x), n // 2))
            k = max(1, n // (2 * b))
            features = torch.arange(k) % dim
            feature_extremes(forward, x[:b], features, probe_attack, seeds[:b])

        return ctx.chunk_size(forward, 4 * ctx.config.batch_size, work=cell)

    def analyse(self, label: str, ctx: RunContext) -> ModelSensitivity:
        """Extremes at every eps, margins, robust accuracy for one model on the subset."""
        o = self.options
        model = ctx.model
        layer = model.resolve_layer(o["layer"])

        def forward(z: torch.Tensor) -> torch.Tensor:
            with ctx.autocast():
                return model.forward_to(z, layer).flatten(1).float()

        x = ctx.inputs().to(ctx.device)
        with torch.no_grad():
            dim = int(forward(x[:1]).shape[1])
        features = np.arange(dim)
        if o["features"] != "all" and o["features"] < dim:
            rng = ctx.rng(f"sensitivity.features.{layer}")
            features = np.sort(rng.choice(dim, o["features"], replace=False))
        weight = head_weight(model.head) if layer == model.resolve_layer("features") else None
        scales = None if weight is None else feature_scales(weight)[features]
        logits = ctx.features("logits").values
        result = ModelSensitivity(
            label=label,
            layer=layer,
            dim=dim,
            features=features,
            scales=scales,
            margin=margins(logits, ctx.labels),
            clean_accuracy=float((logits.argmax(1) == ctx.labels).double().mean()),
        )
        seeds = ctx.sample_seeds().to(ctx.device)
        batch_inputs = o["batch_inputs"] or self.replicas_per_pass(ctx, forward, x, seeds, dim)
        for eps in self.eps_values(ctx):
            attack = ctx.make_attack(
                "pgd",
                eps=eps,
                norm="linf",
                steps=o["steps"],
                rel_step_size=o["rel_step_size"],
                drop_stationary=True,
            )
            result.extremes.append(
                measure_extremes(
                    forward,
                    x,
                    seeds,
                    ctx.indices.numpy(),
                    features,
                    attack,
                    dim=dim,
                    batch_inputs=batch_inputs,
                    # forward runs under ctx.autocast(): the key records --amp
                    cached_rows=partial(
                        ctx.cached_rows, "feature-extremes", entry_params(layer, attack)
                    ),
                    label=f"sensitivity {label} eps={eps:.4g}",
                )
            )
            acc = None
            if o["accuracy_steps"]:
                pgd = ctx.make_attack("pgd", eps=eps, norm="linf", steps=o["accuracy_steps"])
                acc = ctx.evaluate([pgd], eps=eps, norm="linf").robust_accuracy
            result.robust_accuracy.append(acc)
        return result
