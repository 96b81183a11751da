"""The Python API for notebooks: one metric on an in-memory model and tensors.

``featrob.run(config)`` does what ``featrob run`` does; :func:`load_data` and
:func:`load_model` get a data set and a model from their specs as a run does; and
:func:`analyze` covers the other common case, a model and images already in memory::

    import featrob

    result = featrob.analyze("sensitivity", net, images, labels, eps=8 / 255,
                             options={"samples": 64})
    result.summary, result.tables["sensitivity"], result.figures

``net`` may be any PyTorch classifier (its last ``nn.Linear`` is taken as the head, as for
``--model package.module:factory``) or a :class:`~featrob.models.base.FeatrobModel`;
``images`` are ``[N, C, H, W]`` in [0, 1] (float) or 0..255 (uint8).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from featrob.config import RunConfig
from featrob.context import RunContext
from featrob.data.base import DatasetBundle, DataSplit
from featrob.errors import ConfigError, DataError
from featrob.metrics import Metric
from featrob.models.base import FeatrobModel, split_backbone_head
from featrob.plugins import PluginHost
from featrob.prepare import load_run_data, prepare_model, resolve_device
from featrob.progress import ProgressBars
from featrob.results import MetricResult
from featrob.store import FeatureStore


def load_data(
    spec: str = "digits", *, host: PluginHost | None = None, **config: Any
) -> DatasetBundle:
    """The data set a spec names (``"digits"``, ``"cifar10"``, ``"npz:PATH"``, ...), as
    ``featrob run --dataset SPEC`` loads it.

    Args:
        spec: the data spec.
        host: plugin host (default: every installed plugin).
        **config: run config keys that affect loading (``data_root``, ``download``,
            ``data_options``).
    """

    cfg = RunConfig.from_dict({**config, "dataset": spec})
    return load_run_data(cfg, host or PluginHost())


def load_model(
    spec: str = "small-cnn",
    data: DatasetBundle | str = "digits",
    *,
    weights: str | Path | None = None,
    device: str = "cpu",
    host: PluginHost | None = None,
    **config: Any,
) -> FeatrobModel:
    """The model a spec names, as ``featrob run`` gets it: the checkpoint ``weights``, or
    trained once with the ``train`` settings and cached under ``$FEATROB_HOME/models``.

    Args:
        spec: the model spec (``"small-cnn"``, ``"resnet18"``, ``"tv:NAME"``,
            ``"package.module:factory"``).
        data: a loaded data set or its spec (input shape, classes, normalisation, training).
        weights: a checkpoint or state_dict file, or None to train (or load the cached one).
        device: where the model lives.
        host: plugin host (default: every installed plugin).
        **config: other run config keys (``head``, ``model_options``, ``normalize``,
            ``model_dir``, ``eps``, and ``train={"method": "pgd", "epochs": 5}``, ...).

    The model's input normalisation (``model.normalization``, with its source) follows the
    rules of :mod:`featrob.models.normalization`.
    """

    host = host or PluginHost()
    bundle = load_data(data, host=host) if isinstance(data, str) else data
    values = {**config, "model": spec, "dataset": bundle.spec, "quiet": True}
    if weights is not None:
        values["weights"] = str(weights)
    cfg = RunConfig.from_dict(values)
    model, _ = prepare_model(
        cfg, bundle, host, resolve_device(device), ProgressBars(quiet=cfg.quiet)
    )
    return model


def wrap_model(
    net: nn.Module,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> FeatrobModel:
    """A plain classifier as a :class:`FeatrobModel` (a copy: ``net`` is left untouched).

    Args:
        net: maps ``[B, C, H, W]`` images in [0, 1] to logits; its last ``nn.Linear`` (or its
            ``head`` attribute, with ``backbone``) is the head.
        mean, std: per-channel normalisation to apply before ``net`` (None: none).
    """
    if isinstance(net, FeatrobModel):
        return net.eval()
    backbone, head, head_name = split_backbone_head(copy.deepcopy(net))
    arch = {"spec": f"in-memory:{type(net).__name__}", "head_name": head_name}
    return FeatrobModel(backbone, head, mean=mean, std=std, arch=arch).eval()


def in_memory_data(
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int],
    classes: Sequence[str] | None = None,
) -> DatasetBundle:
    """A data set of one (test) split from tensors.

    Float images must lie in [0, 1]; they are stored as 8-bit pixels (``round(255 x)``, the
    resolution of every image data set), so 8-bit sources round-trip exactly.

    Raises:
        DataError: bad shapes, NaNs, values outside [0, 1], or a label count mismatch.
    """
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images
    x = x.detach().cpu()
    if x.dim() != 4:
        raise DataError(f"images must be N x C x H x W, got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        x = x.double()
        if torch.isnan(x).any():
            raise DataError("images contain NaN")
        if x.min() < 0 or x.max() > 1:
            raise DataError(
                f"float images must lie in [0, 1], got [{float(x.min()):g}, {float(x.max()):g}]"
            )
        x = (x * 255).round().to(torch.uint8)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    if len(y) != len(x):
        raise DataError(f"{len(y)} labels for {len(x)} images")
    digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:20]
    return DatasetBundle(
        name="memory",
        spec="memory",
        test=DataSplit(y, images=x),
        classes=list(classes) if classes is not None else [],
        fingerprint=f"memory-{digest}",
    )


def context_for(
    model: FeatrobModel,
    data: DatasetBundle,
    *,
    host: PluginHost | None = None,
    store: str | Path | None = None,
    device: str | torch.device = "cpu",
    **config: Any,
) -> RunContext:
    """A :class:`RunContext` for an in-memory model and data (no training, no files).

    Args:
        store: a feature-store folder, or None for none.
        device: where to compute.
        **config: any :class:`RunConfig` keys (``eps=0.1``, ``attacks=["fgsm"]``, ...).
    """

    host = host or PluginHost()
    cfg = RunConfig.from_dict({"quiet": True, "store": "none", **config})
    split = data.split(cfg.split)
    if cfg.n_per_class:
        split = split.balanced_subset(cfg.n_per_class, cfg.seed)
    dev = torch.device(device)
    return RunContext(
        cfg,
        model.to(dev).eval(),
        data,
        split,
        dev,
        host,
        FeatureStore(store) if store is not None else None,
        ProgressBars(quiet=cfg.quiet),
        model.fingerprint(),
    )


def analyze(
    metric: str | type[Metric],
    model: nn.Module,
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int],
    *,
    eps: float = 0.1,
    norm: str = "linf",
    options: dict[str, Any] | None = None,
    store: str | Path | None = None,
    device: str = "cpu",
    host: PluginHost | None = None,
    **config: Any,
) -> MetricResult:
    """Run one metric on an in-memory model and images; return its result.

    Args:
        metric: a registered metric name (``"sensitivity"``) or a :class:`Metric` class.
        model: a PyTorch classifier or a :class:`FeatrobModel` (see :func:`wrap_model`).
        images, labels: ``[N, C, H, W]`` images (see :func:`in_memory_data`) and labels.
        eps, norm: the threat model.
        options: the metric's options (as ``[metrics.NAME]`` in a config).
        store: a feature-store folder to reuse work across calls, or None.
        device: ``cpu`` or ``cuda``.
        **config: further run config keys (``attacks``, ``seed``, ``batch_size``, ...).

    Raises:
        UnknownNameError: unknown metric (with close matches); ConfigError, DataError: bad
            options or inputs. A failing metric raises its own exception.
    """
    host = host or PluginHost()
    cls = host.metrics.get(metric) if isinstance(metric, str) else metric
    if not (isinstance(cls, type) and issubclass(cls, Metric)):
        raise ConfigError(f"{metric!r} is not a metric name or Metric class")
    instance = cls(**(options or {}))
    ctx = context_for(
        wrap_model(model),
        in_memory_data(images, labels),
        host=host,
        store=store,
        device=device,
        eps=eps,
        norm=norm,
        **config,
    )
    return instance.compute(ctx)
