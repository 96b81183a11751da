"""The model wrapper every analysis sees: normalisation, backbone, head, named layers.

Attacks work in [0, 1] pixel space, so normalisation lives inside the model. The backbone
maps a normalised image to a flat feature vector (the layer before the output layer); the
head maps features to logits and can be swapped (FC, L2 prototypes, HPM, ...).

Layers are addressed by name:

* ``"input"``: the pixel-space input itself;
* any dotted module path inside the backbone (``"conv1"``, ``"layer3.1"``): that module's output;
* ``"features"``: the backbone output, flattened to ``[B, D]`` (an alias of the model's
  ``feature_layer`` when it declares one);
* ``"logits"``: the head output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from featrob.errors import ModelError, UnknownNameError
from featrob.models.normalization import Normalization

#: Modules that only reshape or regularise: not worth analysing as a layer of their own.
_TRIVIAL = (nn.Flatten, nn.Identity, nn.Dropout, nn.Unflatten)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; buffers are not saved in checkpoints.

    ``info`` records which normalisation this is and why (:mod:`featrob.models.normalization`).
    """

    def __init__(
        self,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        info: Normalization | None = None,
    ) -> None:
        super().__init__()
        if info is None:
            kind = "none" if mean is None and std is None else "custom"
            info = Normalization(
                kind,
                tuple(float(v) for v in mean) if mean is not None else None,
                tuple(float(v) for v in std) if std is not None else None,
                "given to the model wrapper",
            )
        self.info = info
        mean_t = torch.tensor(list(mean) if mean is not None else [0.0]).view(1, -1, 1, 1)
        std_t = torch.tensor(list(std) if std is not None else [1.0]).view(1, -1, 1, 1)
        if (std_t <= 0).any():
            raise ModelError(f"normalisation std must be positive, got {std_t.flatten().tolist()}")
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)
        self.identity = mean is None and std is None

    def forward(self, x: Tensor) -> Tensor:
        if self.identity or x.dim() != 4:
            return x
        return (x - self.mean) / self.std


class _StopForward(Exception):
    """Raised by a hook once every requested layer is captured (skips the rest)."""


