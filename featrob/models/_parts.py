"""Shared pieces of the built-in architectures: option checking and the classifier shell.

Every built-in factory returns a :class:`ZooNet`: a ``backbone`` (an ``nn.Sequential`` of
named blocks whose output is the feature vector) and a linear ``head``, plus the
``featrob_layers`` / ``featrob_feature_layer`` attributes that
:func:`featrob.models.build_model` reads to wrap it in a
:class:`~featrob.models.FeatrobModel`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from featrob.errors import ConfigError, ModelError


class ZooNet(nn.Module):
    """``head(backbone(x).flatten(1))`` with the layer metadata featrob reads.

    Args:
        backbone: named blocks in forward order; the last one outputs the feature vector.
        head: maps ``[B, D]`` features to ``[B, K]`` logits.
        layers: default analysis layers (block names, in forward order) without ``logits``.
        feature_layer: the block whose output is the feature vector (default: the last).
    """

    def __init__(
        self,
        backbone: nn.Sequential,
        head: nn.Module,
        layers: Iterable[str] | None = None,
        feature_layer: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        names = [name for name, _ in backbone.named_children()]
        self.featrob_layers: list[str] = [*(layers if layers is not None else names), "logits"]
        self.featrob_feature_layer: str = feature_layer or names[-1]

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a (normalised) input batch."""
        return self.head(self.backbone(x).flatten(1))


def take_options(
    model: str, options: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``defaults`` updated with ``options``; an unknown option is a one-line ConfigError.

    Why: a typo such as ``hiden=[64]`` must not be silently ignored.
    """
    unknown = sorted(set(options) - set(defaults))
    if unknown and not defaults:
        raise ConfigError(f"model {model!r} takes no options, got {', '.join(unknown)}")
    if unknown:
        valid = ", ".join(defaults)
        raise ConfigError(
            f"unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(u) for u in unknown)} for model {model!r}; valid: {valid}"
        )
    return {**defaults, **options}


def choice(model: str, key: str, value: Any, allowed: Iterable[str], kind: str = "model") -> str:
    """``value`` if it is one of ``allowed`` (case-insensitive), else a ConfigError."""
    allowed = list(allowed)
    text = str(value).lower()
    if text not in allowed:
        raise ConfigError(
            f"option {key!r} of {kind} {model!r} must be one of "
            f"{', '.join(repr(a) for a in allowed)}, got {value!r}"
        )
    return text


def as_bool(model: str, key: str, value: Any, kind: str = "model") -> bool:
    """A boolean option (``True``/``False``, also given as ``"true"``/``"false"``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"option {key!r} of {kind} {model!r} must be true or false, got {value!r}")


def as_int(model: str, key: str, value: Any, minimum: int = 1) -> int:
    """A whole-number option ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"option {key!r} of model {model!r} must be an integer >= {minimum}, got {value!r}"
        )
    return int(value)


def _whole(value: Any) -> int | None:
    """``value`` as an int if it is a whole number (numpy ints included, bools not)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_problem(
    model: str, input_shape: Iterable[int], num_classes: int
) -> tuple[tuple[int, int, int], int]:
    """Validate ``(C, H, W)`` and the class count; return them as plain ints."""
    shape = tuple(_whole(s) for s in input_shape)
    if len(shape) != 3 or any(s is None or s < 1 for s in shape):
        raise ConfigError(
            f"model {model!r} needs input_shape (channels, height, width) of positive "
            f"integers, got {tuple(input_shape)!r}"
        )
    k = _whole(num_classes)
    if k is None or k < 1:
        raise ConfigError(f"model {model!r} needs num_classes >= 1, got {num_classes!r}")
    c, h, w = (int(s) for s in shape)  # type: ignore[arg-type]
    return (c, h, w), k


def output_shape(model: str, module: nn.Module, input_shape: tuple[int, int, int]) -> torch.Size:
    """Shape (without batch) of ``module``'s output on a dummy input of ``input_shape``.

    Raises:
        ModelError: the input is too small for the architecture (a conv would get an
            empty input), with a hint about the ``padding`` option.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *input_shape))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"model {model!r} cannot take inputs of shape {tuple(input_shape)} ({first}); "
            "use larger inputs or padding='same'"
        ) from None
    finally:
        module.train(was_training)
    return out.shape[1:]
