"""Built-in attacks plugin: FGSM, PGD, Gabor noise, and the AutoAttack suite (APGD-CE,
APGD-DLR, APGD-T, FAB, FAB-T, Square).

The attack classes are imported inside the hook, so importing this module (which
``featrob --help`` does for every plugin) does not import torch.
"""

from __future__ import annotations

from featrob import hookimpl
from featrob.hookspecs import Register


@hookimpl
def featrob_register_attacks(register: Register) -> None:
    """Register the built-in attacks (names from the classes' ``name``)."""
    from featrob.attacks import FGSM, PGD, GaborNoise
    from featrob.attacks.apgd import APGD, APGDDLR, APGDTargeted
    from featrob.attacks.fab import FAB, FABTargeted
    from featrob.attacks.square import SquareAttack

    for cls in (FGSM, PGD, GaborNoise, APGD, APGDDLR, APGDTargeted, FAB, FABTargeted, SquareAttack):
        register(cls)
