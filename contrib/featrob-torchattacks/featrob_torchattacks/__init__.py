"""featrob plugin ``torchattacks``: every torchattacks attack as a featrob attack.

An adapter, not a copy: for each attack class ``torchattacks.NAME`` the plugin registers a
featrob :class:`~featrob.Attack` named ``torchattacks:NAME`` whose parameters
are the torchattacks constructor's keyword arguments (with their defaults), so
``--attack "torchattacks:CW(c=0.5, steps=100)"`` works like any built-in attack, including
inside featrob's AutoAttack-style evaluation and the feature store.

What the adapter does on top of torchattacks:

* ``eps`` (and ``norm`` where the attack takes one) come from featrob's threat model; attacks
  without an ``eps`` (CW, DeepFool, EAD, ...) are minimum-norm attacks, so their outputs are
  projected onto the eps ball, which keeps featrob's contract that every returned input is
  inside the ball and in [0, 1].
* torchattacks draws from torch's global generator: the adapter seeds it from the batch's
  per-sample seeds inside ``torch.random.fork_rng``, so runs repeat exactly, but unlike
  featrob's own attacks a sample's result depends on its batch.
* the model is the run's model in eval mode (normalisation inside, [0, 1] inputs), which is
  what torchattacks expects; a custom ``loss`` is not supported (torchattacks attacks carry
  their own), so metrics that need one use featrob's attacks.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from featrob import Attack, ConfigError, hookimpl, project

__version__ = "0.1.0"

#: Not per-sample attacks: combinators, attacks that need training data, the identity.
EXCLUDED = frozenset({"MultiAttack", "LGV", "VANILA", "AutoAttack"})
#: L2 attacks whose constructor has no ``norm`` argument.
L2_ATTACKS = frozenset({"PGDL2", "PGDRSL2", "CW", "DeepFool", "EADL1", "EADEN", "SparseFool"})
#: Score-based or noise attacks (no gradients).
GRADIENT_FREE = frozenset({"GN", "Square", "OnePixel", "Pixle", "SPSA"})


class _AsModule(nn.Module):
    """A forward function as the ``nn.Module`` torchattacks wants (it reads the device off a
    parameter and toggles train/eval mode)."""

    def __init__(self, forward: Any, device: torch.device) -> None:
        super().__init__()
        self.forward_fn = forward
        self.anchor = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_fn(x)


class TorchattacksAttack(Attack):
    """Base of the generated adapters; ``target`` is the torchattacks class."""

    target: ClassVar[type]
    batch_invariant: ClassVar[bool] = False  # torchattacks draws from torch's global RNG

    def perturb(
        self,
        forward: Any,
        x: Tensor,
        y: Tensor,
        *,
        loss: Any = None,
        success: Any = None,
        sample_seeds: Tensor | None = None,
    ) -> Tensor:
        """Run the torchattacks attack on the batch; project the result into the eps ball."""
        if loss is not None:
            raise ConfigError(f"{self.name}: torchattacks attacks cannot take a custom loss")
        x = x.detach()
        if len(x) == 0 or self.eps == 0:
            return x.clamp(0, 1)
        model = forward if isinstance(forward, nn.Module) else _AsModule(forward, x.device)
        if not any(True for _ in model.parameters()):
            model = _AsModule(model, x.device)
        kwargs = dict(self.params)
        signature = inspect.signature(self.target.__init__).parameters
        if "eps" in signature:
            kwargs["eps"] = self.eps
        if "norm" in signature:
            kwargs["norm"] = "Linf" if self.norm == "linf" else "L2"
        seeds = self._seeds(x, sample_seeds)
        seed = int(seeds.sum().item() % (2**63 - 1)) ^ self.seed
        was_training = model.training
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            attack = self.target(model, **kwargs)
            adv = attack(x, y)
        model.train(was_training)
        adv = adv.detach()
        finite = torch.isfinite(adv).flatten(1).all(dim=1).view(-1, *([1] * (x.dim() - 1)))
        adv = torch.where(finite, adv, x)  # a NaN model output must not leak into inputs
        return (x + project(adv - x, self.eps, self.norm)).clamp(0, 1)


def _defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {
        name: p.default
        for name, p in params.items()
        if name not in ("self", "model", "eps", "norm")
        and p.default is not inspect.Parameter.empty
        and p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def adapters() -> list[type[Attack]]:
    """One featrob attack class per torchattacks attack (sorted by name)."""
    import torchattacks

    out = []
    for name in sorted(torchattacks.__all__):
        cls = getattr(torchattacks, name, None)
        if not inspect.isclass(cls) or name in EXCLUDED:
            continue
        params = inspect.signature(cls.__init__).parameters
        if "norm" in params:
            norms: tuple[str, ...] = ("linf", "l2")
        else:
            norms = ("l2",) if name in L2_ATTACKS else ("linf",)
        out.append(
            type(
                f"Torchattacks{name}",
                (TorchattacksAttack,),
                {
                    "name": f"torchattacks:{name}",
                    "description": f"torchattacks.{name} (adapter)",
                    "norms": norms,
                    "defaults": _defaults(cls),
                    "uses_gradients": name not in GRADIENT_FREE,
                    "target": cls,
                },
            )
        )
    return out


@hookimpl
def featrob_register_attacks(register):
    """Register ``torchattacks:NAME`` for every torchattacks attack."""
    for cls in adapters():
        register(cls)
