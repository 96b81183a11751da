"""CIFAR-style ResNet-18 / ResNet-34 (He et al. 2016, the variant for 32x32 images).

Layout (names are what analyses address)::

    stem      3x3 conv (stride 1, 64 channels), bn, relu; no max-pool
    layer1    BasicBlocks at width 64, stride 1
    layer2    BasicBlocks at width 128, first one stride 2
    layer3    BasicBlocks at width 256, first one stride 2
    layer4    BasicBlocks at width 512, first one stride 2
    pool      global average pool + flatten   <- the 512-D feature vector
    head      Linear(512, num_classes)        <- logits

Each block is addressable too (``layer3.1``), as are its parts (``layer3.1.relu2``).
Global average pooling makes any input size of at least 1x1 work (28x28 MNIST: 28-14-7-4).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import Tensor, nn

from featrob.models._parts import ZooNet, check_problem, take_options

#: BasicBlocks per stage.
_DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers plus a shortcut: ``relu(bn2(conv2(relu(bn1(conv1 x)))) + s(x))``.

    The shortcut is the identity, or a strided 1x1 conv + bn where the block changes the
    width or the resolution. Each ReLU is its own (non in-place) module so hooks on one
    never see the other's output.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(c_out),
                )
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Residual block output."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def _resnet(name: str, input_shape: Any, num_classes: int, options: dict[str, Any]) -> ZooNet:
    shape, k = check_problem(name, input_shape, num_classes)
    take_options(name, options, {})
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    blocks["stem"] = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(shape[0], _WIDTHS[0], 3, stride=1, padding=1, bias=False),
            bn=nn.BatchNorm2d(_WIDTHS[0]),
            relu=nn.ReLU(),
        )
    )
    channels = _WIDTHS[0]
    for stage, (depth, width) in enumerate(zip(_DEPTHS[name], _WIDTHS, strict=True), start=1):
        layer = []
        for i in range(depth):
            stride = 2 if stage > 1 and i == 0 else 1
            layer.append(BasicBlock(channels, width, stride))
            channels = width
        blocks[f"layer{stage}"] = nn.Sequential(*layer)
    blocks["pool"] = nn.Sequential(
        OrderedDict(avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten())
    )
    net = ZooNet(nn.Sequential(blocks), nn.Linear(channels, k))
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return net


def resnet18(input_shape: tuple[int, int, int], num_classes: int, **options: Any) -> nn.Module:
    """CIFAR ResNet-18: BasicBlocks [2, 2, 2, 2], widths 64-512, 512-D features (no options)."""
    return _resnet("resnet18", input_shape, num_classes, options)


def resnet34(input_shape: tuple[int, int, int], num_classes: int, **options: Any) -> nn.Module:
    """CIFAR ResNet-34: BasicBlocks [3, 4, 6, 3], widths 64-512, 512-D features (no options)."""
    return _resnet("resnet34", input_shape, num_classes, options)
