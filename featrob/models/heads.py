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


def check_head_sizes(name: str, in_features: int, num_classes: int) -> None:
    """A head factory's sizes are positive integers (else one ConfigError line)."""
    for what, value in (("in_features", in_features), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"head {name!r} needs {what} >= 1, got {value!r}")


def check_head_options(name: str, options: dict[str, Any], valid: tuple[str, ...]) -> None:
    """A head factory got only options it knows (else one ConfigError line naming them)."""
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
    check_head_sizes("fc", in_features, num_classes)
    check_head_options("fc", options, ("bias",))
    bias = as_bool("fc", "bias", options.get("bias", True), kind="head")
    return nn.Linear(in_features, num_classes, bias=bias)


def neg_l2_logits(z: Tensor, prototypes: Tensor) -> Tensor:
    """``-||z_i - c_j||`` as a ``[B, K]`` matrix.

    Computed as ``sqrt(max(|z|^2 - 2 z.c + |c|^2, 0) + 1e-12)``: one matrix product (fast for
    many classes) whose gradient stays finite when a feature vector sits exactly on a
    prototype (where ``sqrt`` alone would divide by 0).
    """
    sq = (z * z).sum(1, keepdim=True) - 2 * z @ prototypes.T + (prototypes * prototypes).sum(1)
    return -(sq.clamp(min=0) + 1e-12).sqrt()


def default_prototype_momentum(num_classes: int) -> float:
    """EMA momentum of class prototypes: 0.98 for at most 10 classes, 0.995 for more (the
    values of Wang et al.'s HPM supplement, paper 002)."""
    return 0.98 if num_classes <= 10 else 0.995


class EMAPrototypes(nn.Module):
    """Class prototypes ``[K, D]`` kept as an exponential moving average of the ground-truth
    class means of training batches: ``C <- lambda C + (1 - lambda) mean_batch``.

    A class's first batch mean initialises its row: an EMA started from zero would drag the
    prototypes towards the origin for about ``1 / (1 - lambda)`` batches. The prototypes are
    buffers, saved with the checkpoint.
    """

    def __init__(self, num_classes: int, dim: int, momentum: float) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"EMA momentum must lie in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.register_buffer("value", torch.zeros(num_classes, dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, z: Tensor, y: Tensor) -> None:
        """Fold the class means of the batch ``(z [B, D], y [B])`` into the prototypes."""
        k = self.value.shape[0]
        onehot = nn.functional.one_hot(y.long(), k).to(z.dtype)
        counts = onehot.sum(0)
        present = counts > 0
        means = ((onehot.T @ z.detach()) / counts.clamp(min=1)[:, None]).to(self.value.dtype)
        fresh = present & ~self.seen
        old = present & self.seen
        lam = self.momentum
        self.value[fresh] = means[fresh]
        self.value[old] = lam * self.value[old] + (1 - lam) * means[old]
        self.seen |= present


class L2Head(nn.Module):
    """Nearest-prototype head: ``logits_k = -||z - c_k||_2``, one prototype per class.

    Prototypes are learned parameters by default: they train with the rest of the model under
    the same loss as an FC head, so the two heads differ only in the decision form (the
    comparison of Wang et al., paper 002, Sec. 3.2). With ``prototypes="ema"`` they are EMA
    class means instead, updated by the training loop through :meth:`observe` (no gradient
    reaches them).

    Args:
        in_features: feature dimension D.
        num_classes: number of prototypes K.
        init: learned prototypes start ``"normal"`` (standard normal) or ``"zeros"`` (to be
            set by :meth:`init_from_means`).
        prototypes: ``"learned"`` or ``"ema"``.
        momentum: EMA momentum (default :func:`default_prototype_momentum`).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        init: str = "normal",
        prototypes: str = "learned",
        momentum: float | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.mode = prototypes
        if prototypes == "ema":
            self.ema = EMAPrototypes(
                num_classes,
                in_features,
                default_prototype_momentum(num_classes) if momentum is None else momentum,
            )
        else:
            shape = (num_classes, in_features)
            protos = torch.randn(*shape) if init == "normal" else torch.zeros(*shape)
            self.prototypes = nn.Parameter(protos)

    def centers(self) -> Tensor:
        """The current prototypes ``[K, D]``."""
        return self.ema.value if self.mode == "ema" else self.prototypes

    def distances(self, z: Tensor) -> Tensor:
        """``[B, K]`` Euclidean distances from each feature vector to each prototype."""
        return -neg_l2_logits(z, self.centers().to(z.dtype))

    def forward(self, z: Tensor) -> Tensor:
        """Logits: negative distances, so the nearest prototype wins."""
        return neg_l2_logits(z, self.centers().to(z.dtype))

    def observe(self, z: Tensor, y: Tensor) -> None:
        """Training hook (called by the training loop with each batch's clean features and
        labels): update EMA prototypes; learned ones ignore it."""
        if self.mode == "ema":
            self.ema.update(z, y)

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
        target = self.centers()
        feats = features.detach().to(target.dtype)
        sums = torch.zeros(self.num_classes, self.in_features, dtype=feats.dtype)
        sums = sums.to(feats.device).index_add_(0, labels, feats)
        counts = torch.bincount(labels, minlength=self.num_classes).to(feats.dtype)
        seen = counts > 0
        means = sums[seen] / counts[seen].unsqueeze(1)
        target[seen.to(target.device)] = means.to(target.device)
        if self.mode == "ema":
            self.ema.seen |= seen.to(self.ema.seen.device)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, {self.mode}"


def l2(in_features: int, num_classes: int, **options: Any) -> nn.Module:
    """L2 nearest-prototype head (logits are negative distances to class prototypes).

    Options:
        prototypes: ``"learned"`` (default: trained by the loss, like an FC head's weights)
            or ``"ema"`` (EMA class means updated during training).
        init: learned prototypes start ``"normal"`` (default) or ``"zeros"``.
        momentum: EMA momentum (default 0.98 for <= 10 classes, else 0.995).
    """
    check_head_sizes("l2", in_features, num_classes)
    check_head_options("l2", options, ("init", "prototypes", "momentum"))
    init = choice("l2", "init", options.get("init", "normal"), ["normal", "zeros"], kind="head")
    mode = choice(
        "l2", "prototypes", options.get("prototypes", "learned"), ["learned", "ema"], kind="head"
    )
    momentum = options.get("momentum")
    if momentum is not None and (
        isinstance(momentum, bool) or not isinstance(momentum, (int, float))
    ):
        raise ConfigError(f"head 'l2' option momentum must be a number, got {momentum!r}")
    return L2Head(in_features, num_classes, init=init, prototypes=mode, momentum=momentum)


#: Registered name -> factory (what the built-in heads plugin registers).
HEADS = {"fc": fc, "l2": l2}
