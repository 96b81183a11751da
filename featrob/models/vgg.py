"""VGG-16 (configuration D) for small images, as used by the feature-scale paper.

Layout (names are what analyses address)::

    block1 .. block5   conv-bn-relu layers (conv1, bn1, relu1, conv2, ...) then ``pool``
    fc1                pool (adaptive average to 1x1), flatten, Linear(512, 512), relu [, dropout]
    features           Linear(512, feature_dim) [, relu]   <- the feature vector
    head               Linear(feature_dim, num_classes)    <- logits

Small inputs: a stage's 2x2 max-pool is skipped when it would shrink a side below 1 pixel
(28x28 MNIST: 28-14-7-3-1, block5 keeps its 1x1 map without pooling; 8x8 digits: blocks 4
and 5 do not pool). We skip rather than pad or upsample so that the convolutions see the
same image statistics as on CIFAR and no layer is made of padding. ``fc1`` starts with an
adaptive average pool to 1x1, an identity on the 1x1 maps of 32x32 and smaller inputs, so
that larger inputs still give 512 values (as CIFAR VGGs flatten a 1x1x512 map).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from featrob.errors import ConfigError
from featrob.models._parts import ZooNet, as_bool, as_int, check_problem, choice, take_options

#: Output channels of the 3x3 convolutions of each stage (VGG configuration D).
_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16(input_shape: tuple[int, int, int], num_classes: int, **options: Any) -> nn.Module:
    """VGG-16 for CIFAR-sized inputs with a configurable feature layer.

    Options:
        batch_norm: BatchNorm after every convolution (default True).
        dropout: dropout probability after ``fc1`` (default 0.0: no dropout layer).
        feature_dim: width D of the ``features`` layer (default 512; the feature-scale paper
            also uses 2 to plot features against the output weight vectors).
        feature_activation: ``"relu"`` or ``"none"`` after the ``features`` linear layer
            (default: ``"none"`` when ``feature_dim <= 16``, where a ReLU would confine the
            features to one quadrant, else ``"relu"``).
    """
    shape, k = check_problem("vgg16", input_shape, num_classes)
    opts = take_options(
        "vgg16",
        options,
        {"batch_norm": True, "dropout": 0.0, "feature_dim": 512, "feature_activation": None},
    )
    batch_norm = as_bool("vgg16", "batch_norm", opts["batch_norm"])
    dropout = opts["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"option 'dropout' of model 'vgg16' must be in [0, 1), got {dropout!r}")
    feature_dim = as_int("vgg16", "feature_dim", opts["feature_dim"])
    act = opts["feature_activation"]
    if act is None:
        act = "none" if feature_dim <= 16 else "relu"
    act = choice("vgg16", "feature_activation", act, ["relu", "none"])

    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    channels, height, width = shape
    for s, widths in enumerate(_STAGES, start=1):
        parts: OrderedDict[str, nn.Module] = OrderedDict()
        for i, out in enumerate(widths, start=1):
            parts[f"conv{i}"] = nn.Conv2d(channels, out, 3, padding=1)
            if batch_norm:
                parts[f"bn{i}"] = nn.BatchNorm2d(out)
            parts[f"relu{i}"] = nn.ReLU()
            channels = out
        if min(height, width) >= 2:
            parts["pool"] = nn.MaxPool2d(2)
            height, width = height // 2, width // 2
        blocks[f"block{s}"] = nn.Sequential(parts)

    fc1: OrderedDict[str, nn.Module] = OrderedDict(
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        linear=nn.Linear(channels, 512),
        relu=nn.ReLU(),
    )
    if dropout > 0:
        fc1["dropout"] = nn.Dropout(float(dropout))
    blocks["fc1"] = nn.Sequential(fc1)
    features: OrderedDict[str, nn.Module] = OrderedDict(linear=nn.Linear(512, feature_dim))
    if act == "relu":
        features["relu"] = nn.ReLU()
    blocks["features"] = nn.Sequential(features)
    return ZooNet(nn.Sequential(blocks), nn.Linear(feature_dim, k))
