"""Built-in classification heads: what maps the ``[B, D]`` feature vector to ``[B, K]`` logits.

Every head factory has the signature
``factory(in_features: int, num_classes: int, **options) -> nn.Module`` and every head
exposes ``in_features`` and ``num_classes`` (``FeatrobModel.num_features`` reads the former).
Swap a model's head with ``build_model(..., head="l2")`` or ``model.with_head(module)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from featrob.errors import ConfigError, ModelError
from featrob.models._parts import as_bool, choice


def _check_sizes(name: str, in_features: int, num_classes: int) -> None:
    for what, value in (("in_features", in_features), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"head {name!r} needs {what} >= 1, got {value!r}")


def _check_options(name: str, options: dict[str, Any], valid: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(repr(u) for u in unknown)} for head {name!r}; "
            f"valid: {', '.join(valid) or 'none'}"
        )


def fc(in_features: int, num_classes: int, **options: Any) -> nn.Module:
    """Linear head ``W z + b`` (the usual softmax classifier).

    Options:
        bias: learn a bias per class (default True).
    """
    _check_sizes("fc", in_features, num_classes)
    _check_options("fc", options, ("bias",))
    bias = as_bool("fc", "bias", options.get("bias", True), kind="head")
    return nn.Linear(in_features, num_classes, bias=bias)


class L2Head(nn.Module):
    """Nearest-prototype head: ``logits_k = -||z - c_k||_2``, one learnable prototype per class.

    The distance is computed as ``sqrt(clamp(|z|^2 - 2 z.c + |c|^2, min=1e-12))``: a
    single matrix product (fast for many classes) whose gradient stays finite when a
    feature vector sits exactly on a prototype (where ``sqrt`` alone would divide by 0).

    Args:
        in_features: feature dimension D.
        num_classes: number of prototypes K.
        init: ``"normal"`` (standard normal prototypes) or ``"zeros"`` (to be set by
            :meth:`init_from_means`).
    """

    def __init__(self, in_features: int, num_classes: int, init: str = "normal") -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        if init == "normal":
            protos = torch.randn(num_classes, in_features)
        else:
            protos = torch.zeros(num_classes, in_features)
        self.prototypes = nn.Parameter(protos)

    def distances(self, z: Tensor) -> Tensor:
        """``[B, K]`` Euclidean distances from each feature vector to each prototype."""
        c = self.prototypes
        sq = (z * z).sum(1, keepdim=True) - 2 * z @ c.t() + (c * c).sum(1).unsqueeze(0)
        return sq.clamp(min=1e-12).sqrt()

    def forward(self, z: Tensor) -> Tensor:
        """Logits: negative distances, so the nearest prototype wins."""
        return -self.distances(z)

    @torch.no_grad()
    def init_from_means(self, features: Tensor, labels: Tensor) -> None:
        """Set each prototype to the mean feature vector of its class.

        Used to start prototypes from a trained backbone. A class without samples keeps
        its current prototype.

        Args:
            features: ``[N, D]`` feature vectors.
            labels: ``[N]`` integer class labels in ``[0, K)``.

        Raises:
            ModelError: shapes do not match the head or a label is out of range.
        """
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ModelError(
                f"init_from_means needs features of shape [N, {self.in_features}], "
                f"got {list(features.shape)}"
            )
        labels = labels.reshape(-1).long().to(features.device)
        if labels.numel() != features.shape[0]:
            raise ModelError(
                f"init_from_means got {features.shape[0]} feature vectors "
                f"but {labels.numel()} labels"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ModelError(f"init_from_means: labels must lie in [0, {self.num_classes})")
        feats = features.detach().to(self.prototypes.dtype)
        sums = torch.zeros(self.num_classes, self.in_features, dtype=feats.dtype)
        sums = sums.to(feats.device).index_add_(0, labels, feats)
        counts = torch.bincount(labels, minlength=self.num_classes).to(feats.dtype)
        seen = counts > 0
        means = sums[seen] / counts[seen].unsqueeze(1)
        self.prototypes[seen.to(self.prototypes.device)] = means.to(self.prototypes.device)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


def l2(in_features: int, num_classes: int, **options: Any) -> nn.Module:
    """L2 nearest-prototype head (logits are negative distances to class prototypes).

    Options:
        init: ``"normal"`` (default) or ``"zeros"``.
    """
    _check_sizes("l2", in_features, num_classes)
    _check_options("l2", options, ("init",))
    init = choice("l2", "init", options.get("init", "normal"), ["normal", "zeros"], kind="head")
    return L2Head(in_features, num_classes, init=init)


#: Registered name -> factory (what the built-in heads plugin registers).
HEADS = {"fc": fc, "l2": l2}
