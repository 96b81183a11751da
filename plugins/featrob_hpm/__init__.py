"""featrob plugin ``hpm`` (Wang, "Sensitivity as a Double-Edged Sword", paper 002).

Registers

* the head ``hpm`` (:class:`featrob_hpm.heads.HPMHead`, eqs. 14-18: EMA dataset-level
  prototypes, STE batch prototypes from the FC logits, a linear mixer, ``-L2`` logits); the
  plain ``l2`` head (learned or EMA prototypes) is featrob's own;
* the training method ``ikl`` (:mod:`featrob_hpm.ikl`: clean CE + the IKL loss of Cui et
  al. on TRADES-style adversarial examples), the paper's fine-tuning loss;
* the metric ``hpm-sensitivity`` (:mod:`featrob_hpm.metric_sensitivity`: FC vs L2
  sensitivity, eqs. 3-8, the angle model of eqs. 12-13 and the isotropic model of eq. 29);
* the metric ``msa`` (:mod:`featrob_hpm.metric_msa`: the HPM head fine-tuned on the run
  model's frozen backbone and evaluated against the FC model with the Mixed Surrogate
  Attack protocol, the batch-size study, Figure 1 in small, the ablations).

Run: ``featrob run --plugin hpm``.
"""

from __future__ import annotations

from featrob import hookimpl

__version__ = "0.1.0"


@hookimpl
def featrob_register_heads(register):
    """Register the ``hpm`` head."""
    from featrob_hpm.heads import hpm

    register(
        hpm,
        name="hpm",
        description=(
            "Hybrid Prototype Mixing head, -L2 to mixed EMA and batch prototypes "
            "(options: momentum, use_global, mixer, metric, assignment)"
        ),
    )


@hookimpl
def featrob_register_training_methods(register):
    """Register the ``ikl`` training method."""
    from featrob_hpm.ikl import IKLTraining

    register(IKLTraining)


@hookimpl
def featrob_register_metrics(register):
    """Register the ``hpm-sensitivity`` and ``msa`` metrics."""
    from featrob_hpm.metric_msa import MixedSurrogateAttack
    from featrob_hpm.metric_sensitivity import FeatureSensitivity

    register(FeatureSensitivity)
    register(MixedSurrogateAttack)
