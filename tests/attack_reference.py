"""Shared fixtures for attack tests against AutoAttack's reference code (``pyautoattack``).

The reference model is a small CNN on scikit-learn's 8x8 digits, adversarially trained
(PGD, Linf eps 0.1) so that robust accuracies at the test budgets are far from 0 and 1 and
differences between attack implementations show.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from featrob.config import TrainConfig
from featrob.data.sources import load_digits
from featrob.models import build_model
from featrob.models.base import FeatrobModel
from featrob.plugins import PluginHost
from featrob.seeding import sample_seeds
from featrob.trainer import train

#: Budgets at which featrob and the reference are compared (Linf and L2).
LINF_EPS = (0.05, 0.1)
L2_EPS = (0.5, 1.0)


@lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    """Trained on 2 threads whoever asks first: the weights depend on the thread count
    (float reductions split differently), and the agreement tests' margins were set on
    this model (a module that runs on 1 thread used to train a different one when run
    alone)."""
    data = load_digits(None)
    host = PluginHost()
    torch.manual_seed(0)
    model = build_model(
        "small-cnn", host.models, data.input_shape, data.num_classes, mean=data.mean, std=data.std
    )
    cfg = TrainConfig(method="pgd", epochs=10, attack_steps=5, lr=3e-3)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(model, data, cfg, host.training_methods, eps=0.1, norm="linf",
              device=torch.device("cpu"))  # fmt: skip
    finally:
        torch.set_num_threads(before)
    return {k: v.clone() for k, v in model.state_dict().items()}


def reference_model() -> FeatrobModel:
    """The PGD-trained digits CNN in eval mode (trained once per test process, ~6 s)."""
    data = load_digits(None)
    host = PluginHost()
    model = build_model(
        "small-cnn", host.models, data.input_shape, data.num_classes, mean=data.mean, std=data.std
    )
    model.load_state_dict(_trained_state())
    return model.eval()


def reference_data(
    n: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test images, labels and per-sample seeds (of attack seed ``seed``) of the digits test
    split (first ``n``)."""
    data = load_digits(None)
    x, y = data.test.float_images(), data.test.labels
    seeds = sample_seeds(seed, data.test.indices)
    if n is not None:
        x, y, seeds = x[:n], y[:n], seeds[:n]
    return x, y, seeds


def robust_accuracy(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x_adv`` the model still classifies correctly."""
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).double().mean())
