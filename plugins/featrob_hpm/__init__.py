"""featrob plugin ``hpm`` (Wang, "Sensitivity as a Double-Edged Sword", paper 002): in
progress, not yet registered as a plugin.

Landed so far: :mod:`featrob_hpm.sensitivity` (eqs. 3-5, condition (8), the isotropic CDF of
eq. 29 and the empirical truncated-Gaussian model of eqs. 12-13, each checked against Monte
Carlo sampling) and :mod:`featrob_hpm.heads` (the L2 head and the HPM head of eqs. 14-18
with its ablations). Registering the heads, IKL fine-tuning, the metric that measures the
angles on a real model, and the Mixed Surrogate Attack protocol follow; the entry point is
added when the plugin can run end to end.
"""

from __future__ import annotations

__version__ = "0.0.1"
