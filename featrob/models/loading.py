"""Building models from spec strings and swapping heads (checkpoints: :mod:`.checkpoints`).

Spec forms understood by :func:`build_model`:

* ``small-cnn``: a registered architecture;
* ``tv:resnet50``: a registered factory that declares a parameter ``arg`` gets the text
  after the colon;
* ``package.module:factory``: any importable callable returning an ``nn.Module``; it gets
  ``num_classes`` / ``input_shape`` if it has parameters of those names.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from featrob.errors import ConfigError, FeatrobError, ModelError, UnknownNameError
from featrob.models._parts import check_problem
from featrob.models.base import FeatrobModel, split_backbone_head
from featrob.models.heads import HEADS
from featrob.models.normalization import DefaultNormalization, Request, declared
from featrob.specs import split_spec


def build_model(
    spec: str,
    registry: Any,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    options: dict[str, Any] | None = None,
    head: str | None = None,
    head_registry: Any = None,
    head_options: dict[str, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    model_dir: str | None = None,
) -> FeatrobModel:
    """Build the network named by ``spec`` and wrap it in a :class:`FeatrobModel`.

    Args:
        spec: ``NAME``, ``NAME:ARG`` or ``package.module:factory`` (see the module doc).
        registry: the model registry (``Registry`` of factories).
        input_shape: ``(C, H, W)`` of the pixel-space inputs.
        num_classes: number of classes K.
        options: keyword options for the factory (unknown ones raise ConfigError).
        head: replace the network's head by this registered head (``"l2"``, ...); None or
            ``"fc"`` keep the network's own linear head.
        head_registry: the head registry (default: the built-in heads ``fc`` and ``l2``).
        head_options: keyword options for the head factory.
        mean, std: per-channel normalisation of [0, 1] inputs (1 or C values each); None
            leaves the choice to :mod:`featrob.models.normalization` (the caller applies it,
            see ``FeatrobModel.default_normalization``).
        model_dir: where a model zoo keeps weights; given to a registered factory that has
            a ``model_dir`` parameter (``--model-dir``).

    Returns:
        The wrapped model; ``arch`` records spec, options, head, head_options,
        input_shape, num_classes and ``head_name`` (the head's name in the original
        network, used by :func:`load_weights` to map original checkpoints).

    Raises:
        UnknownNameError: unknown model, head or torchvision name (with close matches).
        ConfigError: bad options, shapes or normalisation.
        ModelError: the module cannot be imported, built or split into backbone and head.
    """
    options = dict(options or {})
    head_options = dict(head_options or {})
    reserved = sorted({"input_shape", "num_classes", "arg", "model_dir"} & options.keys())
    if reserved:
        raise ConfigError(f"{', '.join(reserved)} cannot be given as model options")
    shape, num_classes = check_problem(spec, input_shape, num_classes)
    for what, values in (("mean", mean), ("std", std)):
        if values is not None and len(list(values)) not in (1, shape[0]):
            raise ConfigError(
                f"normalisation {what} needs 1 or {shape[0]} values, got {list(values)}"
            )

    net, factory_module, registered = _instantiate(
        spec, registry, shape, num_classes, options, model_dir
    )
    said = declared(net, factory_module)
    for module in net.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    backbone, head_module, head_name = split_backbone_head(net)
    layers = getattr(net, "featrob_layers", None)
    if layers is not None:
        layers = list(layers)
        if "logits" not in layers:
            layers.append("logits")
    arch = {
        "spec": spec,
        "options": options,
        "head": head,
        "head_options": head_options,
        "input_shape": list(shape),
        "num_classes": num_classes,
        "head_name": head_name,
    }
    model = FeatrobModel(
        backbone,
        head_module,
        mean=mean,
        std=std,
        layers=layers,
        feature_layer=getattr(net, "featrob_feature_layer", None),
        arch=arch,
        pretrained=_pretrained(net),
    )
    if head is not None and (head != "fc" or head_options):
        factory = _head_factory(head, head_registry)
        new_head = _call(factory, f"head {head!r}", model.num_features, num_classes, **head_options)
        if not isinstance(new_head, nn.Module):
            raise ModelError(f"head {head!r} factory returned {type(new_head).__name__}")
        model = model.with_head(new_head)
    model.default_normalization = default_normalization(said, registered)
    return model


def default_normalization(
    said: tuple[Request, str] | None, registered: bool
) -> DefaultNormalization:
    """The normalisation a freshly built network gets unless a flag or a card says otherwise
    (the rules of :mod:`featrob.models.normalization`)."""
    if said is not None:
        return DefaultNormalization(*said, declared=True)
    if registered:
        return DefaultNormalization(
            Request("dataset"), "featrob's own architecture: the data set's", declared=False
        )
    return DefaultNormalization(
        Request("none"),
        "a network of your own takes [0, 1] pixels unless --normalize or "
        "FEATROB_NORMALIZE says otherwise",
        declared=False,
    )


def _pretrained(net: nn.Module) -> str | None:
    value = getattr(net, "featrob_pretrained", None)
    return str(value) if value else None


def _head_factory(head: str, head_registry: Any) -> Callable[..., Any]:
    if head_registry is not None:
        return head_registry.get(head)

    if head not in HEADS:
        raise UnknownNameError("head", head, HEADS)
    return HEADS[head]


def _instantiate(
    spec: str,
    registry: Any,
    shape: tuple[int, int, int],
    num_classes: int,
    options: dict,
    model_dir: str | None = None,
) -> tuple[nn.Module, Any, bool]:
    """The raw ``nn.Module`` for ``spec``, the Python module of an imported factory (None
    for a registered one) and whether the factory is registered."""
    name, arg = split_spec(spec)
    registered = registry is not None and name in registry
    if not registered and ("." in name or (arg is not None and _importable(name))):
        if not arg:
            raise ModelError(f"model spec {spec!r} names a module; write it as module:factory")
        factory, factory_module = _import_factory(name, arg, spec)
        kwargs: dict[str, Any] = {}
        sig = _parameters(factory)
        if sig is None or "num_classes" in sig[0]:
            kwargs["num_classes"] = num_classes
        if sig is not None and "input_shape" in sig[0]:
            kwargs["input_shape"] = shape
        net = _call(factory, f"model {spec!r}", **kwargs, **options)
    else:
        if registry is None:
            raise ConfigError(f"model {spec!r}: no model registry given")
        factory = registry.get(name)  # UnknownNameError with close matches
        params = (_parameters(factory) or ({}, True))[0]
        extra: dict[str, Any] = {}
        if "arg" in params:
            if arg is None and params["arg"].default is inspect.Parameter.empty:
                raise ConfigError(f"model {name!r} needs an argument: {name}:ARG")
            extra["arg"] = arg
        elif arg is not None:
            raise ConfigError(f"model {name!r} takes no ':ARG' part, got {spec!r}")
        if "model_dir" in params:
            extra["model_dir"] = model_dir
        net = _call(factory, f"model {name!r}", shape, num_classes, **extra, **options)
        factory_module = None
    if not isinstance(net, nn.Module):
        raise ModelError(
            f"model {spec!r}: the factory returned {type(net).__name__}, not nn.Module"
        )
    return net, factory_module, registered


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _import_factory(module_name: str, attr: str, spec: str) -> tuple[Callable[..., Any], Any]:
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"cannot import module {module_name!r} for model {spec!r}: {exc}"
        ) from None
    except Exception as exc:  # the user's module itself failed: still one line
        raise ModelError(
            f"importing {module_name!r} for model {spec!r} failed: {type(exc).__name__}: "
            f"{_first_line(exc)}"
        ) from exc
    module = obj
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"module {module_name!r} has no attribute {attr!r} (model {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"{module_name}:{attr} is not callable (model {spec!r})")
    return obj, module


def _parameters(func: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool] | None:
    """``(named parameters, takes **kwargs)`` of ``func``; None if it cannot be inspected."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return None
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {
        n: p
        for n, p in params.items()
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    return named, var_kw


def _call(func: Callable[..., Any], what: str, *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` with unknown options and crashes as one-line errors."""
    sig = _parameters(func)
    if sig is not None and not sig[1]:
        params = sig[0]
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            hidden = ("input_shape", "num_classes", "arg", "model_dir")
            valid = [p for p in params if p not in hidden]
            raise ConfigError(
                f"unknown option(s) {', '.join(repr(u) for u in unknown)} for {what}; "
                f"valid: {', '.join(valid) or 'none'}"
            )
    try:
        return func(*args, **kwargs)
    except FeatrobError:
        raise
    except Exception as exc:
        raise ModelError(
            f"building {what} failed: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
