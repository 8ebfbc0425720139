"""SoftAdapt against its published vectors; uncertainty weighting and gradient similarity by hand."""

from __future__ import annotations

import pytest
import torch

from trainables.config import Config
from trainables.losses import BCELoss
from trainables.model import DualHeadModel
from trainables.trainer import TrainStep
from trainables.weighting import (
    SoftAdaptWeighter,
    UncertaintyWeighting,
    combine_gradients,
    finite_difference_coefficients,
    softadapt_weights,
)

# METHODS.md: beta = 0.1, three components, published by the SoftAdapt authors.
HISTORIES = [[1, 2, 3, 4, 5], [150, 100, 50, 10, 0.1], [1500, 1000, 500, 100, 1]]
ORIGINAL = [9.9343e-01, 6.5666e-03, 3.8908e-22]
LOSS_WEIGHTED = [8.7978e-01, 1.2022e-01, 7.1234e-20]


@pytest.mark.parametrize("order,expected", [
    (1, [-1, 1]),
    (3, [-11 / 6, 3, -3 / 2, 1 / 3]),
    (4, [-25 / 12, 4, -3, 4 / 3, -1 / 4]),
])
def test_finite_difference_coefficients(order, expected):
    torch.testing.assert_close(finite_difference_coefficients(order), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("variant,expected", [("original", ORIGINAL), ("loss_weighted", LOSS_WEIGHTED)])
def test_softadapt_reproduces_published_vectors(variant, expected):
    w = softadapt_weights(HISTORIES, beta=0.1, variant=variant)
    for got, want in zip(w.tolist(), expected):
        assert got == pytest.approx(want, rel=2e-4, abs=1e-6)
    assert w[2].item() == pytest.approx(expected[2], rel=1e-3)  # the tiny one, relatively


def test_softadapt_favours_the_slowest_loss_and_beta_zero_is_uniform():
    flat = [5, 5, 5, 5]
    falling = [8, 6, 4, 2]
    w = softadapt_weights([flat, falling], beta=1.0, variant="normalized")
    assert w[0] > w[1] and w.sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(softadapt_weights([flat, falling], beta=0.0), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_softadapt_weighter_uses_block_means_every_n_steps():
    weighter = SoftAdaptWeighter(2, beta=0.5, variant="original", every=3, window=4)
    steps = [(10 - 0.5 * i, 4.0 + 0.1 * (i % 2)) for i in range(12)]
    for i, (a, b) in enumerate(steps):
        w = weighter.update(torch.tensor([a, b]))
        if i < 5:  # fewer than two block means: equal weights
            assert torch.equal(w, torch.ones(2))
    blocks = [[sum(s[k] for s in steps[j:j + 3]) / 3 for j in range(0, 12, 3)] for k in range(2)]
    expected = softadapt_weights(blocks, beta=0.5, variant="original") * 2
    torch.testing.assert_close(w, expected.float())
    assert w[1] > w[0]  # the flat loss gets more weight than the falling one


def test_uncertainty_weights_settle_near_inverse_loss_instead_of_collapsing():
    losses = torch.tensor([0.5, 4.0])
    weighting = UncertaintyWeighting(2, clamp=6.0)
    opt = torch.optim.Adam(weighting.parameters(), lr=0.05)
    for _ in range(2000):
        opt.zero_grad()
        weighting(losses).backward()
        opt.step()
    torch.testing.assert_close(weighting.weights(), 1 / losses, rtol=0.02, atol=0)


def test_learnable_sigmoid_weights_do_collapse_which_is_why_they_are_not_used():
    w = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        (torch.sigmoid(w) * torch.tensor([0.5, 4.0])).sum().backward()
        opt.step()
    assert torch.sigmoid(w).max().item() < 0.01  # from 0.5, and still falling


def test_uncertainty_log_variance_is_clamped():
    weighting = UncertaintyWeighting(1, clamp=2.0)
    with torch.no_grad():
        weighting.log_vars.fill_(-50.0)
    assert weighting.weights().item() == pytest.approx(torch.exp(torch.tensor(2.0)).item())


@pytest.mark.parametrize("mode", ["weighted", "gated"])
def test_gradient_similarity_keeps_aligned_and_drops_conflicting(mode):
    g_main = [torch.tensor([1.0, 2.0]), torch.tensor([[0.5]])]
    aligned = [2 * g for g in g_main]
    conflicting = [-g for g in g_main]
    combined, cos, w = combine_gradients(g_main, aligned, mode=mode)
    assert cos.item() == pytest.approx(1.0) and w.item() == pytest.approx(1.0)
    for c, a, m in zip(combined, aligned, g_main):
        torch.testing.assert_close(c, m + a)
    combined, cos, w = combine_gradients(g_main, conflicting, mode=mode)
    assert cos.item() == pytest.approx(-1.0) and w.item() == 0.0
    for c, m in zip(combined, g_main):
        torch.testing.assert_close(c, m)


def test_gradient_similarity_partial_alignment_weighted_vs_gated():
    g_main = [torch.tensor([1.0, 0.0])]
    g_aux = [torch.tensor([0.6, 0.8])]  # cos = 0.6
    weighted, cos, _ = combine_gradients(g_main, g_aux, mode="weighted")
    gated, _, _ = combine_gradients(g_main, g_aux, mode="gated")
    assert cos.item() == pytest.approx(0.6)
    torch.testing.assert_close(weighted[0], torch.tensor([1.36, 0.48]))
    torch.testing.assert_close(gated[0], torch.tensor([1.6, 0.8]))


def _gradsim_setup(every):
    torch.manual_seed(0)
    cfg = Config().with_overrides({"weighting.strategy": "gradsim", "weighting.gradsim_every": every,
                                   "teacher.enabled": False, "distill.weight": 0.0, "model.dropout": 0.0,
                                   "aux_loss.type": "bce"})
    model = DualHeadModel(in_features=6, n_labels=2, hidden=(8,), dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the gradients stay inspectable
    step = TrainStep(cfg, model, None, BCELoss(), BCELoss(), None, opt, torch.device("cpu"))
    return model, step


def _reference_grads(model, x, y):
    """g_main and g_aux on the backbone by two separate, plain backward passes."""
    out = []
    for head in (model.main_head, model.aux_head):
        model.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(head(model.backbone(x)), y).backward()
        out.append([p.grad.clone() for p in model.backbone.parameters()])
    return out


def test_trainer_gradsim_step_sets_backbone_gradient_to_main_plus_weighted_aux():
    model, step = _gradsim_setup(every=2)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 6, generator=g), (torch.rand(32, 2, generator=g) < 0.3).float()
    g_main, g_aux = _reference_grads(model, x, y)
    a = torch.cat([t.reshape(-1) for t in g_main])
    b = torch.cat([t.reshape(-1) for t in g_aux])
    w = max(0.0, float(a @ b / (a.norm() * b.norm())))
    step(x, y)  # step 0 computes the cosine
    for p, gm, ga in zip(model.backbone.parameters(), g_main, g_aux):
        torch.testing.assert_close(p.grad, gm + w * ga)
    x2, y2 = torch.randn(32, 6, generator=g), (torch.rand(32, 2, generator=g) < 0.3).float()
    g_main2, g_aux2 = _reference_grads(model, x2, y2)
    step(x2, y2)  # step 1 reuses the cached weight through GradScale, in one backward pass
    for p, gm, ga in zip(model.backbone.parameters(), g_main2, g_aux2):
        torch.testing.assert_close(p.grad, gm + w * ga)
    # the aux head always gets its full gradient
    model.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(model.aux_head(model.backbone(x2)), y2).backward()
    ref = model.aux_head.weight.grad.clone()
    step(x2, y2)
    torch.testing.assert_close(model.aux_head.weight.grad, ref)
