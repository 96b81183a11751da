"""The adapter's own checks: featrob's attack contract, agreement with featrob's PGD, and
discovery through the entry point (``pip install ./contrib/featrob-torchattacks`` first)."""

from __future__ import annotations

import pytest
import torch
from featrob_torchattacks import adapters

from featrob import PluginHost, make_attack, sample_seeds
from featrob.testing import check_attack, tiny_dataset, tiny_model

BY_NAME = {cls.name: cls for cls in adapters()}


def test_every_torchattacks_attack_is_registered():
    assert {"torchattacks:PGD", "torchattacks:CW", "torchattacks:FGSM"} <= set(BY_NAME)
    assert BY_NAME["torchattacks:CW"].norms == ("l2",)
    assert BY_NAME["torchattacks:APGD"].norms == ("linf", "l2")
    assert BY_NAME["torchattacks:PGD"].defaults["steps"] == 10


@pytest.mark.parametrize("name", ["torchattacks:PGD", "torchattacks:FGSM", "torchattacks:CW"])
def test_adapters_keep_featrobs_attack_contract(name):
    cls = BY_NAME[name]
    params = {"steps": 10} if "steps" in cls.defaults else {}
    check_attack(cls, eps=0.1 if "linf" in cls.norms else 1.0, **params)


def test_torchattacks_pgd_agrees_with_featrobs_pgd():
    model, data = tiny_model(), tiny_dataset()
    x, y = data.test.float_images(), data.test.labels
    seeds = sample_seeds(0, data.test.indices)
    theirs = BY_NAME["torchattacks:PGD"](eps=0.1, steps=20, alpha=0.1 / 8).perturb(model, x, y)
    pgd = make_attack("pgd(steps=20)", eps=0.1, rel_step_size=1 / 8)
    ours = pgd.perturb(model, x, y, sample_seeds=seeds)
    with torch.no_grad():
        acc = [float((model(a).argmax(1) == y).float().mean()) for a in (theirs, ours)]
    assert abs(acc[0] - acc[1]) <= 0.05


def test_installed_plugin_is_discovered_through_its_entry_point():
    host = PluginHost()
    assert host.plugins["torchattacks"].distribution == "featrob-torchattacks"
    assert "torchattacks:CW" in host.attacks
