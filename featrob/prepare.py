"""Getting a ready model and data set for a run: build, load or train (once, cached)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from featrob.attacks.pgd import PGD
from featrob.attacks.surrogate import bpda_hooks
from featrob.config import RunConfig, TrainConfig
from featrob.data import load_dataset
from featrob.data.base import DatasetBundle
from featrob.errors import ConfigError, ModelError
from featrob.model_cache import cached_training, model_cache_path
from featrob.models import build_model, load_weights, normalization, save_checkpoint, warm_start
from featrob.models.base import FeatrobModel
from featrob.models.checkpoints import read_card
from featrob.models.normalization import Normalization
from featrob.plugins import PluginHost
from featrob.progress import ProgressBars
from featrob.seeding import derive_seed
from featrob.trainer import accuracy, model_card, train

#: Samples per class used for the PGD accuracy on a model card when the test split is large.
CARD_EVAL_PER_CLASS = 100


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU")
    return device


def load_run_data(config: RunConfig, host: PluginHost) -> DatasetBundle:
    """The configured data set (whole; the analysed split is subsampled by the runner)."""
    return load_dataset(
        config.dataset,
        host.datasets,
        root=Path(config.data_root) if config.data_root else None,
        download=config.download,
        options=config.data_options,
    )


def build(config: RunConfig, data: DatasetBundle, host: PluginHost) -> FeatrobModel:
    """The configured architecture with fresh (seeded) weights, checked on one input, with
    the normalisation it gets when featrob trains it (from ``train.init``'s card when
    training starts from a checkpoint): see :mod:`featrob.models.normalization`."""
    torch.manual_seed(derive_seed(config.seed, "model-init"))
    model = build_model(
        config.model,
        host.models,
        data.input_shape,
        data.num_classes,
        options=config.model_options,
        head=config.head,
        head_registry=host.heads,
        head_options=config.head_options,
        model_dir=config.model_dir,
    )
    init_card = read_card(config.train.init) if config.train.init else None
    apply_normalization(model, config, data, card=init_card, weights=config.train.init)
    check_forward(model, data)
    return model


def apply_normalization(
    model: FeatrobModel,
    config: RunConfig,
    data: DatasetBundle,
    *,
    card: dict[str, Any] | None,
    weights: str | None,
) -> None:
    """Give ``model`` the normalisation the rules choose (:func:`normalization.choose`)."""
    chosen = normalization.choose(
        requested=config.normalize,
        default=model.default_normalization,
        card=card,
        weights=weights,
        data_mean=data.mean,
        data_std=data.std,
        channels=data.input_shape[0],
    )
    model.set_normalization(chosen)


def check_forward(model: FeatrobModel, data: DatasetBundle) -> None:
    """One forward pass on one image: a shape mismatch becomes one clear line."""
    x = data.test.float_images(torch.arange(1))
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:  # any failure here is a model/data mismatch
        raise ModelError(
            f"model {model.arch.get('spec')!r} fails on an input of shape {tuple(x.shape)} "
            f"from {data.spec!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != data.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"model {model.arch.get('spec')!r} returns {shape} for one input; "
            f"featrob needs logits of shape (1, {data.num_classes})"
        )


def cached_model_path(
    config: RunConfig, data: DatasetBundle, norm: Normalization | None = None
) -> Path:
    """Where ``featrob run`` keeps the model it trained for this exact configuration.

    The key holds the normalisation only when it is not the data set's (the one every
    model got before normalisation became the model's property), so models cached before
    keep their keys.
    """
    key: dict[str, Any] = {
        "model": config.model,
        "model_options": config.model_options,
        "head": config.head,
        "head_options": config.head_options,
        "data": data.spec,
        "data_fingerprint": data.fingerprint,
        "data_options": config.data_options,
        "train": config.train.cache_key(),
        "eps": config.eps,
        "norm": config.norm,
        "seed": config.seed,
    }
    if norm is not None and (norm.mean, norm.std) != (_tuple(data.mean), _tuple(data.std)):
        key["normalization"] = [norm.mean, norm.std]
    return model_cache_path(key)


def _tuple(values: Any) -> tuple[float, ...] | None:
    return tuple(float(v) for v in values) if values is not None else None


def fit(
    model: FeatrobModel,
    data: DatasetBundle,
    train_config: TrainConfig,
    host: PluginHost,
    *,
    eps: float,
    norm: str,
    device: torch.device,
    seed: int,
    progress: ProgressBars,
) -> dict[str, Any]:
    """Train (from ``train_config.init`` when set), then measure clean and PGD-20 accuracy;
    return the model card."""

    init = None
    if train_config.init is not None:
        init = warm_start(model, train_config.init)
        progress.log(f"starting from {init['from']} (head {init['head']})")
    report = train(
        model,
        data,
        train_config,
        host.training_methods,
        eps=eps,
        norm=norm,
        device=device,
        seed=seed,
        progress=progress,
    )
    card_eps = train_config.eps if train_config.eps is not None else eps
    card_norm = train_config.norm or norm
    test = data.test
    if len(test) > CARD_EVAL_PER_CLASS * data.num_classes:
        test = test.balanced_subset(CARD_EVAL_PER_CLASS, seed)
    pgd = PGD(eps=card_eps, norm=card_norm, steps=20, seed=seed)
    clean = accuracy(model, test, device=device)
    # A head with a non-differentiable part (HPM's hard assignment) is attacked through its
    # BPDA substitute, else the card's PGD number would be an obfuscated, naive one.
    with bpda_hooks(model) as substituted:
        robust = accuracy(model, test, device=device, attack=pgd, seed=seed, progress=progress)
    card = model_card(
        model,
        data,
        train_config,
        report,
        eps=card_eps,
        norm=card_norm,
        seed=seed,
        clean_accuracy=clean,
        pgd_accuracy=robust,
        pgd_spec=pgd.spec(),
    )
    card["eval_n"] = len(test)
    if substituted:
        card["pgd"]["gradient"] = "bpda"
    if init is not None:
        card["init"] = init
    return card


def write_checkpoint(model: FeatrobModel, path: Path, card: dict[str, Any]) -> Path:
    """Save the checkpoint and its JSON card (``FILE.json`` beside ``FILE.pt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, path, card)
    card_path = path.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2, default=str) + "\n")
    return card_path


