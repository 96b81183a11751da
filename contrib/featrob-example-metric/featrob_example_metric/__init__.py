"""featrob plugin ``example_metric``: how much more an attack flips than random noise.

The smallest complete metric plugin: one :class:`~featrob.Metric` subclass with
declared options, registered through the ``featrob_register_metrics`` hook, found through the
``featrob`` entry point in ``pyproject.toml``. Run it with
``featrob run --plugin example_metric``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from featrob import Metric, MetricResult, hookimpl, int_param

__version__ = "0.1.0"


class NoiseFlips(Metric):
    """Share of correct predictions that random noise in the eps ball flips, beside the share
    the run's attacks flip: a model far more fragile to attacks than to noise is fragile
    along few, specific directions.

    Options (``defaults``):
        draws (8): random perturbations per sample (uniform in the Linf ball, or on the
            L2 sphere of radius eps), seeded per sample.
    """

    name: ClassVar[str] = "noise_flips"
    description: ClassVar[str] = "prediction flips under random noise vs under the run's attacks"
    defaults: ClassVar[dict[str, Any]] = {"draws": 8}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.options["draws"] = int_param(self.name, "draws", self.options["draws"], 1)

    def compute(self, ctx) -> MetricResult:
        """Flip rates under noise and under attack, over the correctly classified samples."""
        x, y = ctx.inputs(), ctx.labels
        eps, norm = ctx.config.eps, ctx.config.norm
        gen = ctx.torch_generator(self.name)
        with torch.no_grad():
            correct = ctx.model(x.to(ctx.device)).argmax(1).cpu() == y
            flipped = torch.zeros(len(x), dtype=torch.bool)
            for _ in range(self.options["draws"]):
                noise = torch.rand(x.shape, generator=gen) * 2 - 1
                if norm == "l2":
                    noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                noisy = (x + eps * noise).clamp(0, 1)
                flipped |= ctx.model(noisy.to(ctx.device)).argmax(1).cpu() != y
        evaluation = ctx.evaluate()
        n_correct = int(correct.sum())
        noise_rate = float((flipped & correct).sum()) / max(n_correct, 1)
        attack_rate = float((~evaluation.robust.cpu() & correct).sum()) / max(n_correct, 1)
        return MetricResult(
            summary={
                "correct": n_correct,
                "noise_flip_rate": noise_rate,
                "attack_flip_rate": attack_rate,
                "attack_over_noise": attack_rate / noise_rate if noise_rate else None,
            }
        )


@hookimpl
def featrob_register_metrics(register):
    """Register the ``noise_flips`` metric."""
    register(NoiseFlips)
