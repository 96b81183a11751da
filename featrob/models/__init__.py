"""Models: the :class:`FeatrobModel` wrapper, built-in architectures and heads, checkpoints."""

from featrob.models.base import FeatrobModel, split_backbone_head
from featrob.models.checkpoints import load_weights, save_checkpoint, warm_start
from featrob.models.loading import build_model

__all__ = [
    "FeatrobModel",
    "build_model",
    "load_weights",
    "save_checkpoint",
    "split_backbone_head",
    "warm_start",
]
