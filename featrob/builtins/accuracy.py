"""Built-in metrics: clean accuracy and robust accuracy under the run's attacks."""

from __future__ import annotations

from featrob import hookimpl


@hookimpl
def featrob_register_metrics(register):
    """Register ``clean_accuracy`` and ``robust_accuracy``."""
    from featrob.builtins.accuracy_metrics import CleanAccuracy, RobustAccuracy

    register(CleanAccuracy)
    register(RobustAccuracy)
