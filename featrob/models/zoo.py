"""Built-in architectures: MLPs, the CNNs of Gowal et al. (2019), VGG-16, ResNets, torchvision.

Every factory has the signature
``factory(input_shape: tuple[int, int, int], num_classes: int, **options) -> nn.Module``
and returns a module with a ``backbone`` (an ``nn.Sequential`` of named blocks whose output
is the flat feature vector), a linear ``head``, ``featrob_layers`` (the default analysis
layers in forward order, ending with ``"logits"``) and ``featrob_feature_layer`` (the block
whose output is the feature vector). Unknown options raise :class:`ConfigError`.

Activations are never in-place: forward hooks capture block outputs, and an in-place op
further down would overwrite what was captured.

Layer names:

* ``mlp``: ``fc1`` .. ``fcN`` (one per hidden layer; ``fc1`` flattens the input); with
  ``hidden=[]`` (a linear classifier) the only block is ``flatten``.
* ``small-cnn`` / ``medium-cnn`` / ``large-cnn``: ``conv1`` .. ``convN``, ``fc1`` (, ``fc2``);
  each block is ``Sequential(conv|linear, relu)`` with named children (``conv1.conv``,
  ``conv1.relu``; ``fc1.flatten``, ``fc1.linear``, ``fc1.relu``; a ``pad`` child first where
  "same" padding of an even kernel needs asymmetric zero padding).
* ``vgg16``: ``block1`` .. ``block5``, ``fc1``, ``features`` (see :mod:`featrob.models.vgg`).
* ``resnet18`` / ``resnet34``: ``stem``, ``layer1`` .. ``layer4``, ``pool``
  (see :mod:`featrob.models.resnet`).
* ``tv:NAME``: a torchvision classifier, split at its last ``nn.Linear`` by
  :func:`featrob.models.base.split_backbone_head`.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from torch import nn

from featrob.errors import ConfigError, ModelError, UnknownNameError
from featrob.models._parts import (
    ZooNet,
    as_bool,
    as_int,
    check_problem,
    choice,
    output_shape,
    take_options,
)
from featrob.models.resnet import resnet18, resnet34
from featrob.models.vgg import vgg16

__all__ = ["large_cnn", "medium_cnn", "mlp", "resnet18", "resnet34", "small_cnn", "tv", "vgg16"]


# ---------------------------------------------------------------------------------- MLP
def mlp(input_shape: tuple[int, int, int], num_classes: int, **options: Any) -> nn.Module:
    """Fully connected network: flatten, hidden layers, linear head.

    Options:
        hidden: hidden-layer widths (default ``[256]``; ``[]`` gives a linear classifier,
            one entry the "1-hidden-layer net" of the feature-compression paper).
        activation: ``"relu"`` (default) or ``"linear"`` (no nonlinearity: a linear network).
        bias: whether the linear layers (head included) have biases (default True).
    """
    shape, k = check_problem("mlp", input_shape, num_classes)
    opts = take_options("mlp", options, {"hidden": [256], "activation": "relu", "bias": True})
    hidden = opts["hidden"]
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = [hidden]
    if not isinstance(hidden, (list, tuple)):
        raise ConfigError(
            f"option 'hidden' of model 'mlp' must be a list of widths, got {hidden!r}"
        )
    widths = [as_int("mlp", "hidden", h) for h in hidden]
    activation = choice("mlp", "activation", opts["activation"], ["relu", "linear"])
    bias = as_bool("mlp", "bias", opts["bias"])

    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    width = shape[0] * shape[1] * shape[2]
    if not widths:
        blocks["flatten"] = nn.Flatten()
    for i, out in enumerate(widths, start=1):
        parts: OrderedDict[str, nn.Module] = OrderedDict()
        if i == 1:
            parts["flatten"] = nn.Flatten()
        parts["linear"] = nn.Linear(width, out, bias=bias)
        if activation == "relu":
            parts["relu"] = nn.ReLU()
        blocks[f"fc{i}"] = nn.Sequential(parts)
        width = out
    return ZooNet(nn.Sequential(blocks), nn.Linear(width, k, bias=bias))


# ------------------------------------------------------------------- Gowal et al. CNNs
#: ("conv", out_channels, kernel, stride) or ("fc", out_features), from Gowal et al. (2019).
_GOWAL: dict[str, list[tuple[Any, ...]]] = {
    "small-cnn": [("conv", 16, 4, 2), ("conv", 32, 4, 1), ("fc", 100)],
    "medium-cnn": [
        ("conv", 32, 3, 1),
        ("conv", 32, 4, 2),
        ("conv", 64, 3, 1),
        ("conv", 64, 4, 2),
        ("fc", 512),
        ("fc", 512),
    ],
    "large-cnn": [
        ("conv", 64, 3, 1),
        ("conv", 64, 3, 1),
        ("conv", 128, 3, 2),
        ("conv", 128, 3, 1),
        ("conv", 128, 3, 1),
        ("fc", 512),
    ],
}


def _conv_block(c_in: int, c_out: int, kernel: int, stride: int, same: bool) -> nn.Sequential:
    """``[pad,] conv, relu``. "Same" padding keeps the size of stride-1 convs (asymmetric
    zero padding for even kernels, as TensorFlow does) and halves it for stride 2
    (symmetric padding ``(k - 1) // 2``)."""
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    padding = 0
    if same and stride == 1 and kernel % 2 == 0:
        lo, hi = (kernel - 1) // 2, kernel // 2
        parts["pad"] = nn.ZeroPad2d((lo, hi, lo, hi))
    elif same:
        padding = (kernel - 1) // 2
    parts["conv"] = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)
    parts["relu"] = nn.ReLU()
    return nn.Sequential(parts)


