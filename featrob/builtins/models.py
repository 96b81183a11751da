"""Built-in model architectures plugin: mlp, the Gowal et al. CNNs, vgg16, resnets, tv:NAME.

The architectures live in :mod:`featrob.models.zoo`; it is imported inside the hook so that
importing this plugin module stays cheap (no torch).
"""

from __future__ import annotations

from featrob import hookimpl
from featrob.hookspecs import Register


@hookimpl
def featrob_register_models(register: Register) -> None:
    """Register every built-in architecture under its spec name."""
    from featrob.models import zoo

    descriptions = {
        "mlp": "fully connected net (options: hidden, activation, bias)",
        "small-cnn": "Gowal et al. small CNN: conv16-conv32-fc100 (option: padding)",
        "medium-cnn": "Gowal et al. medium CNN: 4 convs, 2 x fc512 (option: padding)",
        "large-cnn": "Gowal et al. large CNN: 5 convs, fc512 (option: padding)",
        "vgg16": "VGG-16 with BatchNorm for small images (options: feature_dim, "
        "feature_activation, dropout, batch_norm)",
        "resnet18": "CIFAR ResNet-18 (512-D features)",
        "resnet34": "CIFAR ResNet-34 (512-D features)",
        "tv": "any torchvision classifier: tv:NAME (e.g. tv:resnet50), randomly initialised "
        "or with torchvision weights (model_options.weights=IMAGENET1K_V1)",
    }
    for name, factory in zoo.FACTORIES.items():
        register(factory, name=name, description=descriptions[name])
