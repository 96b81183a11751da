"""Built-in training methods: ``standard``, ``pgd`` (Madry et al.) and ``trades`` (Zhang et al.)."""

from __future__ import annotations

from featrob import hookimpl


@hookimpl
def featrob_register_training_methods(register):
    """Register the built-in training methods."""
    from featrob.builtins.training_methods import PGDTraining, StandardTraining, TradesTraining

    register(StandardTraining)
    register(PGDTraining)
    register(TradesTraining)
