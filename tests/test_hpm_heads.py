"""Paper 002's heads: the STE assignment, batch and EMA prototypes, the mixer, the L2 head
(core, with EMA prototypes), surrogates and BPDA through the hard assignment."""

from __future__ import annotations

import pytest
import torch
from featrob_hpm.heads import (
    FCOracle,
    HPMHead,
    SoftHybrid,
    batch_prototypes,
    hpm,
    ste_assignment,
)

from featrob.attacks.surrogate import BPDA
from featrob.errors import ConfigError
from featrob.models.heads import L2Head, default_prototype_momentum, l2, neg_l2_logits


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_ste_forward_is_the_hard_assignment_and_its_gradient_the_soft_one():
    logits = torch.randn(32, 7, generator=_gen(0), dtype=torch.float64, requires_grad=True)
    weights = torch.randn(32, 7, generator=_gen(1), dtype=torch.float64)
    ste = ste_assignment(logits)
    hard = torch.nn.functional.one_hot(logits.argmax(1), 7).double()
    assert torch.equal(ste.detach(), hard)
    (g_ste,) = torch.autograd.grad((ste * weights).sum(), logits)
    (g_soft,) = torch.autograd.grad((logits.softmax(1) * weights).sum(), logits)
    assert torch.allclose(g_ste, g_soft, atol=1e-12)


def test_batch_prototypes_are_the_class_means_of_the_hard_assignment():
    z = torch.randn(50, 4, generator=_gen(2), dtype=torch.float64)
    pred = torch.arange(50) % 3
    proto = batch_prototypes(z, torch.nn.functional.one_hot(pred, 5).double(), eps=0.0 + 1e-12)
    for k in range(3):
        assert torch.allclose(proto[k], z[pred == k].mean(0))
    assert proto[3:].abs().max() < 1e-6  # classes nobody was assigned to


def test_ema_update_initialises_then_averages_only_present_classes():
    head = HPMHead(3, 4)
    assert head.global_prototypes.momentum == default_prototype_momentum(4) == 0.98
    assert default_prototype_momentum(100) == 0.995
    z1 = torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0]])
    head.observe(z1, torch.tensor([0, 0, 1]))
    value = head.global_prototypes.value
    assert value[0].tolist() == [2.0, 0, 0] and value[1].tolist() == [0, 2.0, 0]
    assert value[2:].abs().sum() == 0
    head.observe(torch.tensor([[0.0, 0, 1.0]]), torch.tensor([0]))
    assert value[0].tolist() == pytest.approx([0.98 * 2.0, 0, 0.02])
    assert value[1].tolist() == [0, 2.0, 0]  # absent class unchanged


def test_hpm_shapes_gradients_and_batch_dependence():
    head = HPMHead(6, 5).train()
    head.observe(torch.randn(40, 6, generator=_gen(3)), torch.arange(40) % 5)
    assert tuple(head.mixer.weight.T.shape) == (12, 6)  # W_m in R^{2d x d}
    z = torch.randn(16, 6, generator=_gen(4), requires_grad=True)
    logits = head(z)
    assert logits.shape == (16, 5) and torch.isfinite(logits).all()
    (grad,) = torch.autograd.grad(logits.sum(), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    alone = torch.cat([head(z[i : i + 1]) for i in range(16)])
    assert not torch.allclose(alone, logits)  # C_batch depends on the batch


@pytest.mark.parametrize(
    "options",
    [{"use_global": False}, {"mixer": "mean"}, {"metric": "dot"}, {"assignment": "soft"}],
)
def test_hpm_ablations_run(options):
    head = hpm(6, 5, **options)
    head.observe(torch.randn(40, 6, generator=_gen(5)), torch.arange(40) % 5)
    assert head(torch.randn(8, 6, generator=_gen(6))).shape == (8, 5)


def test_mean_mixer_equals_the_initial_linear_mixer():
    lin, mean = HPMHead(6, 5), HPMHead(6, 5, mixer="mean")
    mean.load_state_dict(lin.state_dict())
    lin.observe(torch.randn(40, 6, generator=_gen(7)), torch.arange(40) % 5)
    mean.load_state_dict(lin.state_dict())
    z = torch.randn(8, 6, generator=_gen(8))
    assert torch.allclose(lin(z), mean(z), atol=1e-6)


def test_l2_head_logits_and_finite_gradient_at_a_prototype():
    head = L2Head(3, 2)
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[0.0, 0, 0], [3.0, 4.0, 0]]))
    z = torch.tensor([[0.0, 0, 0], [3.0, 0, 0]], requires_grad=True)
    logits = head(z)
    assert logits.detach().flatten().tolist() == pytest.approx([0.0, -5.0, -3.0, -4.0], abs=1e-5)
    (grad,) = torch.autograd.grad(logits.sum(), z)
    assert torch.isfinite(grad).all()
    ema = L2Head(3, 2, prototypes="ema")
    ema.observe(torch.tensor([[1.0, 1, 1]]), torch.tensor([1]))
    assert ema.centers()[1].tolist() == [1.0, 1, 1]
    assert torch.allclose(neg_l2_logits(z.detach(), head.centers()), logits.detach())
    with pytest.raises(ConfigError, match="prototypes"):
        l2(3, 2, prototypes="fixed")
    assert l2(3, 2, prototypes="ema", momentum=0.5).ema.momentum == 0.5


def test_eval_assignment_is_hard_with_zero_gradient_and_bpda_restores_the_ste():
    torch.manual_seed(0)
    head = HPMHead(6, 4)
    head.observe(torch.randn(40, 6, generator=_gen(9)), torch.arange(40) % 4)
    model = torch.nn.Sequential(torch.nn.Identity(), head).eval()
    z = torch.randn(12, 6, generator=_gen(10), requires_grad=True)
    weights = torch.randn(12, 4, generator=_gen(11))
    # gradient of the assignment path only: logits depend on z through C_batch's assignment
    (g_eval,) = torch.autograd.grad((model(z) * weights).sum(), z)
    (g_bpda,) = torch.autograd.grad((BPDA(model)(z) * weights).sum(), z)
    head.train()
    (g_ste,) = torch.autograd.grad((head(z) * weights).sum(), z)
    head.eval()
    assert torch.allclose(g_bpda, g_ste, atol=1e-6)  # BPDA = the training STE
    assert not torch.allclose(g_eval, g_ste, atol=1e-4)  # hard arg-max: that path is cut
    assert torch.equal(BPDA(model)(z), model(z))  # same forward values


def test_surrogates_share_the_head_parameters():
    head = HPMHead(6, 4)
    head.observe(torch.randn(40, 6, generator=_gen(12)), torch.arange(40) % 4)
    z = torch.randn(10, 6, generator=_gen(13))
    assert torch.equal(FCOracle(head)(z), head.fc(z))
    soft = SoftHybrid(head)(z)
    soft_head = HPMHead(6, 4, assignment="soft")
    soft_head.load_state_dict(head.state_dict())
    assert torch.allclose(soft, soft_head(z))
    assert not torch.allclose(soft, head(z))
    with pytest.raises(ConfigError, match="mixer"):
        hpm(6, 4, mixer="max")
    with pytest.raises(ConfigError, match="unknown option"):
        hpm(6, 4, scale=2)
