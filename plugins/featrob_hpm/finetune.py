"""Plug-in heads on the run model's frozen backbone: the HPM head fine-tuned as the paper
does (supplement Sec. 6.2), and a plain L2 head from class means (Figure 1's comparison).

Fine-tuning is classifier-only: the backbone stays frozen in eval mode, the HPM's FC starts
from the model's own linear head, and the head (FC + mixer) trains with Adam at 5e-5 and
batch size 64 for one epoch (two for more than 10 classes), the EMA prototypes following
the ground-truth class means of each batch. The loss is clean cross-entropy (``"ce"``) or
the IKL adversarial loss (``"ikl"``, :mod:`featrob_hpm.ikl`). A fine-tuned head is cached
under ``$FEATROB_HOME/models`` keyed by the base model, the data, the head options and the
fine-tuning settings, so the next run loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from featrob import FeatrobModel, L2Head, TrainConfig, train
from featrob_hpm.heads import HPMHead

if TYPE_CHECKING:
    from featrob import RunContext

LOSSES = {"ce": "standard", "ikl": "ikl"}


def finetune_config(num_classes: int, loss: str, epochs: int | None, **changes: Any) -> TrainConfig:
    """The paper's fine-tuning recipe as a :class:`TrainConfig`."""
    return TrainConfig(
        method=LOSSES[loss],
        epochs=epochs or (1 if num_classes <= 10 else 2),
        batch_size=64,
        lr=5e-5,
        optimizer="adam",
        schedule="constant",
        trainable="head",
        **changes,
    )


def hpm_model(
    ctx: RunContext,
    head_options: dict[str, Any],
    *,
    loss: str = "ce",
    epochs: int | None = None,
) -> tuple[FeatrobModel, dict[str, Any]]:
    """The run model with a fine-tuned HPM head (shared backbone), and what was done.

    Returns:
        ``(model, info)``; ``info`` says whether the FC was adopted from the model's head,
        whether the head came from the cache, and the fine-tuning settings.
    """
    base = ctx.model
    head = HPMHead(base.num_features, ctx.num_classes, **head_options)
    adopted = head.adopt_fc(base.head)
    model = base.with_head(head.to(ctx.device), hpm=head.options())
    config = finetune_config(ctx.num_classes, loss, epochs)
    params = {
        "version": 2,  # 2: IKL's examples are crafted through the STE (BPDA), not in eval mode
        "head": head.options(),
        "train": config.cache_key(),
        "eps": ctx.config.eps,
        "norm": ctx.config.norm,
        "seed": ctx.config.seed,
    }

    def fit() -> None:
        train(
            model,
            ctx.data,
            config,
            ctx.host.training_methods,
            eps=ctx.config.eps,
            norm=ctx.config.norm,
            device=ctx.device,
            seed=ctx.config.seed,
            progress=ctx.progress,
        )

    # under torchrun rank 0 trains the head, the others load it
    cached = ctx.cached_model("hpm-head", params, head, fit)
    info = {"fc_adopted": adopted, "cached": cached, "loss": loss, "epochs": config.epochs}
    return model.eval(), info


@torch.no_grad()
def train_features(model: FeatrobModel, ctx: RunContext, batch_size: int = 256) -> tuple:
    """Backbone features ``[N, D]`` and labels of the whole training split."""
    split = ctx.data.split("train")
    feats = []
    for start in range(0, len(split), batch_size):
        pos = torch.arange(start, min(start + batch_size, len(split)))
        with ctx.autocast():
            feats.append(model.features(split.float_images(pos).to(ctx.device)).float().cpu())
    return torch.cat(feats), split.labels.clone()


def l2_means_model(ctx: RunContext) -> FeatrobModel:
    """The run model's backbone with a plain L2 head whose prototypes are the class means of
    the training features (no training: the L2 classifier that backbone implies)."""
    base = ctx.model
    head = L2Head(base.num_features, ctx.num_classes, prototypes="ema")
    feats, labels = train_features(base, ctx)
    head.init_from_means(feats, labels)
    return base.with_head(head.to(ctx.device), l2="class-means").eval()