def prepare_model(
    config: RunConfig,
    data: DatasetBundle,
    host: PluginHost,
    device: torch.device,
    progress: ProgressBars,
    on_built: Callable[[FeatrobModel], object] | None = None,
) -> tuple[FeatrobModel, dict[str, Any]]:
    """The run's model in eval mode on ``device``, and its card.

    ``on_built(model)`` runs once the architecture is built, before any training or loading
    (the runner sizes its CPU threads there, on the real model).

    With ``weights`` the checkpoint is loaded. Without, the model is trained with
    ``config.train`` and cached under ``$FEATROB_HOME/models`` keyed by everything that
    determines it, so the next identical run loads it.
    """
    model = build(config, data, host)
    if on_built is not None:
        on_built(model)
    if config.weights:
        card = load_weights(model, config.weights)
        apply_normalization(model, config, data, card=card, weights=config.weights)
        return _placed(model, config, device), card
    if model.pretrained:  # the factory loaded trained weights (RobustBench, torchvision, ...)
        return _placed(model, config, device), {"pretrained": model.pretrained}
    path = cached_model_path(config, data, model.normalization)

    def load(p: Path) -> dict[str, Any]:
        progress.log(f"loading cached model {p}")
        return load_weights(model, p)

    def train() -> dict[str, Any]:
        progress.log(
            f"training {config.model} on {data.spec} ({config.train.method}); cached as {path}"
        )
        return fit(
            model,
            data,
            config.train,
            host,
            eps=config.eps,
            norm=config.norm,
            device=device,
            seed=config.seed,
            progress=progress,
        )

    card, _ = cached_training(
        path, load=load, train=train, save=lambda c, p: write_checkpoint(model, p, c)
    )
    return _placed(model, config, device), card


def _placed(model: FeatrobModel, config: RunConfig, device: torch.device) -> FeatrobModel:
    """The model on ``device`` in eval mode, its convolutions channels-last if asked."""
    model = model.to(device).eval()
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)  # conv weights; inputs follow
    return model
