"""featrob plugin ``compression``: feature compression vs the optimal classifier (paper 001).

"Feature compression is the root cause of adversarial fragility in neural network
classifiers". Registers

* the metric ``compression`` (:class:`featrob_compression.metric.FeatureCompression`): per
  sample and its nearest other-class sample, the optimal classifier's tolerance ``d_opt``,
  the local (Theorem 7) and path (Section 5, eq. 8) compression ratios, the predicted attack
  length (eqs. 8-9), the minimal perturbation a minimum-norm attack finds and the fragility
  ``delta_min / d_opt``, with their correlations;
* the command ``featrob compression theory``: the paper's synthetic experiments (Theorem 6's
  linear networks with the QR prediction, Theorem 7's ReLU networks against ``sqrt(2/n)``).

Run: ``featrob run --plugin compression``.
"""

from __future__ import annotations

from featrob import hookimpl

__version__ = "0.1.0"


@hookimpl
def featrob_register_metrics(register):
    """Register the ``compression`` metric."""
    from featrob_compression.metric import FeatureCompression

    register(FeatureCompression)


@hookimpl
def featrob_register_commands(app):
    """Add ``featrob compression theory``."""
    from featrob_compression.cli import add_commands

    add_commands(app)
