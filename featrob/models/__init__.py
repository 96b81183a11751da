"""Models: the :class:`FeatrobModel` wrapper, built-in architectures and heads, checkpoints."""

from featrob.models.base import FeatrobModel, split_backbone_head
from featrob.models.loading import build_model, load_weights, save_checkpoint

__all__ = ["FeatrobModel", "build_model", "load_weights", "save_checkpoint", "split_backbone_head"]