class FeatrobModel(nn.Module):
    """A classifier split into ``normalize -> backbone -> flatten -> head``.

    Args:
        backbone: maps a normalised input to features (flattened if not already flat).
        head: maps ``[B, D]`` features to ``[B, K]`` logits.
        mean, std: per-channel normalisation applied to [0, 1] inputs (None: identity).
        layers: default layers for layer-by-layer analyses, in forward order. Default: the
            backbone's direct children that compute something, then ``features`` and ``logits``.
        feature_layer: name of the backbone module whose output is the feature vector, so that
            ``"features"`` is an alias of it rather than a layer of its own.
        arch: JSON-able description (spec, options) used in fingerprints and model cards.
        pretrained: where the weights came from when the factory supplied trained weights
            (a RobustBench or torchvision checkpoint, ...), else None: featrob then trains
            the model or loads ``--weights``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        layers: Sequence[str] | None = None,
        feature_layer: str | None = None,
        arch: dict[str, Any] | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.pretrained = pretrained
        #: What :func:`featrob.models.build_model` found the network should get (a
        #: ``DefaultNormalization``); None for a model wrapped by hand.
        self.default_normalization: Any = None
        self.backbone = backbone
        self.head = head
        self.arch: dict[str, Any] = dict(arch or {})
        self.feature_layer = feature_layer
        self._modules_by_name = dict(backbone.named_modules())
        if feature_layer is not None and feature_layer not in self._modules_by_name:
            raise ModelError(f"feature layer {feature_layer!r} is not a module of the backbone")
        self.layers: list[str] = list(layers) if layers is not None else self._default_layers()
        for name in self.layers:
            self.resolve_layer(name)

    # ------------------------------------------------------------------ forward passes
    def features(self, x: Tensor) -> Tensor:
        """Backbone output for pixel-space ``x``, flattened to ``[B, D]``."""
        return self.backbone(self.normalize(x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for pixel-space inputs ``x`` in [0, 1]."""
        return self.head(self.features(x))

    # ------------------------------------------------------------------ layers
    def _default_layers(self) -> list[str]:
        names = [n for n, m in self.backbone.named_children() if not isinstance(m, _TRIVIAL)]
        if self.feature_layer is None:
            names.append("features")
        return [*names, "logits"]

    @property
    def layer_names(self) -> list[str]:
        """Every addressable layer: input, each backbone module, features, logits."""
        inner = [n for n in self._modules_by_name if n]
        return ["input", *inner, "features", "logits"]

    def resolve_layer(self, name: str) -> str:
        """Canonical name for ``name`` (``"features"`` may alias the feature layer).

        Raises:
            UnknownNameError: with close matches among the model's layers.
        """
        if name == "features" and self.feature_layer is not None:
            return self.feature_layer
        if name in ("input", "features", "logits") or name in self._modules_by_name:
            return name
        raise UnknownNameError("layer", name, ["input", "features", "logits", *self.layers])

    @property
    def num_features(self) -> int:
        """Dimension D of the feature vector (read off the head)."""
        for attr in ("in_features", "num_features"):
            if isinstance(getattr(self.head, attr, None), int):
                return int(getattr(self.head, attr))
        raise ModelError("cannot tell the feature dimension from the head")

    def extract(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """Outputs of several layers from one forward pass, keyed by the names asked for.

        The pass stops as soon as every requested layer is captured, so asking for an early
        layer costs only the layers before it.
        """
        canon = {name: self.resolve_layer(name) for name in layers}
        wanted = set(canon.values())
        got: dict[str, Tensor] = {}
        if "input" in wanted:
            got["input"] = x
        hooks = []
        need_head = "logits" in wanted

        def capture(layer: str):
            def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
                if layer not in got:
                    got[layer] = output
                if not need_head and "features" not in wanted and wanted <= got.keys():
                    raise _StopForward

            return hook

        for layer in wanted - {"input", "features", "logits"}:
            hooks.append(self._modules_by_name[layer].register_forward_hook(capture(layer)))
        try:
            if wanted - {"input"}:
                feats = self.features(x)
                got["features"] = feats
                if need_head:
                    got["logits"] = self.head(feats)
        except _StopForward:
            pass
        finally:
            for h in hooks:
                h.remove()
        return {name: got[c] for name, c in canon.items()}

    def forward_to(self, x: Tensor, layer: str) -> Tensor:
        """Output of one layer (stops the forward pass there)."""
        return self.extract(x, [layer])[layer]

    # ------------------------------------------------------------------ heads and weights
    def with_head(self, head: nn.Module, **arch_changes: Any) -> FeatrobModel:
        """A model sharing this backbone and normalisation, with another head."""
        new = FeatrobModel.__new__(FeatrobModel)
        nn.Module.__init__(new)
        new.normalize = self.normalize
        new.pretrained = self.pretrained
        new.backbone = self.backbone
        new.head = head
        new.arch = {**self.arch, **arch_changes}
        new.feature_layer = self.feature_layer
        new._modules_by_name = self._modules_by_name
        new.layers = list(self.layers)
        return new

    @property
    def normalization(self) -> Normalization:
        """The normalisation applied to [0, 1] inputs, and why (results.json records it)."""
        return self.normalize.info

    def set_normalization(self, normalization: Normalization) -> None:
        """Apply ``normalization`` from now on (on the device of the current one).

        Models made by :meth:`with_head` before this call keep the old one.
        """
        device = self.normalize.mean.device
        self.normalize = Normalize(normalization.mean, normalization.std, normalization).to(device)

    def fingerprint(self) -> str:
        """Architecture plus a hash of every weight: equal fingerprints, equal models."""
        h = hashlib.sha256(json.dumps(self.arch, sort_keys=True, default=str).encode())
        norm = self.normalize
        h.update(norm.mean.cpu().numpy().tobytes() + norm.std.cpu().numpy().tobytes())
        for key, tensor in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        return h.hexdigest()[:20]

    @property
    def device(self) -> torch.device:
        """Device of the first parameter (CPU for a parameter-free model)."""
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


def split_backbone_head(net: nn.Module) -> tuple[nn.Module, nn.Module, str]:
    """Split a plain classifier into ``(backbone, head, head_name)``.

    A module with ``backbone`` and ``head`` attributes is split there; otherwise its last
    ``nn.Linear`` (in registration order) is the head and is replaced by ``nn.Identity`` in
    the backbone. This matches torchvision classifiers (``fc``, ``classifier[-1]``,
    ``heads.head``) and most user models.

    Raises:
        ModelError: no head could be found.
    """
    if isinstance(getattr(net, "backbone", None), nn.Module) and isinstance(
        getattr(net, "head", None), nn.Module
    ):
        return net.backbone, net.head, "head"
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(
            f"{type(net).__name__} has no nn.Linear to use as classification head; "
            "give the module `backbone` and `head` attributes"
        )
    head_name, head = linears[-1]
    parent_name, _, attr = head_name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    if isinstance(parent, nn.Sequential) or attr.isdigit():
        parent[int(attr)] = nn.Identity()
    else:
        setattr(parent, attr, nn.Identity())
    return net, head, head_name
