"""Perturbation methods and the robust-accuracy protocol.

* :class:`Attack` (and :class:`MinimumNormAttack`): the interface every attack implements.
* Built-in attacks: FGSM, PGD, Gabor noise, and AutoAttack's suite (APGD-CE, APGD-DLR,
  APGD-T, FAB, FAB-T, Square).
* :func:`evaluate`: AutoAttack-style robust accuracy with a per-sample worst case,
  surrogates (:class:`Plan`, :class:`Ensemble`), BPDA and masking checks.

Submodules are imported on first use, so ``import featrob.attacks`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from featrob.attacks.base import (
    Attack,
    MinimumNormAttack,
    MinNormResult,
    cross_entropy,
    margin_loss,
    misclassified,
    parse_norm,
)

_LAZY = {
    "FGSM": "featrob.attacks.fgsm",
    "PGD": "featrob.attacks.pgd",
    "GaborNoise": "featrob.attacks.gabor",
    "APGD": "featrob.attacks.apgd",
    "APGDDLR": "featrob.attacks.apgd",
    "APGDTargeted": "featrob.attacks.apgd",
    "SquareAttack": "featrob.attacks.square",
    "FAB": "featrob.attacks.fab",
    "FABTargeted": "featrob.attacks.fab",
    "evaluate": "featrob.attacks.protocol",
    "Evaluation": "featrob.attacks.protocol",
    "Plan": "featrob.attacks.protocol",
    "PRESETS": "featrob.attacks.factory",
    "Ensemble": "featrob.attacks.surrogate",
    "BPDA": "featrob.attacks.surrogate",
    "InputQuantization": "featrob.attacks.surrogate",
    "dlr_loss": "featrob.attacks.losses",
    "dlr_targeted_loss": "featrob.attacks.losses",
}

__all__ = [
    "Attack",
    "MinNormResult",
    "MinimumNormAttack",
    "cross_entropy",
    "margin_loss",
    "misclassified",
    "parse_norm",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featrob.attacks' has no attribute {name!r}")
