"""Helpers for testing featrob plugins, ours and third parties' alike.

Typical use in a plugin's test suite::

    from featrob.testing import check_attack, check_metric, make_context

    def test_my_metric():
        result = check_metric(MyMetric)          # runs it on a tiny trained model
        assert result.summary["my_value"] > 0

    def test_my_attack():
        check_attack(MyAttack, eps=0.1)          # ball, box, batch invariance, NaN safety

    def test_my_model(tmp_path):                 # a model plugin: every metric runs on it
        data = write_npz_dataset(tmp_path / "d.npz", shape=(3, 32, 32), classes=10)
        check_model("mymodels:net", data)

Everything here is offline and fast (a few seconds on a 2-core CPU): data come from
scikit-learn's bundled 8x8 digits, the model is a tiny CNN trained for a few epochs.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featrob.api import context_for
from featrob.attacks.base import Attack, flat_norm
from featrob.budgets import BUDGETS, budget_options
from featrob.config import TrainConfig
from featrob.context import RunContext
from featrob.data.base import DatasetBundle, DataSplit
from featrob.data.sources import load_digits
from featrob.metrics import Metric
from featrob.models.base import FeatrobModel
from featrob.models.loading import build_model
from featrob.plugins import PluginHost
from featrob.results import Finding, MetricResult
from featrob.runner import run
from featrob.seeding import sample_seeds
from featrob.trainer import train


def tiny_dataset(n_per_class_test: int = 10) -> DatasetBundle:
    """scikit-learn's digits (8x8 grey) with a balanced test subset of ``n_per_class_test``."""

    bundle = load_digits(None)
    bundle.test = bundle.test.balanced_subset(n_per_class_test, seed=0)
    return bundle


@lru_cache(maxsize=4)
def _trained_state(epochs: int) -> tuple[dict[str, torch.Tensor], tuple, tuple]:

    data = tiny_dataset()
    host = PluginHost()
    torch.manual_seed(0)
    model = build_model(
        "small-cnn", host.models, data.input_shape, data.num_classes, mean=data.mean, std=data.std
    )
    train(
        model,
        data,
        TrainConfig(epochs=epochs, batch_size=64, lr=3e-3),
        host.training_methods,
        eps=0.1,
        norm="linf",
        device=torch.device("cpu"),
    )
    return {k: v.clone() for k, v in model.state_dict().items()}, data.mean, data.std


def tiny_model(trained: bool = True, epochs: int = 8) -> FeatrobModel:
    """A small CNN on 8x8 digits; trained (~95% accuracy, cached per process) or fresh."""

    data = tiny_dataset()
    host = PluginHost()
    torch.manual_seed(0)
    model = build_model(
        "small-cnn", host.models, data.input_shape, data.num_classes, mean=data.mean, std=data.std
    )
    if trained:
        state, _, _ = _trained_state(epochs)
        model.load_state_dict(state)
    return model.eval()


def make_context(
    model: FeatrobModel | None = None,
    data: DatasetBundle | None = None,
    *,
    host: PluginHost | None = None,
    store: str | Path | None = "memory",
    **config: Any,
) -> RunContext:
    """A :class:`RunContext` for an in-memory model and data (no training, no files).

    Args:
        model: default :func:`tiny_model`.
        data: default :func:`tiny_dataset`.
        host: plugin host (default: every installed plugin).
        store: a folder for a real feature store, or ``"memory"`` for none.
        **config: any :class:`RunConfig` keys (``eps=0.1``, ``attacks=["fgsm"]``, ...).
    """

    return context_for(
        model if model is not None else tiny_model(),
        data if data is not None else tiny_dataset(),
        host=host,
        store=store if store not in (None, "memory") else None,
        **config,
    )


