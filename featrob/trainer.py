"""Training: standard, adversarial (PGD, TRADES) and plugin-provided methods.

The papers compare normally and adversarially trained models, and featrob must work offline
with the user's own data, so training is part of the product. A training method is a small
class with a per-batch ``loss``; the loop (optimiser, schedule, shuffling, augmentation,
progress) is shared.
"""

from __future__ import annotations

import contextlib
import platform
import time
import types
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import featrob
from featrob.config import TrainConfig
from featrob.data.base import DatasetBundle, DataSplit
from featrob.errors import ConfigError
from featrob.models.base import FeatrobModel
from featrob.options import merge_options
from featrob.progress import ProgressBars
from featrob.registry import Registry
from featrob.seeding import derive_seed, sample_seeds
from featrob.transfer import to_device


class TrainingMethod(ABC):
    """How one training batch turns into a loss.

    Class attributes:
        name: ``featrob train --method NAME``.
        description: one line for ``featrob plugins``.
        defaults: method-specific options (``train.method_options`` in the config).

    Args:
        config: the training settings (eps, norm, attack steps, ...).
        eps, norm: the threat model for adversarial methods.
        **options: overrides of :attr:`defaults`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: TrainConfig, eps: float, norm: str, **options: Any) -> None:
        self.config, self.eps, self.norm = config, eps, norm
        self.options = merge_options("training method", self.name, self.defaults, options)

    def parameters(self, model: FeatrobModel) -> Iterable[nn.Parameter]:
        """Parameters to optimise (all by default; a head-only method returns the head's)."""
        return model.parameters()

    def start(self, model: FeatrobModel, data: DatasetBundle) -> None:  # noqa: B027
        """Called once before the first epoch (e.g. to initialise prototypes)."""

    @abstractmethod
    def loss(self, model: FeatrobModel, x: Tensor, y: Tensor) -> Tensor:
        """Scalar loss for one batch; ``model`` is in train mode."""


@dataclass
class TrainReport:
    """What a training run measured."""

    method: str
    epochs: int
    duration_s: float
    history: list[dict[str, float]] = field(default_factory=list)


def default_epochs(data: DatasetBundle) -> int:
    """30 epochs on the tiny embedded digits, 10 elsewhere."""
    return 30 if data.name == "digits" else 10


def train(
    model: FeatrobModel,
    data: DatasetBundle,
    config: TrainConfig,
    methods: Registry[Any],
    *,
    eps: float,
    norm: str,
    device: torch.device,
    seed: int = 0,
    progress: ProgressBars | None = None,
) -> TrainReport:
    """Train ``model`` in place on ``data.train`` with ``config.method``.

    A head with an ``observe(z, y)`` method (EMA prototypes) gets each batch's clean features
    and labels before the batch's loss (one extra forward pass without gradients, which does
    not move batch-norm statistics). With ``config.trainable == "head"`` only the head's
    parameters train and the backbone stays frozen in eval mode.

    Args:
        model: the model to train (moved to ``device``).
        data: needs a training split.
        config: optimiser and method settings.
        methods: the training-method registry.
        eps, norm: default threat model for adversarial methods (``config.eps`` wins).
        device: where to train.
        seed: shuffling and initialisation seed.
        progress: progress bars.
    """
    progress = progress or ProgressBars(quiet=True)
    split = data.split("train")
    if config.n_per_class:
        split = split.balanced_subset(config.n_per_class, seed)
    method_cls = methods.get(config.method)
    method: TrainingMethod = method_cls(
        config,
        eps=config.eps if config.eps is not None else eps,
        norm=config.norm or norm,
        **config.method_options,
    )
    epochs = config.epochs or default_epochs(data)
    model.to(device)
    method.start(model, data)
    params = [p for p in method.parameters(model) if p.requires_grad]
    if config.trainable == "head":
        in_head = {id(p) for p in model.head.parameters()}
        params = [p for p in params if id(p) in in_head]
    observe = getattr(model.head, "observe", None)
    if not params and not callable(observe):
        raise ConfigError(f"training method {method.name!r} has no parameter to train")
    optimizer = _optimizer(config, params) if params else None
    steps_per_epoch = max(1, -(-len(split) // config.batch_size))
    total_steps = epochs * steps_per_epoch
    scheduler = _scheduler(config, optimizer, total_steps) if optimizer else None
    gen = torch.Generator().manual_seed(derive_seed(seed, "train-shuffle"))
    report = TrainReport(method=method.name, epochs=epochs, duration_s=0.0)
    start = time.perf_counter()
    frozen = frozen_backbone(model) if config.trainable == "head" else contextlib.nullcontext()
    with progress.bar(total_steps, f"train {method.name}") as bar, frozen:
        for epoch in range(epochs):
            model.train()
            losses = []
            for x, y in _batches(split, config.batch_size, gen, device, config.augment):
                if callable(observe):
                    with torch.no_grad(), norm_statistics_frozen(model):
                        observe(model.features(x), y)
                if optimizer is None:  # a head with only EMA state: nothing to optimise
                    with torch.no_grad():
                        losses.append(method.loss(model, x, y).detach())
                    bar.advance(1)
                    continue
                loss = method.loss(model, x, y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {loss.item()} in epoch {epoch + 1}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(loss.detach())
                bar.advance(1)
            mean_loss = float(torch.stack(losses).mean())
            report.history.append({"epoch": epoch + 1, "loss": mean_loss})
            bar.update(f"train {method.name} (epoch {epoch + 1}/{epochs}, loss {mean_loss:.3f})")
    model.eval()
    report.duration_s = time.perf_counter() - start
    return report


@contextlib.contextmanager
def frozen_backbone(model: FeatrobModel) -> Iterator[None]:
    """Within the context the backbone takes no gradient step and stays in eval mode, even
    when a training method calls ``model.train()`` (as adversarial methods do after
    generating their examples); input gradients still flow through it."""
    backbone = model.backbone
    grads = [(p, p.requires_grad) for p in backbone.parameters()]
    for p, _ in grads:
        p.requires_grad_(False)
    backbone.train = types.MethodType(
        lambda self, mode=True: nn.Module.train(self, False), backbone
    )
    backbone.eval()
    try:
        yield
    finally:
        del backbone.train
        for p, flag in grads:
            p.requires_grad_(flag)


@contextlib.contextmanager
def norm_statistics_frozen(model: nn.Module) -> Iterator[None]:
    """Batch-norm layers in train mode normalise with batch statistics but do not update
    their running averages: an extra forward pass (the features a head observes) must not
    count twice in them."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            tracked = m.num_batches_tracked
            saved.append((m, m.momentum, None if tracked is None else tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True
        )
    raise ConfigError(f"unknown optimizer {config.optimizer!r}; use 'adam' or 'sgd'")


def _scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total: int) -> Any:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ConfigError(f"unknown schedule {config.schedule!r}; use 'cosine' or 'constant'")


def _batches(
    split: DataSplit, batch_size: int, gen: torch.Generator, device: torch.device, augment: bool
) -> Iterator[tuple[Tensor, Tensor]]:
    order = torch.randperm(len(split), generator=gen)
    for start in range(0, len(order), batch_size):
        pos = order[start : start + batch_size]
        x = to_device(split.float_images(pos), device)
        y = to_device(split.labels[pos], device)
        if augment:
            x = random_crop_flip(x, gen)
        yield x, y


def random_crop_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random crop after zero padding (4 px for >= 28 px images, else 1) and, for colour
    images, random horizontal flips; vectorised over the batch."""
    b, _, h, w = x.shape
    pad = 4 if min(h, w) >= 28 else 1
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    out = padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if x.shape[1] == 3:
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out.contiguous()


# ---------------------------------------------------------------------- evaluation
def accuracy(
    model: FeatrobModel,
    split: DataSplit,
    *,
    device: torch.device,
    batch_size: int = 256,
    attack: Any = None,
    seed: int = 0,
    progress: ProgressBars | None = None,
) -> float:
    """Accuracy on ``split``, clean or under ``attack`` (per-sample seeds from ``seed``)."""
    model.eval()
    correct = 0
    progress = progress or ProgressBars(quiet=True)
    what = f"evaluate {attack.label()}" if attack is not None else "evaluate"
    starts = range(0, len(split), batch_size)
    for start in progress.track(starts, len(starts), what):
        pos = torch.arange(start, min(start + batch_size, len(split)))
        x = to_device(split.float_images(pos), device)
        y = to_device(split.labels[pos], device)
        if attack is not None:
            x = attack.perturb(model, x, y, sample_seeds=sample_seeds(seed, split.indices[pos]))
        with torch.no_grad():
            correct += int((model(x).argmax(1) == y).sum())
    return correct / max(len(split), 1)


def model_card(
    model: FeatrobModel,
    data: DatasetBundle,
    config: TrainConfig,
    report: TrainReport,
    *,
    eps: float,
    norm: str,
    seed: int,
    clean_accuracy: float,
    pgd_accuracy: float,
    pgd_spec: dict[str, Any],
) -> dict[str, Any]:
    """The JSON card written beside a checkpoint: what was trained, how, and how well."""
    import torchvision

    train_split = data.split("train")
    return {
        "featrob": featrob.__version__,
        "architecture": model.arch,
        "normalization": {**model.normalization.to_json(), "source": "trained with it"},
        "data": {
            "spec": data.spec,
            "fingerprint": data.fingerprint,
            "classes": data.classes,
            "n_train": len(train_split),
            "n_test": len(data.test),
        },
        "method": report.method,
        "train": asdict(config),
        "threat_model": {"eps": eps, "norm": norm},
        "seed": seed,
        "epochs": report.epochs,
        "duration_s": round(report.duration_s, 2),
        "history": report.history,
        "clean_accuracy": clean_accuracy,
        "pgd_accuracy": pgd_accuracy,
        "pgd": pgd_spec,
        "fingerprint": model.fingerprint(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
        },
    }