def _gowal_cnn(name: str, input_shape: Any, num_classes: int, options: dict[str, Any]) -> ZooNet:
    shape, k = check_problem(name, input_shape, num_classes)
    opts = take_options(name, options, {"padding": "auto"})
    padding = choice(name, "padding", opts["padding"], ["auto", "valid", "same"])
    if padding == "auto":
        padding = "valid" if min(shape[1], shape[2]) >= 16 else "same"

    convs: OrderedDict[str, nn.Module] = OrderedDict()
    channels = shape[0]
    for i, (_, out, kernel, stride) in enumerate((s for s in _GOWAL[name] if s[0] == "conv"), 1):
        convs[f"conv{i}"] = _conv_block(channels, out, kernel, stride, padding == "same")
        channels = out
    flat = int(output_shape(name, nn.Sequential(convs), shape).numel())

    blocks = OrderedDict(convs)
    for i, (_, out) in enumerate((s for s in _GOWAL[name] if s[0] == "fc"), 1):
        parts: OrderedDict[str, nn.Module] = OrderedDict()
        if i == 1:
            parts["flatten"] = nn.Flatten()
        parts["linear"] = nn.Linear(flat, out)
        parts["relu"] = nn.ReLU()
        blocks[f"fc{i}"] = nn.Sequential(parts)
        flat = out
    return ZooNet(nn.Sequential(blocks), nn.Linear(flat, k))


def small_cnn(input_shape: tuple[int, int, int], num_classes: int, **options: Any) -> nn.Module:
    """Small CNN of Gowal et al. (2019): conv 16 4x4/2, conv 32 4x4/1, FC 100.

    Options:
        padding: ``"valid"`` (as in the paper), ``"same"`` or ``"auto"`` (default: valid
            when the smaller image side is >= 16, else same, so 8x8 digits fit).
    """
    return _gowal_cnn("small-cnn", input_shape, num_classes, options)


def medium_cnn(input_shape: tuple[int, int, int], num_classes: int, **options: Any) -> nn.Module:
    """Medium CNN of Gowal et al. (2019): conv 32 3x3/1, 32 4x4/2, 64 3x3/1, 64 4x4/2, FC 512 x2.

    Options:
        padding: ``"valid"``, ``"same"`` or ``"auto"`` (see :func:`small_cnn`).
    """
    return _gowal_cnn("medium-cnn", input_shape, num_classes, options)