def check_metric(
    metric_cls: type[Metric], ctx: RunContext | None = None, **options: Any
) -> MetricResult:
    """Run a metric on a tiny context and check the result is well-formed.

    Checks: it has a ``name``; every entry of its ``budgets`` is a budget and gives options
    the metric accepts; ``compute`` returns a :class:`MetricResult`; the summary is flat and
    JSON-able; tables are lists of dicts; arrays are NumPy arrays; figures have a kind; the
    result serialises to JSON.

    Returns:
        The result, for further assertions.
    """
    assert isinstance(getattr(metric_cls, "name", None), str), "a metric needs a `name`"
    for budget in metric_cls.budgets:
        assert budget in BUDGETS, f"budgets has {budget!r}; budgets are {', '.join(BUDGETS)}"
        metric_cls(**budget_options(metric_cls, budget))  # raises on an unknown option
    ctx = ctx or make_context()
    result = metric_cls(**options).compute(ctx)
    assert isinstance(result, MetricResult), f"compute returned {type(result).__name__}"
    for key, value in result.summary.items():
        assert isinstance(key, str), f"summary key {key!r} is not a string"
        assert value is None or isinstance(value, (bool, int, float, str, np.generic)), (
            f"summary value {key}={value!r} is not a plain number or string"
        )
    for table, rows in result.tables.items():
        assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows), (
            f"table {table!r} must be a list of row dicts"
        )
    for name, arr in result.arrays.items():
        assert isinstance(arr, np.ndarray), f"array {name!r} must be a numpy array"
    for name, fig in result.figures.items():
        assert fig.kind, f"figure {name!r} needs a kind"
    for finding in result.findings:  # sentences with a figure of this result, if any
        assert isinstance(finding, Finding), f"finding {finding!r} is not a featrob.Finding"
        assert finding.text.strip(), "a finding needs a sentence"
        assert finding.figure is None or finding.figure in result.figures, (
            f"a finding names figure {finding.figure!r}, which the result does not have"
        )
    json.dumps(result.to_json(), allow_nan=False)
    return result


def check_attack(
    attack_cls: type[Attack],
    eps: float = 0.1,
    norms: tuple[str, ...] | None = None,
    model: FeatrobModel | None = None,
    **params: Any,
) -> None:
    """Check an attack's contract on a tiny trained model, for each supported norm.

    Checks: outputs have the input's shape, lie in [0, 1] and inside the eps ball; results
    do not depend on batching when per-sample seeds are given (unless the class declares
    ``batch_invariant = False``; checked on a float64 copy of the model); NaN outputs of
    the model do not produce NaN adversarial examples; ``spec()`` is JSON-able; a gradient
    attack does not raise accuracy.
    """
    model = model or tiny_model()
    data = tiny_dataset()
    x = data.test.float_images()[:40]
    y = data.test.labels[:40]

    seeds = sample_seeds(0, data.test.indices[:40])
    for norm in norms or attack_cls.norms:
        attack = attack_cls(eps=eps, norm=norm, seed=0, **params)
        json.dumps(attack.spec())
        x_adv = attack.perturb(model, x, y, sample_seeds=seeds)
        assert x_adv.shape == x.shape, (
            f"{attack.name}: shape {tuple(x_adv.shape)} != {tuple(x.shape)}"
        )
        assert torch.isfinite(x_adv).all(), f"{attack.name}: non-finite outputs"
        assert x_adv.min() >= 0 and x_adv.max() <= 1, f"{attack.name}: outputs leave [0, 1]"
        dist = flat_norm(x_adv - x, norm)
        assert bool((dist <= eps * (1 + 1e-5) + 1e-6).all()), (
            f"{attack.name}: perturbation {float(dist.max()):.6f} exceeds eps={eps} ({norm})"
        )
        # In float64: float32 results of a small batch differ from a large one's in the
        # last bits (other kernels), which can steer an iterative attack's path elsewhere.
        model64, x64 = copy.deepcopy(model).double(), x.double()
        whole = attack.perturb(model64, x64, y, sample_seeds=seeds)
        halves = torch.cat(
            [
                attack.perturb(model64, x64[:17], y[:17], sample_seeds=seeds[:17]),
                attack.perturb(model64, x64[17:], y[17:], sample_seeds=seeds[17:]),
            ]
        )
        assert not attack_cls.batch_invariant or torch.allclose(halves, whole, atol=1e-9), (
            f"{attack.name}: result depends on batching"
        )
        if attack.uses_gradients:
            with torch.no_grad():
                clean_acc = (model(x).argmax(1) == y).float().mean()
                adv_acc = (model(x_adv).argmax(1) == y).float().mean()
            assert adv_acc <= clean_acc + 1e-6, (
                f"{attack.name}: accuracy rose from {clean_acc} to {adv_acc}"
            )

        def nan_model(inp: torch.Tensor) -> torch.Tensor:
            out = model(inp)
            return out * torch.where(torch.arange(len(out))[:, None] % 2 == 0, math.nan, 1.0)

        x_nan = attack.perturb(nan_model, x[:8], y[:8], sample_seeds=seeds[:8])
        assert torch.isfinite(x_nan).all(), f"{attack.name}: NaN model outputs gave NaN inputs"


