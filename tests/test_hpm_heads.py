"""Paper 002's heads: the STE assignment, batch and EMA prototypes, the mixer, the L2 head."""

from __future__ import annotations

import pytest
import torch
from featrob_hpm.heads import (
    HPMHead,
    L2Head,
    batch_prototypes,
    default_momentum,
    neg_l2_logits,
    ste_assignment,
)


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
    assert head.global_prototypes.momentum == default_momentum(4) == 0.98
    assert default_momentum(100) == 0.995
    z1 = torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0]])
    head.observe(z1, torch.tensor([0, 0, 1]))
    value = head.global_prototypes.value
    assert value[0].tolist() == [2.0, 0, 0] and value[1].tolist() == [0, 2.0, 0]
    assert value[2:].abs().sum() == 0
    head.observe(torch.tensor([[0.0, 0, 1.0]]), torch.tensor([0]))
    assert value[0].tolist() == pytest.approx([0.98 * 2.0, 0, 0.02])
    assert value[1].tolist() == [0, 2.0, 0]  # absent class unchanged


def test_hpm_shapes_gradients_and_batch_dependence():
    head = HPMHead(6, 5)
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
    head = HPMHead(6, 5, **options)
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
    with pytest.raises(ValueError, match="prototypes must be"):
        L2Head(3, 2, prototypes="fixed")
