"""featrob plugin ``sensitivity``: per-feature sensitivity under Linf perturbation (paper 004).

"On the Robustness of Features Learned by Deep Neural Networks". Registers the metric
``sensitivity`` (:class:`featrob_sensitivity.metric.FeatureSensitivity`): for every feature of
the penultimate layer (or any named layer), PGD maximises and minimises it over the Linf
ball around each sample; the feature's sensitivity is the mean larger change (Definition 2),
normalised by the linear head, reported beside PGD-20 robust accuracy and Theorem 3's
robust-accuracy bound at the same eps values, optionally for several models side by side.

Run: ``featrob run --plugin sensitivity``.
"""

from __future__ import annotations

from featrob import hookimpl

__version__ = "0.1.0"


@hookimpl
def featrob_register_metrics(register):
    """Register the ``sensitivity`` metric."""
    from featrob_sensitivity.metric import FeatureSensitivity

    register(FeatureSensitivity)
