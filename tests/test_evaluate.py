"""The AutoAttack-style protocol: order, per-sample worst case, store resume, masking flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from featrob.attacks import FGSM, PGD
from featrob.attacks.apgd import APGD
from featrob.attacks.base import Attack
from featrob.attacks.protocol import CLEAN, ROBUST, Plan, evaluate, expand_presets
from featrob.attacks.surrogate import Ensemble, InputQuantization
from featrob.errors import ConfigError, ModelError, UnknownNameError
from featrob.plugins import PluginHost
from featrob.store import FeatureStore

from .attack_reference import reference_data, reference_model


@pytest.fixture(scope="module")
def setup():
    model = reference_model()
    x, y, _ = reference_data(120)
    return model, x, y


def test_order_and_worst_case(setup):
    model, x, y = setup
    ev = evaluate(model, x, y, ["fgsm", "apgd-ce(steps=20)"], eps=0.1)
    fgsm, apgd = ev.steps
    assert fgsm.attacked == int(ev.clean_correct.sum())
    assert apgd.attacked == fgsm.attacked - fgsm.broken  # only the still-robust samples
    assert ev.robust_accuracy == pytest.approx(apgd.robust_after)
    assert not (ev.robust & ~ev.clean_correct).any()
    names = ev.broken_by_names()
    assert set(names) <= {"clean", "robust", "fgsm", "apgd-ce"}
    broken = ev.broken_by >= 0
    assert (ev.margin[broken] < 0).all() and (ev.margin[ev.robust] >= 0).all()
    assert (ev.norms <= 0.1 + 1e-6).all()
    assert (ev.broken_by[~ev.clean_correct] == CLEAN).all() and (
        ev.broken_by[ev.robust] == ROBUST
    ).all()
    # the worst-case points really are what the record says
    with torch.no_grad():
        margin = model(ev.x_adv).gather(1, y[:, None]).squeeze(1) - model(ev.x_adv).scatter(
            1, y[:, None], float("-inf")
        ).amax(1)
    torch.testing.assert_close(
        margin[ev.clean_correct], ev.margin[ev.clean_correct], atol=1e-4, rtol=1e-4
    )


def test_batch_size_invariance(setup):
    model, x, y = setup
    specs = ["apgd-ce(steps=10)", "square(n_queries=100)"]
    a = evaluate(model, x, y, specs, eps=0.1, batch_size=120)
    b = evaluate(model, x, y, specs, eps=0.1, batch_size=17)
    assert torch.equal(a.robust, b.robust) and torch.equal(a.broken_by, b.broken_by)
    torch.testing.assert_close(a.margin, b.margin, atol=1e-5, rtol=1e-5)


def test_store_resume_and_union(setup, tmp_path: Path):
    model, x, y = setup
    store = FeatureStore(tmp_path)
    key = {"model": model.fingerprint(), "data": "digits-test-120"}
    first = evaluate(model, x, y, ["fgsm"], eps=0.1, store=store, store_key=key)
    assert first.steps[0].from_store == 0

    class Dies(APGD):
        calls = 0

        def perturb(self, *args, **kwargs):
            Dies.calls += 1
            if Dies.calls == 2:
                raise RuntimeError("killed in batch 2")
            return super().perturb(*args, **kwargs)

    dying = Dies(eps=0.1, steps=5)
    with pytest.raises(RuntimeError, match="killed"):
        evaluate(
            model, x, y, ["fgsm", Plan(dying)], eps=0.1, store=store, store_key=key, batch_size=40
        )
    Dies.calls = -100  # no more failures
    resumed = evaluate(
        model, x, y, ["fgsm", Plan(dying)], eps=0.1, store=store, store_key=key, batch_size=40
    )
    fgsm_step, apgd_step = resumed.steps
    assert fgsm_step.from_store == fgsm_step.attacked  # reused, not recomputed
    assert 0 < apgd_step.from_store < apgd_step.attacked  # the finished batch came back
    fresh = evaluate(model, x, y, ["fgsm", Plan(APGD(eps=0.1, steps=5))], eps=0.1, batch_size=120)
    assert torch.equal(resumed.robust, fresh.robust)


def test_points_outside_the_ball_are_not_counted(setup):
    model, x, y = setup

    class Cheater(Attack):
        name = "cheater"

        def perturb(self, forward, x, y, **kwargs):
            return (x + 3 * self.eps).clamp(0, 1)  # outside the Linf ball

    ev = evaluate(model, x, y, [Cheater(eps=0.05)])
    assert ev.robust_accuracy == ev.clean_accuracy
    assert any("outside the eps ball" in w for w in ev.warnings)


def test_surrogate_examples_are_judged_on_the_target(setup):
    model, x, y = setup
    other = reference_model()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    plan = Plan(APGD(eps=0.1, steps=20), surrogate=other, surrogate_name="noisy-copy")
    ev = evaluate(model, x, y, [plan])
    assert ev.labels == ["apgd-ce@noisy-copy"]
    with torch.no_grad():
        fooled = model(ev.x_adv).argmax(1) != y
    assert torch.equal(fooled & ev.clean_correct, ~ev.robust & ev.clean_correct)
    ensemble = Ensemble([model, other], combine="log_softmax")
    ev2 = evaluate(
        model, x, y, [Plan(APGD(eps=0.1, steps=10), surrogate=ensemble, surrogate_name="ens")]
    )
    assert ev2.robust_accuracy <= ev2.clean_accuracy


def test_quantised_model_masks_gradients_and_bpda_restores_the_attack(setup):
    model, x, y = setup
    quantised = nn.Sequential(InputQuantization(4), model).eval()
    plain = evaluate(quantised, x, y, ["apgd-ce(steps=20)", "square(n_queries=300)"], eps=0.1)
    assert any("zero input gradients" in w for w in plain.warnings)
    assert plain.flags["zero_gradient"][plain.clean_correct].all()
    apgd_plain, square = plain.steps
    assert apgd_plain.broken == 0  # plain APGD is fooled
    assert square.broken > 0 and any("Square attack" in w for w in plain.warnings)
    bpda = evaluate(quantised, x, y, [Plan(APGD(eps=0.1, steps=20), bpda=True)])
    assert bpda.robust_accuracy < plain.steps[0].robust_after - 0.05
    assert not any("zero input gradients" in w for w in bpda.warnings)


def test_nan_gradients_are_flagged_and_never_produce_nan_inputs(setup):
    model, x, y = setup

    class NanForSome(nn.Module):
        def forward(self, inp):
            out = model(inp)
            bad = (torch.arange(len(inp), device=inp.device) % 3 == 0)[:, None]
            # sqrt(0) has an infinite derivative: NaN gradients for every third sample
            poison = torch.sqrt(
                torch.where(bad, inp.flatten(1)[:, :1] * 0, torch.ones_like(out[:, :1]))
            )
            return out * poison.detach() + (poison - poison.detach()) * 0

    ev = evaluate(NanForSome(), x, y, ["apgd-ce(steps=5)"], eps=0.1)
    assert ev.flags["nan_gradient"].any()
    assert any("NaN input gradients" in w for w in ev.warnings)
    assert torch.isfinite(ev.x_adv).all()


def test_probabilities_randomness_and_tuples(setup):
    model, x, y = setup
    probs = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    ev = evaluate(probs, x[:20], y[:20], ["fgsm"], eps=0.05)
    assert any("probabilities" in w for w in ev.warnings)
    noisy = nn.Sequential(nn.Dropout(0.3), model).train()
    ev = evaluate(noisy, x[:20], y[:20], ["fgsm"], eps=0.05)
    assert any("randomised" in w for w in ev.warnings)

    class Pair(nn.Module):
        def forward(self, inp):
            return model(inp), None

    with pytest.raises(ModelError, match="returns a tuple"):
        evaluate(Pair(), x[:4], y[:4], ["fgsm"], eps=0.05)


def test_attacks_needing_more_classes_are_skipped():
    torch.manual_seed(0)
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x = torch.rand(10, 1, 8, 8)
    y = three(x).argmax(1).detach()
    ev = evaluate(three, x, y, ["apgd-ce(steps=3)", "apgd-t(steps=3)"], eps=0.05)
    assert [s.label for s in ev.steps] == ["apgd-ce"]
    assert any("apgd-t skipped" in w for w in ev.warnings)


def test_bad_input_is_one_clear_error(setup):
    model, x, y = setup
    registry = PluginHost().attacks
    with pytest.raises(UnknownNameError, match="did you mean 'apgd-ce'"):
        evaluate(model, x, y, ["apgd-cee"], eps=0.1, registry=registry)
    for eps, message in ((-0.1, ">= 0"), (float("nan"), "finite"), (1.5, "Linf eps")):
        with pytest.raises(ConfigError, match=message):
            evaluate(model, x, y, ["fgsm"], eps=eps, registry=registry)
    with pytest.raises(ConfigError, match="unknown norm"):
        evaluate(model, x, y, ["fgsm"], eps=0.1, norm="l3", registry=registry)
    with pytest.raises(ConfigError, match="same eps and norm"):
        evaluate(model, x, y, [FGSM(eps=0.1), PGD(eps=0.2)])


def test_standard_preset():
    assert expand_presets(["standard"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert expand_presets(["pgd", "standard"])[0] == "pgd"
