"""Built-in classification heads plugin: ``fc`` (linear) and ``l2`` (nearest prototype).

The heads live in :mod:`featrob.models.heads`; it is imported inside the hook so that
importing this plugin module stays cheap (no torch).
"""

from __future__ import annotations

from featrob import hookimpl
from featrob.hookspecs import Register


@hookimpl
def featrob_register_heads(register: Register) -> None:
    """Register the ``fc`` and ``l2`` heads."""
    from featrob.models import heads

    register(heads.fc, name="fc", description="linear head W z + b (option: bias)")
    register(
        heads.l2,
        name="l2",
        description=(
            "nearest-prototype head, logits = -||z - c_k|| "
            "(options: prototypes=learned|ema, init, momentum)"
        ),
    )
