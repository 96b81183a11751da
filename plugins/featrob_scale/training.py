"""``featrob train --method scale-aware``: the training the scale paper proposes but never tests.

Park & Lee (section 5) suggest to "give [low-scale] samples relatively more learning weight
and, when needed, gently increase their scales while keeping the angular decision geometry
intact". The paper gives no formula; this is the rule featrob implements (our derivation):

    L = mean_i( w_i * CE(z_i, y_i) ) + lam * mean_i( relu(1 - |f_i| / m_{y_i})^2 )

* ``f_i`` is the feature vector (the layer before the output layer), ``z_i`` the logits.
* ``m_c`` is a running mean (EMA, ``momentum``) of the feature scale of class c over the
  training batches, detached: the scale a sample of its class "should" have.
* Reweighting: ``w_i = min(max_weight, (m_{y_i} / |f_i|)^alpha)``, detached and normalised to
  mean 1 over the batch, so a sample at half its class's typical scale weighs ``2^alpha``
  times as much as a typical one, and the overall learning rate is unchanged.
* Scale regulariser: the penalty depends on f_i only through |f_i|, so its gradient with
  respect to f_i is ``-2 relu(1 - |f_i|/m) / m * f_i / |f_i|``: purely radial. It lengthens
  low-scale feature vectors (below their class's typical scale) without rotating them, the
  "without altering the angular decision geometry" of the paper, at the feature layer;
  samples at or above the typical scale feel nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from featrob import ConfigError, DatasetBundle, FeatrobModel, TrainingMethod


class ScaleAwareTraining(TrainingMethod):
    """Cross-entropy reweighted towards low-scale samples plus a radial scale penalty.

    Options (``train.method_options``):
        alpha (1.0): weight exponent; 0 turns the reweighting off.
        max_weight (4.0): cap on a sample's relative weight before normalisation.
        lam (0.1): weight of the scale penalty; 0 turns it off.
        momentum (0.9): EMA momentum of the per-class typical scale.
    """

    name: ClassVar[str] = "scale-aware"
    description: ClassVar[str] = (
        "cross-entropy weighted towards low feature scales + radial scale penalty (Park & Lee)"
    )
    defaults: ClassVar[dict[str, Any]] = {
        "alpha": 1.0,
        "max_weight": 4.0,
        "lam": 0.1,
        "momentum": 0.9,
    }

    def __init__(self, config, eps: float, norm: str, **options: Any) -> None:
        super().__init__(config, eps, norm, **options)
        for key in self.defaults:
            value = self.options[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{self.name}: {key} must be a number >= 0, got {value!r}")
        if not self.options["momentum"] < 1:
            raise ConfigError(f"{self.name}: momentum must be < 1")
        if self.options["max_weight"] < 1:
            raise ConfigError(f"{self.name}: max_weight must be >= 1")
        self.class_scale: Tensor | None = None

    def start(self, model: FeatrobModel, data: DatasetBundle) -> None:
        """Forget the running class scales (a fresh training run)."""
        self.class_scale = None

    def update_class_scale(self, norm: Tensor, y: Tensor, num_classes: int) -> Tensor:
        """Fold this batch's per-class mean scales into the running means; return them."""
        norm = norm.detach().float()
        if self.class_scale is None or len(self.class_scale) != num_classes:
            self.class_scale = torch.full((num_classes,), float("nan"), device=norm.device)
        sums = torch.zeros(num_classes, device=norm.device).index_add_(0, y, norm)
        counts = torch.bincount(y, minlength=num_classes).float()
        present = counts > 0
        batch_mean = sums / counts.clamp_min(1)
        old = self.class_scale
        m = self.options["momentum"]
        blended = torch.where(torch.isnan(old), batch_mean, m * old + (1 - m) * batch_mean)
        self.class_scale = torch.where(present, blended, old)
        return self.class_scale

    def weights(self, norm: Tensor, typical: Tensor) -> Tensor:
        """Per-sample CE weights (detached, mean 1)."""
        rel = (norm.detach() / typical.clamp_min(1e-12)).clamp_min(1e-6)
        w = rel.pow(-self.options["alpha"]).clamp(max=self.options["max_weight"])
        return w / w.mean()

    def loss(self, model: FeatrobModel, x: Tensor, y: Tensor) -> Tensor:
        """Weighted cross-entropy plus ``lam`` times the radial scale penalty."""
        features = model.features(x)
        logits = model.head(features)
        norm = features.flatten(1).float().norm(dim=1)
        typical = self.update_class_scale(norm, y, logits.shape[1])[y]
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        penalty = F.relu(1 - norm / typical.clamp_min(1e-12)).square()
        return (self.weights(norm, typical) * ce).mean() + self.options["lam"] * penalty.mean()