def large_cnn(input_shape: tuple[int, int, int], num_classes: int, **options: Any) -> nn.Module:
    """Large CNN of Gowal et al. (2019): conv 64 3x3/1 x2, 128 3x3/2, 128 3x3/1 x2, FC 512.

    Options:
        padding: ``"valid"``, ``"same"`` or ``"auto"`` (see :func:`small_cnn`).
    """
    return _gowal_cnn("large-cnn", input_shape, num_classes, options)


# ------------------------------------------------------------------------ torchvision
def tv(
    input_shape: tuple[int, int, int],
    num_classes: int,
    arg: str | None = None,
    **options: Any,
) -> nn.Module:
    """A torchvision classifier by name (``tv:resnet50``), randomly initialised, or with
    torchvision's published weights (option ``weights``: a weights name such as
    ``IMAGENET1K_V1`` or ``DEFAULT``; torchvision downloads them into its hub cache, so this
    needs a network or a filled cache). Such a model is analysed as it is (featrob does not
    train it) with the normalisation of the weights' metadata. A checkpoint file loads with
    ``--weights``. Other options go to ``torchvision.models.get_model`` (e.g. ``image_size``
    for ViTs).

    Raises:
        UnknownNameError: ``arg`` is not a torchvision classification model.
        ModelError: the input does not have 3 channels or torchvision rejects the options.
    """
    import torchvision

    shape, k = check_problem("tv", input_shape, num_classes)
    names = torchvision.models.list_models(module=torchvision.models)
    if not arg:
        raise ConfigError("model 'tv' needs a torchvision model name, e.g. 'tv:resnet18'")
    if arg not in names:
        raise UnknownNameError("torchvision model", arg, names)
    if shape[0] != 3:
        raise ModelError(
            f"torchvision model {arg!r} expects 3-channel images, got input_shape {shape}"
        )
    weights = options.pop("weights", None)
    if weights:
        return _tv_pretrained(arg, str(weights), k, options)
    try:
        return torchvision.models.get_model(arg, weights=None, num_classes=k, **options)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build torchvision model {arg!r}: {exc}") from None


def _tv_pretrained(arg: str, weights: str, num_classes: int, options: dict[str, Any]) -> nn.Module:
    """A torchvision classifier with its published weights (``model_options.weights``),
    declaring the normalisation of the weights' metadata and that it is trained."""
    import torch
    import torchvision

    enum = torchvision.models.get_model_weights(arg)
    names = [w.name for w in enum]
    if weights == "DEFAULT":
        chosen = enum.DEFAULT
    elif weights in names:
        chosen = enum[weights]
    else:
        raise UnknownNameError(f"torchvision weights of {arg}", weights, [*names, "DEFAULT"])
    classes = len(chosen.meta.get("categories") or [])
    if classes and classes != num_classes:
        raise ModelError(
            f"torchvision weights {arg} {chosen.name} classify {classes} classes; the data set "
            f"has {num_classes} (leave out model_options.weights to train a fresh tv:{arg})"
        )
    try:
        net = torchvision.models.get_model(arg, weights=chosen, **options)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build torchvision model {arg!r}: {exc}") from None
    except Exception as exc:  # the download failed: offline, or no space
        cache = Path(torch.hub.get_dir()) / "checkpoints" / chosen.url.rsplit("/", 1)[-1]
        raise ModelError(
            f"cannot fetch torchvision weights {arg} {chosen.name} ({type(exc).__name__}); "
            f"offline, put the file at {cache}"
        ) from None
    transform = chosen.transforms()
    net.featrob_normalize = {
        "mean": list(transform.mean),
        "std": list(transform.std),
        "source": f"the metadata of torchvision weights {arg} {chosen.name}",
    }
    net.featrob_pretrained = f"torchvision {arg} {chosen.name} ({chosen.url})"
    return net


#: Registered name -> factory (what the built-in models plugin registers).
FACTORIES = {
    "mlp": mlp,
    "small-cnn": small_cnn,
    "medium-cnn": medium_cnn,
    "large-cnn": large_cnn,
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "tv": tv,
}
