"""Input normalisation: a property of the model, never of the data set.

featrob attacks and analyses models in [0, 1] pixel space, so a model that expects
normalised inputs gets its ``(x - mean) / std`` inside the :class:`FeatrobModel` wrapper.
Which normalisation a model gets is decided here, once, and recorded (results.json, the
terminal summary, the reports, the checkpoint card) with the reason:

1. ``--normalize`` (config key ``normalize``): ``none``, ``dataset``, ``imagenet`` or
   ``MEAN/STD`` (comma-separated per-channel values, e.g.
   ``0.4914,0.4822,0.4465/0.2471,0.2435,0.2616``), whatever the model;
2. a featrob checkpoint's card (``--weights`` or the cached model): what it was trained with.
   Cards written before the card recorded it mean the data set's normalisation, which
   featrob then applied to every model;
3. the network itself: the module returned by the factory sets ``featrob_normalize``, or the
   factory's Python module defines ``FEATROB_NORMALIZE`` (any of the forms of 1, a
   ``(mean, std)`` pair, or ``{"mean": ..., "std": ..., "source": "why"}``; ``None`` values
   mean none); RobustBench models declare none, torchvision and timm weights their own
   metadata;
4. otherwise: a registered featrob architecture that featrob trains gets the data set's
   normalisation; a ``package.module:factory`` network or a plain state_dict (weights that
   featrob did not train) gets **none**: such networks take [0, 1] pixels unless told.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from featrob.errors import ConfigError

#: The ImageNet statistics torchvision's and timm's pretrained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Names ``--normalize`` understands (besides ``MEAN/STD``).
NAMED = ("none", "dataset", "imagenet")

#: Attribute a network sets on itself, and constant its factory's module may define.
NETWORK_ATTRIBUTE = "featrob_normalize"
MODULE_ATTRIBUTE = "FEATROB_NORMALIZE"

_FORMS = "none, dataset, imagenet or MEAN/STD (e.g. 0.4914,0.4822,0.4465/0.2471,0.2435,0.2616)"


@dataclass(frozen=True)
class Request:
    """A normalisation asked for, before the data set fills in ``dataset``.

    Attributes:
        kind: ``"none"``, ``"dataset"``, ``"imagenet"`` or ``"custom"``.
        mean, std: the values of a ``custom`` request.
    """

    kind: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Normalization:
    """The normalisation a model applies to [0, 1] inputs, and why.

    Attributes:
        kind: ``"none"``, ``"dataset"``, ``"imagenet"`` or ``"custom"``.
        mean, std: per-channel values (None: identity).
        source: where the choice came from, in words (``"--normalize"``, ...).
    """

    kind: str = "none"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str = ""

    @property
    def identity(self) -> bool:
        """True when inputs reach the network unchanged."""
        return self.mean is None and self.std is None

    def describe(self) -> str:
        """One phrase: ``none`` or ``KIND mean (...) std (...)``."""
        if self.identity:
            return "none" if self.kind in ("none", "") else f"none ({self.kind}: no values)"
        values = f"mean {_fmt(self.mean)} std {_fmt(self.std)}"
        return values if self.kind == "custom" else f"{self.kind} {values}"

    def to_json(self) -> dict[str, Any]:
        """``{"kind", "mean", "std", "source"}`` (the record in results.json and cards)."""
        return {
            "kind": self.kind,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> Normalization:
        """The record written by :meth:`to_json`, with a new ``source``.

        Raises:
            ConfigError: the record is malformed.
        """
        mean, std = data.get("mean"), data.get("std")
        if (mean is None) != (std is None):
            raise ConfigError(f"normalisation record {dict(data)} has only one of mean and std")
        if mean is None:
            return cls(str(data.get("kind", "none")), None, None, source)
        values = _check_values(_floats(mean, "mean"), _floats(std, "std"), str(dict(data)))
        return cls(str(data.get("kind", "custom")), *values, source)


@dataclass(frozen=True)
class DefaultNormalization:
    """What a freshly built network gets unless ``--normalize`` or a card says otherwise.

    Attributes:
        request: the normalisation.
        source: why, in words.
        declared: True when the network or its module declared it (rule 3), which a plain
            state_dict does not override; False for featrob's fallback (rule 4).
    """

    request: Request
    source: str
    declared: bool = False


def choose(
    *,
    requested: str | None,
    default: DefaultNormalization | None,
    card: Mapping[str, Any] | None,
    weights: str | None,
    data_mean: Sequence[float] | None,
    data_std: Sequence[float] | None,
    channels: int,
) -> Normalization:
    """The normalisation a model gets, by the rules of this module's docstring.

    Args:
        requested: ``--normalize`` (None: not given).
        default: what the built network gets otherwise (``FeatrobModel.default_normalization``;
            None counts as featrob's own architecture).
        card: the card of the checkpoint the weights come from (``{}`` for a plain
            state_dict, None when featrob trains the model).
        weights: the weights file, when the weights are loaded from one.
        data_mean, data_std: the data set's normalisation (for ``dataset``).
        channels: input channels of the model.

    Raises:
        ConfigError: a malformed request, declaration or card record.
    """

    def values(request: Request, source: str) -> Normalization:
        return resolve(request, source, data_mean=data_mean, data_std=data_std, channels=channels)

    if requested is not None:
        return values(parse_request(requested), f"--normalize {requested}")
    recorded = from_card(card or {}, str(weights or "the cached model"))
    if isinstance(recorded, Normalization):
        return recorded
    if isinstance(recorded, Request):
        return values(
            recorded,
            "featrob checkpoint from before cards recorded it: the data set's, as featrob "
            "then applied to every model",
        )
    default = default or DefaultNormalization(Request("dataset"), "the data set's")
    if default.declared or weights is None:
        return values(default.request, default.source)
    return values(
        Request("none"),
        f"plain state_dict {weights}: none unless --normalize or the network declares it",
    )


def parse_request(value: Any, what: str = "--normalize") -> Request:
    """A request from ``--normalize`` text, a declared attribute or a config value.

    Accepts ``"none"``, ``"dataset"``, ``"imagenet"``, ``"MEAN/STD"`` text, a
    ``(mean, std)`` pair or a ``{"mean": ..., "std": ...}`` mapping; one number stands for
    every channel.

    Raises:
        ConfigError: anything else, in one line naming ``what`` and the accepted forms.
    """
    if isinstance(value, Request):
        return value
    if isinstance(value, Mapping) and {"mean", "std"} <= set(value):
        if value["mean"] is None and value["std"] is None:
            return Request("none")
        mean, std = _floats(value["mean"], what), _floats(value["std"], what)
        return _named(Request("custom", *_check_values(mean, std, what)))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        mean, std = _floats(value[0], what), _floats(value[1], what)
        return _named(Request("custom", *_check_values(mean, std, what)))
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be {_FORMS}; got {value!r}")
    text = value.strip().lower()
    if text in NAMED:
        return Request(text)
    if "/" in text:
        mean_text, _, std_text = text.partition("/")
        mean = _floats(mean_text.split(","), what)
        std = _floats(std_text.split(","), what)
        return _named(Request("custom", *_check_values(mean, std, what)))

    close = difflib.get_close_matches(text, NAMED, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{what} must be {_FORMS}; got {value!r}{hint}")


def _named(request: Request) -> Request:
    """A custom request with ImageNet's values is the ``imagenet`` one."""
    if (request.mean, request.std) == (IMAGENET_MEAN, IMAGENET_STD):
        return Request("imagenet")
    return request


def resolve(
    request: Request,
    source: str,
    *,
    data_mean: Sequence[float] | None,
    data_std: Sequence[float] | None,
    channels: int,
) -> Normalization:
    """The values of ``request`` for a model with ``channels`` input channels.

    Raises:
        ConfigError: a value count other than 1 or ``channels``.
    """
    if request.kind == "none":
        return Normalization("none", None, None, source)
    if request.kind == "dataset":
        if data_mean is None and data_std is None:
            return Normalization("dataset", None, None, source)
        mean = tuple(float(v) for v in data_mean or [0.0])
        std = tuple(float(v) for v in data_std or [1.0])
    elif request.kind == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = request.mean or (0.0,), request.std or (1.0,)
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise ConfigError(
                f"{request.kind} normalisation ({source}) has {len(values)} {name} values; "
                f"the model's inputs have {channels} channel(s): give 1 or {channels}"
            )
    return Normalization(request.kind, tuple(mean), tuple(std), source)


def declared(network: Any, factory_module: Any = None) -> tuple[Request, str] | None:
    """What a network or its factory's module declares, and where; None if nothing.

    Raises:
        ConfigError: a declaration in none of the accepted forms (one line naming it).
    """
    value = getattr(network, NETWORK_ATTRIBUTE, None)
    if value is not None:
        where = f"the network's {NETWORK_ATTRIBUTE}"
        if isinstance(value, Mapping) and value.get("source"):
            where = f"{value['source']} ({NETWORK_ATTRIBUTE})"
        return parse_request(value, f"{type(network).__name__}.{NETWORK_ATTRIBUTE}"), where
    value = getattr(factory_module, MODULE_ATTRIBUTE, None)
    if value is not None:
        name = getattr(factory_module, "__name__", "module")
        return parse_request(value, f"{name}.{MODULE_ATTRIBUTE}"), f"{name}.{MODULE_ATTRIBUTE}"
    return None


def from_card(card: Mapping[str, Any], where: str) -> Normalization | Request | None:
    """The normalisation a featrob checkpoint card records, if it is a featrob card.

    Returns the recorded :class:`Normalization`; for a featrob card written before cards
    recorded it, the ``dataset`` request (what featrob then applied to every model); None
    for a file without a featrob card.
    """
    record = card.get("normalization") if card else None
    if isinstance(record, Mapping):
        return Normalization.from_json(record, f"checkpoint card ({where})")
    if card and "featrob" in card and "fingerprint" in card:
        return Request("dataset")
    return None


def _floats(values: Any, what: str) -> tuple[float, ...]:
    items = values if isinstance(values, (list, tuple)) else [values]
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: normalisation values must be numbers, got {values!r}") from None
    if not out:
        raise ConfigError(f"{what}: normalisation needs at least one mean and one std value")
    return out


def _check_values(
    mean: tuple[float, ...], std: tuple[float, ...], what: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not all(math.isfinite(v) for v in (*mean, *std)):
        raise ConfigError(f"{what}: normalisation values must be finite, got {mean}/{std}")
    if any(s <= 0 for s in std):
        raise ConfigError(f"{what}: normalisation std must be positive, got {std}")
    if len(mean) != len(std) and 1 not in (len(mean), len(std)):
        raise ConfigError(
            f"{what}: {len(mean)} mean values but {len(std)} std values; give as many of each"
        )
    return mean, std


def _fmt(values: Sequence[float] | None) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values or ()) + ")"