#: Config keys that make every first-party metric cheap enough for a test on a large model
#: (a ResNet on 32x32 or 224x224 inputs on a CPU): one attack step, a few samples, pairs and
#: features. The numbers mean nothing; that every metric runs through means a lot.
TINY_BUDGETS: dict[str, Any] = {
    "attacks": ["pgd(steps=1)"],
    "batch_size": 16,
    "metrics": {
        "collision": {
            "classes": [0, 1],
            "per_class": 1,
            "projections": 1,
            "m": 2,
            "max_iter": 2,
            "eps_points": 2,
            "fab": False,
        },
        "compression": {"attack": "fab(steps=2)", "path_points": 2, "untargeted": False},
        "msa": {
            "steps": 1,
            "square_queries": 2,
            "batch_sizes": [1],
            "figure1_scales": [1.0],
            "epochs": 1,
        },
        "scale": {"perturbations": ["fgsm"], "sections": 2, "min_count": 1, "resamples": 10},
        "sensitivity": {"samples": 4, "features": 4, "steps": 1, "accuracy_steps": 1},
    },
}


def write_npz_dataset(
    path: str | Path,
    *,
    shape: tuple[int, int, int] = (3, 32, 32),
    classes: int = 10,
    train_per_class: int = 2,
    test_per_class: int = 1,
    seed: int = 0,
) -> str:
    """Write a small ``npz:`` data set of random uint8 images; return its spec.

    Enough to run a model of the right input shape and class count through every metric
    offline (``check_model``); the images are noise, so accuracies are chance.
    """
    rng = np.random.default_rng(seed)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(classes), per_class)
        images = rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
        return images, labels.astype(np.int64)

    x_train, y_train = split(train_per_class)
    x_test, y_test = split(test_per_class)
    path = Path(path)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


def check_model(
    model: str,
    dataset: str,
    *,
    out: str | Path | None = None,
    host: PluginHost | None = None,
    **config: Any,
) -> Any:
    """Run a model through every installed metric at :data:`TINY_BUDGETS` and check that
    every metric succeeded and the run recorded the model's normalisation.

    Args:
        model: the model spec (``rb:...``, ``timm:...``, ``tv:...``, ``pkg.module:factory``).
        dataset: the data spec (e.g. from :func:`write_npz_dataset`).
        out: the results folder (default: a temporary one).
        host: plugin host (default: every installed plugin).
        **config: more run config keys (``weights``, ``model_dir``, ``normalize``, ``metrics``
            entries are merged into the tiny budgets).

    Returns:
        The run's :class:`~featrob.results.Results`.
    """

    metrics = {k: dict(v) for k, v in TINY_BUDGETS["metrics"].items()}
    for name, options in config.pop("metrics", {}).items():
        metrics.setdefault(name, {}).update(options)
    values = {
        **TINY_BUDGETS,
        "model": model,
        "dataset": dataset,
        "metrics": metrics,
        "out": str(out or tempfile.mkdtemp(prefix="featrob-check-")),
        "store": "none",
        "quiet": True,
        "reports": ["json"],
        **config,
    }
    results = run(values, host=host or PluginHost())
    failures = results.failure_lines()
    assert not failures, f"{model}: " + "; ".join(failures)
    assert "normalization" in results.environment, f"{model}: no normalisation recorded"
    return results


def plugin_host(plugin: object, name: str) -> PluginHost:
    """Every installed plugin, plus ``plugin`` under ``name`` when it is not installed (a
    plugin's own tests run from its source folder as well as from an installed copy)."""
    host = PluginHost()
    if name not in host.plugins:
        host.add(plugin, name)
    return host


def temporary_store() -> Path:
    """A fresh folder for a feature store (removed at interpreter exit by the OS tmp cleaner)."""
    return Path(tempfile.mkdtemp(prefix="featrob-store-"))


__all__ = [
    "TINY_BUDGETS",
    "DataSplit",
    "check_attack",
    "check_metric",
    "check_model",
    "make_context",
    "plugin_host",
    "temporary_store",
    "tiny_dataset",
    "tiny_model",
    "write_npz_dataset",
]
