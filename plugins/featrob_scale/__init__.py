"""featrob plugin ``scale``: adversarial vulnerability by feature-vector scale section.

Park & Lee, "The Role of Feature Vector Scale in the Adversarial Vulnerability of
Convolutional Neural Networks" (Mathematics 2025, 13(18), 3026). Registers

* the metric ``scale`` (:class:`featrob_scale.metric.ScaleSections`): per class, the range of
  feature scales (L2 norms of the layer before the output layer) is cut into S sections;
  per section and perturbation: sample count, clean-vs-perturbed feature cosine and error
  rate with bootstrap confidence intervals, Spearman trends against the section index;
* the training method ``scale-aware`` (:class:`featrob_scale.training.ScaleAwareTraining`),
  the paper's untested proposal made concrete, so the metric can compare models.

Run: ``featrob run --plugin scale`` (``--set metrics.scale.compare=scale-aware`` adds the
comparison with a scale-aware-trained model).
"""

from __future__ import annotations

from featrob import hookimpl

__version__ = "0.1.0"


@hookimpl
def featrob_register_metrics(register):
    """Register the ``scale`` metric."""
    from featrob_scale.metric import ScaleSections

    register(ScaleSections)


@hookimpl
def featrob_register_training_methods(register):
    """Register the ``scale-aware`` training method."""
    from featrob_scale.training import ScaleAwareTraining

    register(ScaleAwareTraining)
