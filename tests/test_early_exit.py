"""Early exit: attacks stop spending passes on broken samples, and the flags do not change.

APGD (CE, DLR, targeted), FAB(-T) and PGD drop a sample from the running batch once it is
broken. Every quantity of a step is per sample, so the samples still running follow exactly
the path of a full run: the robust flags must be identical with and without early exit, at
any batch size, for both norms and on models with convolutions and batch norm.

The comparisons run in float64. In float32 a batch of 7 (or any size below a kernel's
blocking) gives results that differ from a batch of 64 in the last bits, full run or not;
an iterative attack that steps by the sign of the gradient can amplify that into another
path. Float64 shrinks those differences below anything the paths could notice, so what is
compared is the attack's logic, not the kernels' rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import featrob.attacks.apgd as apgd_module
import featrob.attacks.fab as fab_module
import featrob.attacks.pgd as pgd_module
from featrob import evaluate
from featrob.attacks.base import without_early_exit
from featrob.attacks.factory import make_attack
from featrob.attacks.protocol import Plan
from featrob.builtins.training_methods import _pgd
from featrob.testing import make_context
from tests.attack_reference import reference_data, reference_model

ATTACKS = [
    "apgd-ce(steps=20)",
    "apgd-dlr(steps=20)",
    "apgd-t(steps=10, n_target_classes=3)",
    "fab(steps=10)",
    "fab-t(steps=10, n_target_classes=2)",
    "pgd(steps=10)",
    "pgd(steps=5, restarts=3)",
]
THREATS = {"linf": 0.06, "l2": 0.8}


def _conv_bn_model() -> nn.Module:
    """A second architecture: convolutions and batch norm (eval mode), briefly trained."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )
    x, y, _ = reference_data(200)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


MODELS = {"cnn": reference_model, "conv-bn": _conv_bn_model}


def _double(model_name: str):
    x, y, seeds = reference_data(64)
    return MODELS[model_name]().double(), x.double(), y, seeds


class Counter:
    """A forward that counts the samples it is given (one per sample and pass)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.samples = model, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += len(x)
        return self.model(x)


def _flags(attack, model, x, y, seeds, batch_size):
    counter = Counter(model)
    adv = torch.cat(
        [
            attack.perturb(
                counter,
                x[i : i + batch_size],
                y[i : i + batch_size],
                sample_seeds=seeds[i : i + batch_size],
            )
            for i in range(0, len(x), batch_size)
        ]
    )
    with torch.no_grad():
        broken = model(adv).argmax(1) != y
    return broken, adv, counter.samples


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("norm", list(THREATS))
@pytest.mark.parametrize("spec", ATTACKS)
def test_identical_flags_with_and_without_early_exit(spec, norm, model_name):
    model, x, y, seeds = _double(model_name)
    eps = THREATS[norm]
    full = make_attack(spec, eps=eps, norm=norm, early_exit=False)
    early = make_attack(spec, eps=eps, norm=norm)
    assert early.params["early_exit"] is True  # the default
    reference, _, full_passes = _flags(full, model, x, y, seeds, 64)
    assert 0 < int(reference.sum()) < len(x), "the threat model must break some samples"
    for batch_size in (1, 7, 64):
        n = 14 if batch_size == 1 else len(x)  # batch size 1 on a subset (time)
        broken, adv, passes = _flags(early, model, x[:n], y[:n], seeds[:n], batch_size)
        assert torch.equal(broken, reference[:n]), (spec, norm, model_name, batch_size)
        if batch_size == 64:
            assert passes < full_passes, "early exit must save passes on broken samples"
            # inside the ball and the box
            dist = (adv - x).flatten(1)
            size = dist.abs().amax(1) if norm == "linf" else dist.norm(dim=1)
            assert bool((size <= eps * (1 + 1e-5) + 1e-6).all())
            assert adv.min() >= 0 and adv.max() <= 1


def test_most_passes_saved_where_most_samples_break():
    """On a model that (almost) every sample breaks early, APGD-CE spends a small fraction
    of the full run's passes."""
    model, x, y, seeds = _double("cnn")
    full_broken, _, full = _flags(
        make_attack("apgd-ce", eps=0.3, early_exit=False), model, x, y, seeds, 64
    )
    broken, _, early = _flags(make_attack("apgd-ce", eps=0.3), model, x, y, seeds, 64)
    assert torch.equal(broken, full_broken) and full_broken.float().mean() > 0.9
    assert early < 0.2 * full, (early, full)


@pytest.mark.parametrize(
    ("spec", "module"),
    [("apgd-ce(steps=20)", apgd_module), ("fab(steps=10)", fab_module), ("pgd", pgd_module)],
)
def test_exit_checks_every_k_steps_give_the_same_points(spec, module, monkeypatch):
    """On an accelerator the exit check runs every few steps (one host sync each); the
    returned points are each sample's first success, so they do not depend on it."""
    model, x, y, seeds = _double("cnn")
    attack = make_attack(spec, eps=THREATS["linf"])
    _, every_step, passes_1 = _flags(attack, model, x, y, seeds, 64)
    module = {"apgd": apgd_module, "fab": fab_module, "pgd": pgd_module}[
        spec.split("-")[0][:4].split("(")[0]
    ]
    monkeypatch.setattr(module, "exit_interval", lambda device: 4)
    _, every_4th, passes_4 = _flags(attack, model, x, y, seeds, 64)
    torch.testing.assert_close(every_4th, every_step, rtol=0, atol=1e-6)
    assert passes_1 <= passes_4


def test_store_keeps_the_modes_apart_and_the_record_says_which(tmp_path):
    from featrob.store import FeatureStore

    model = reference_model()
    x, y, _ = reference_data(32)
    store = FeatureStore(tmp_path / "s.h5")
    key = {"model": "reference", "data": "digits-32"}
    kwargs = dict(eps=0.06, store=store, store_key=key, check=False)
    early = evaluate(model, x, y, ["apgd-ce(steps=10)"], **kwargs)
    full = evaluate(model, x, y, ["apgd-ce(steps=10, early_exit=false)"], **kwargs)
    assert torch.equal(early.robust, full.robust)
    assert early.steps[0].early_exit is True and full.steps[0].early_exit is False
    assert early.steps[0].from_store == 0 and full.steps[0].from_store == 0  # two entries
    again = evaluate(model, x, y, ["apgd-ce(steps=10)"], **kwargs)
    assert again.steps[0].from_store == early.steps[0].attacked
    # a full run reaches margins at least as low on the broken samples
    broken = ~full.robust & full.clean_correct
    assert bool((full.margin[broken] <= early.margin[broken] + 1e-6).all())


def test_callers_that_use_the_points_turn_early_exit_off():
    model = reference_model()
    attack = make_attack("apgd-ce", eps=0.1)
    assert without_early_exit(attack).params["early_exit"] is False
    assert without_early_exit(make_attack("square", eps=0.1)).name == "square"
    # an attack on a surrogate is judged on another model: it runs the whole budget
    assert Plan(attack, surrogate=model, surrogate_name="s").attack.params["early_exit"] is False
    assert Plan(attack).attack.params["early_exit"] is True

    class Method:
        eps, norm = 0.1, "linf"

    assert _pgd(Method(), 5).params["early_exit"] is False  # adversarial training


def test_feature_extraction_runs_attacks_without_early_exit():
    """Features at attacked inputs are those of each sample's strongest point."""
    ctx = make_context(eps=0.1)
    features = ctx.features("logits", perturbation=ctx.make_attack("apgd-ce(steps=2)"))
    assert features.perturbation["params"]["early_exit"] is False
