"""featrob plugin ``collision``: layer-by-layer collision distances and optimal-loss lower
bounds (paper 003, "Evaluating the Adversarial Robustness of CNNs Layer by Layer").

* :mod:`featrob_collision.search`: Algorithm 1, the collision search through a feature
  extractor composed with a random projection, batched over pairs and projections;
* :mod:`featrob_collision.conflict`: Algorithm 2's optimal cross-entropy and 0-1 loss over a
  bipartite conflict graph (exact max-flow path, cvxpy, matching and LP).

* the metric ``collision`` (:class:`featrob_collision.metric.LayerCollisions`): distances
  of every cross-class pair of two classes at every layer, kept in the feature store, and
  the optimal-loss curves against eps (Figures 5-15).

Run: ``featrob run --plugin collision``.
"""

from __future__ import annotations

from featrob import hookimpl

__version__ = "0.1.0"


@hookimpl
def featrob_register_metrics(register):
    """Register the ``collision`` metric."""
    from featrob_collision.metric import LayerCollisions

    register(LayerCollisions)
