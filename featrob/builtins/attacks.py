"""Built-in attacks plugin: FGSM, PGD and Gabor noise.

The attack classes are imported inside the hook, so importing this module (which
``featrob --help`` does for every plugin) does not import torch.
"""

from __future__ import annotations

from featrob import hookimpl
from featrob.hookspecs import Register


@hookimpl
def featrob_register_attacks(register: Register) -> None:
    """Register ``fgsm``, ``pgd`` and ``gabor`` (names from the classes' ``name``)."""
    from featrob.attacks import FGSM, PGD, GaborNoise

    register(FGSM)
    register(PGD)
    register(GaborNoise)
