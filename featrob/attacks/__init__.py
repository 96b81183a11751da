"""Perturbation methods: the :class:`Attack` interface and the built-in attacks."""

from featrob.attacks.base import Attack, cross_entropy, margin_loss, misclassified, parse_norm
from featrob.attacks.fgsm import FGSM
from featrob.attacks.gabor import GaborNoise
from featrob.attacks.pgd import PGD

__all__ = [
    "FGSM",
    "PGD",
    "Attack",
    "GaborNoise",
    "cross_entropy",
    "margin_loss",
    "misclassified",
    "parse_norm",
]
