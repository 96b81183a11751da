"""featrob plugin ``collision``: layer-by-layer collision distances and optimal-loss lower
bounds (paper 003, "Evaluating the Adversarial Robustness of CNNs Layer by Layer").

* :mod:`featrob_collision.search`: Algorithm 1, the collision search through a feature
  extractor composed with a random projection, batched over pairs and projections;
* :mod:`featrob_collision.conflict`: Algorithm 2's optimal cross-entropy and 0-1 loss over a
  bipartite conflict graph (exact max-flow path, cvxpy, matching and LP).

Not yet registered as a plugin (the metric, store integration and benchmark follow).
"""

from __future__ import annotations

__version__ = "0.1.0"
