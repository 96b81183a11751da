"""The hpm plugin end to end: IKL loss, head observation and head-only training in the core
loop, the MSA protocol and the two metrics on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from featrob_hpm.ikl import IKLTraining, ikl_loss
from featrob_hpm.metric_msa import MixedSurrogateAttack
from featrob_hpm.metric_sensitivity import FeatureSensitivity

from featrob.config import TrainConfig
from featrob.errors import ConfigError
from featrob.models.heads import L2Head
from featrob.plugins import PluginHost
from featrob.testing import check_metric, make_context, tiny_dataset, tiny_model
from featrob.trainer import norm_statistics_frozen, train


def test_ikl_wmse_closed_form_and_gap_invariance():
    clean = torch.tensor([[2.0, 0.0]])
    adv = torch.tensor([[0.5, 0.0]])
    uniform = torch.full((1, 2), 0.5)
    # K = 2, w = (1/2, 1/2): 1/4 * 2 pairs * 1/4 * (1.5)^2 = 0.28125
    only_wmse = ikl_loss(adv, clean, uniform, alpha=0.0, beta=1.0)
    assert only_wmse.item() == pytest.approx(0.25 * 2 * 0.25 * 1.5**2)
    shifted = ikl_loss(adv + 7.0, clean - 3.0, uniform, alpha=0.0, beta=1.0)
    assert shifted.item() == pytest.approx(only_wmse.item())  # only logit gaps matter
    a = adv.clone().requires_grad_(True)
    c = clean.clone().requires_grad_(True)
    ikl_loss(a, c, uniform, alpha=0.0, beta=1.0).backward()
    assert a.grad.abs().sum() > 0 and c.grad.abs().sum() > 0  # gradients reach both sides


def test_ikl_class_weights_start_uniform_then_follow_the_class_means():
    method = IKLTraining(TrainConfig(), eps=0.1, norm="linf")
    y = torch.tensor([0, 1])
    assert torch.allclose(method.class_weights(y, 3), torch.full((2, 3), 1 / 3))
    method._accumulate(torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([0, 0]))
    w = method.class_weights(torch.tensor([0, 1]), 3)
    expected0 = (torch.softmax(torch.tensor([2.0, 0, 0]), 0) + torch.full((3,), 1 / 3)) / 2
    assert torch.allclose(w[0], expected0, atol=1e-6)
    assert torch.allclose(w[1], torch.full((3,), 1 / 3))  # class 1 not seen yet


def test_head_only_training_freezes_the_backbone_and_feeds_ema_prototypes():
    data = tiny_dataset()
    model = tiny_model()
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head = L2Head(model.num_features, data.num_classes, prototypes="ema", momentum=0.5)
    model = model.with_head(head)
    config = TrainConfig(epochs=1, batch_size=128, trainable="head")
    train(
        model,
        data,
        config,
        PluginHost().training_methods,
        eps=0.1,
        norm="linf",
        device=torch.device("cpu"),
    )
    assert bool(head.ema.seen.all())
    after = model.backbone.state_dict()
    assert all(torch.equal(backbone[k], after[k]) for k in backbone)
    assert all(p.requires_grad for p in model.backbone.parameters())  # restored
    feats = model.features(data.test.float_images(torch.arange(50)))
    assert torch.isfinite(head(feats)).all()


def test_norm_statistics_frozen_keeps_running_averages():
    bn = torch.nn.BatchNorm1d(4).train()
    before = (bn.running_mean.clone(), int(bn.num_batches_tracked))
    with norm_statistics_frozen(bn):
        bn(torch.randn(16, 4) + 3.0)
    assert torch.equal(bn.running_mean, before[0])
    assert int(bn.num_batches_tracked) == before[1]
    bn(torch.randn(16, 4) + 3.0)
    assert not torch.equal(bn.running_mean, before[0])


def test_plugin_registers_its_head_training_method_and_metrics():
    host = PluginHost()
    assert host.heads.get("hpm")(8, 3).in_features == 8
    assert host.training_methods.get("ikl") is IKLTraining
    assert {"hpm-sensitivity", "msa"} <= set(host.metrics.by_plugin("hpm"))
    with pytest.raises(ConfigError, match="ablation"):
        MixedSurrogateAttack(ablations=["no-mixer"])
    with pytest.raises(ConfigError, match="finetune"):
        MixedSurrogateAttack(finetune="kl")


def test_sensitivity_metric_condition8_implies_fc_more_sensitive():
    ctx = make_context(n_per_class=8, attacks=["pgd(steps=5)"])
    result = check_metric(FeatureSensitivity, ctx)
    s = result.summary
    assert s["samples"] == 80 and s["condition8_violations"] == 0
    assert 0 <= s["fc_more_sensitive_share"] <= 1
    assert 0 <= s["cdf_model_vs_empirical_ks"] <= 1
    assert 0 < s["fc.mu_pos_deg"] < s["fc.mu_neg_deg"]  # features point to their own class
    assert set(result.figures) == {"angles", "ratio_cdf"}


def test_msa_metric_worst_case_is_at_most_each_attack(tmp_path):
    ctx = make_context(n_per_class=4, store=tmp_path / "store", batch_size=32, eps=0.1)
    options = dict(steps=5, square_queries=20, figure1_scales=[1.0], batch_sizes=[1, 8])
    result = check_metric(MixedSurrogateAttack, ctx, **options)
    s = result.summary
    assert s["fc_adopted"] is True and s["head_from_cache"] is False
    per_attack = [
        v for k, v in s.items() if k.startswith("eps0.1.hpm.") and ("@" in k or "+bpda" in k)
    ]
    assert len(per_attack) == 6
    assert all(s["eps0.1.hpm.msa"] <= v for v in [*per_attack, s["eps0.1.hpm.square"]])
    assert s["eps0.1.fc.robust"] <= min(s["eps0.1.fc.apgd-ce"], s["eps0.1.fc.square"])
    assert {r["batch_size"] for r in result.tables["batch_sizes"]} == {1, 8, 32}
    assert all(r["changed"] == 0 for r in result.tables["batch_sizes"] if r["batch_size"] == 32)
    again = MixedSurrogateAttack(**options).compute(ctx)  # head cached, attacks from the store
    assert again.summary["head_from_cache"] is True
    assert again.summary["eps0.1.hpm.msa"] == s["eps0.1.hpm.msa"]


# ---------------------------------------------------------------- real data (slow)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "mnist_subset.npz").exists(), reason="no ../shared/data")
def test_mnist_pgd_cnn_with_an_hpm_head_under_the_msa_protocol(tmp_path):
    """Issue check, on a smaller budget than examples/hpm_mnist.toml: PGD-trained small CNN
    on MNIST, HPM head IKL-fine-tuned on the frozen backbone; at two eps the MSA accuracy is
    at most the naive one, clean accuracy stays high, and condition (8) is never violated."""
    from featrob.runner import run

    results = run(
        {
            "dataset": f"npz:{SHARED / 'mnist_subset.npz'}",
            "model": "small-cnn",
            "n_per_class": 20,
            "eps": 0.1,
            "attacks": ["apgd-ce(steps=20)"],
            "plugins": ["hpm"],
            "train": {"method": "pgd", "epochs": 3},
            "metrics": {
                "msa": {
                    "finetune": "ikl",
                    "eps_scales": [1.0, 2.0],
                    "steps": 20,
                    "square_queries": 300,
                    "figure1_scales": [1.0, 2.0],
                }
            },
            "quiet": True,
            "out": str(tmp_path / "out"),
        }
    )
    for name in ("msa", "hpm-sensitivity"):
        assert results.metrics[name].error is None, results.metrics[name].error
    s = results.metrics["msa"].summary
    for eps in ("0.1", "0.2"):
        assert s[f"eps{eps}.hpm.msa_le_naive"] is True
        assert s[f"eps{eps}.hpm.clean"] > 0.9 and s[f"eps{eps}.fc.clean"] > 0.9
    assert results.metrics["hpm-sensitivity"].summary["condition8_violations"] == 0


def test_cli_fine_tunes_an_hpm_head_from_a_checkpoint(tmp_path):
    """The paper's plug-in use from the command line: train an FC model, then `featrob
    train --init` it with an HPM head, IKL, backbone frozen; the HPM's FC starts from the
    old head, the backbone stays bit-identical, the card's PGD goes through the STE."""
    from typer.testing import CliRunner

    from featrob.cli import create_app

    app = create_app(lambda: PluginHost())
    fc, hpm = tmp_path / "fc.pt", tmp_path / "hpm.pt"
    small = ["--quiet", "--set", "train.n_per_class=20"]
    result = CliRunner().invoke(app, ["train", "--epochs", "2", "--out", str(fc), *small])
    assert result.exit_code == 0, result.output
    args = ["train", "--init", str(fc), "--head", "hpm", "--method", "ikl", "--epochs", "1"]
    sets = ["--set", "train.trainable=head", "--set", "train.attack_steps=2"]
    result = CliRunner().invoke(app, [*args, *sets, "--out", str(hpm), *small])
    assert result.exit_code == 0, result.output
    card = json.loads(hpm.with_suffix(".json").read_text())
    assert card["init"] == {"from": str(fc), "head": "adopted", "method": "standard"}
    assert card["pgd"]["gradient"] == "bpda" and card["method"] == "ikl"
    before = torch.load(fc, weights_only=True)["state_dict"]
    after = torch.load(hpm, weights_only=True)["state_dict"]
    assert all(torch.equal(v, after[k]) for k, v in before.items() if k.startswith("backbone."))
    assert not torch.equal(before["head.weight"], after["head.fc.weight"])  # it trained
    assert "head.mixer.weight" in after
    bad = CliRunner().invoke(app, [*args, "--init", str(tmp_path / "nope.pt"), "--out", str(hpm)])
    assert bad.exit_code == 2 and "not found" in bad.stderr
