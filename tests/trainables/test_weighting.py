"""SoftAdapt against its published vectors; uncertainty weighting and gradient similarity by hand."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.config import Config
from trainables.losses import BCELoss
from trainables.model import DualHeadModel
from trainables.trainer import TrainStep, build_weighting
from trainables.weighting import (
    GradientSimilarity,
    SoftAdaptWeighter,
    StaticWeighting,
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
    torch.testing.assert_close(softadapt_weights([flat, falling], beta=0.0),
                               torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_softadapt_weighter_uses_block_means_every_n_steps():
    weighter = SoftAdaptWeighter(n_losses=2, beta=0.5, variant="original", every=3, window=4)
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
    weighting = UncertaintyWeighting(n_losses=2, clamp=6.0)
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
    weighting = UncertaintyWeighting(n_losses=1, clamp=2.0)
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
    weighting = build_weighting(cfg, model)
    assert isinstance(weighting, GradientSimilarity)
    step = TrainStep(model=model, optimizer=opt, main_loss=BCELoss(), aux_loss=BCELoss(), weighting=weighting)
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


# ---------------------------------------------------------------- one interface for every strategy
def _losses():
    l_main = torch.tensor(0.7, requires_grad=True)
    l_aux = torch.tensor(1.9, requires_grad=True)
    return l_main, l_aux, torch.tensor(0.25)


def test_static_combines_main_plus_weighted_aux_plus_extra():
    l_main, l_aux, extra = _losses()
    w = StaticWeighting(aux_weight=0.4)
    assert w.combine(l_main, l_aux, extra).item() == pytest.approx(0.7 + 0.4 * 1.9 + 0.25)
    assert w.combine(l_main, l_aux, None).item() == pytest.approx(0.7 + 0.4 * 1.9)
    total = w.backward(l_main, l_aux, extra)
    assert not total.requires_grad and l_aux.grad.item() == pytest.approx(0.4) and l_main.grad.item() == 1.0
    assert w.reported_weights() == {"weights/main": 1.0, "weights/aux": 0.4}


def test_softadapt_and_uncertainty_weigh_the_two_heads_and_add_extra_unweighted():
    l_main, l_aux, extra = _losses()
    sa = SoftAdaptWeighter(n_losses=2)
    sa.weights.copy_(torch.tensor([1.5, 0.5]))
    assert sa.combine(l_main, l_aux, extra).item() == pytest.approx(1.5 * 0.7 + 0.5 * 1.9 + 0.25)
    assert sa.reported_weights() == {"weights/main": 1.5, "weights/aux": 0.5}
    un = UncertaintyWeighting(n_losses=2)
    with torch.no_grad():
        un.log_vars.copy_(torch.tensor([0.5, -1.0]))
    expected = math.exp(-0.5) * 0.7 + 0.5 + math.exp(1.0) * 1.9 - 1.0 + 0.25
    assert un.combine(l_main, l_aux, extra).item() == pytest.approx(expected, rel=1e-6)
    weights = un.reported_weights()
    assert weights == pytest.approx({"weights/main": math.exp(-0.5), "weights/aux": math.exp(1.0)})


def test_softadapt_records_heads_after_each_step_and_round_trips_its_state():
    sa = SoftAdaptWeighter(n_losses=2, every=2, window=3)
    for i in range(5):
        sa.after_step(torch.tensor([1.0 / (i + 1), 2.0]))
    other = SoftAdaptWeighter(n_losses=2, every=2, window=3)
    other.load_state_dict(sa.state_dict())
    assert (other.steps_in_block, other.filled) == (sa.steps_in_block, sa.filled) == (1, 2)
    for a, b in zip(sa.state_dict().values(), other.state_dict().values()):
        assert a == b if isinstance(a, dict) else torch.equal(a, b)


def _gradsim_of(model, every):
    return GradientSimilarity(shared=list(model.backbone.parameters()),
                              main_head=list(model.main_head.parameters()),
                              aux_head=list(model.aux_head.parameters()), every=every)


def test_gradsim_counts_steps_in_its_state_and_reports_its_weight():
    model = DualHeadModel(in_features=3, n_labels=1, hidden=(4,), dropout=0.0)
    gs = _gradsim_of(model, 3)
    assert list(gs.parameters()) == []  # the model's parameters stay the model's
    gs.after_step(torch.zeros(2))
    gs.gs_scale.fill_(0.25)
    other = _gradsim_of(model, 3)
    other.load_state_dict(gs.state_dict())
    assert other.steps == 1 and other.reported_weights()["weights/gradsim"] == 0.25


STRATEGIES = [("static", StaticWeighting), ("softadapt", SoftAdaptWeighter),
              ("uncertainty", UncertaintyWeighting), ("gradsim", GradientSimilarity)]


@pytest.mark.parametrize("strategy,kind", STRATEGIES)
def test_build_weighting_picks_the_strategy_and_none_for_a_single_head(strategy, kind):
    model = DualHeadModel(in_features=3, n_labels=1, hidden=(4,))
    assert type(build_weighting(Config().with_overrides({"weighting.strategy": strategy}), model)) is kind
    base = DualHeadModel(in_features=3, n_labels=1, hidden=(4,), aux_head=False)
    assert build_weighting(Config(), base) is None
    frozen = DualHeadModel(in_features=3, n_labels=1, hidden=(4,))
    frozen.backbone.requires_grad_(False)  # nothing shared to compare: gradsim is static
    gradsim = Config().with_overrides({"weighting.strategy": "gradsim"})
    assert type(build_weighting(gradsim, frozen)) is StaticWeighting
