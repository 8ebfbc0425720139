"""Every loss against an independent formula written here, never against the implementation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.losses import (
    AsymmetricLoss,
    BCELoss,
    BinaryDistillationKL,
    ConsistencyLoss,
    FocalLoss,
    asymmetric_loss,
    binary_distillation_kl,
    brier_loss,
    calibration_loss,
    consistency_loss,
    focal_alpha,
    focal_loss,
    mdca_loss,
    smoothed_bce,
)

SHAPES = [(64,), (32, 5)]


def _data(shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    y = (torch.rand(shape, generator=g) < 0.3).double()
    return x, y


def torchvision_sigmoid_focal(x, y, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss, reduction='none', written out."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss


def official_asl(x, y, gamma_neg, gamma_pos, clip, eps=1e-8, detach_focusing=False):
    """Alibaba-MIIL AsymmetricLoss.forward, elementwise (before its final -sum)."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(not detach_focusing):  # its disable_torch_grad_focal_loss
            pt = xs_pos * y + xs_neg * (1 - y)
            one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
            weight = torch.pow(1 - pt, one_sided_gamma)
        loss = loss * weight
    return -loss


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.25, 0.9, 0.0, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_focal_matches_torchvision_formula_elementwise(shape, alpha, gamma):
    x, y = _data(shape)
    got = focal_loss(x, y, alpha=alpha, gamma=gamma, reduction="none").double()
    torch.testing.assert_close(got, torchvision_sigmoid_focal(x, y, alpha, gamma), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_focal_without_alpha_at_gamma_zero_is_bce(shape):
    x, y = _data(shape)
    bce = F.binary_cross_entropy_with_logits(x, y)
    assert torch.equal(focal_loss(x, y, alpha=None, gamma=0.0), bce)
    assert torch.equal(focal_loss(x, y, alpha=-1, gamma=0.0), bce)


def test_focal_alpha_weights_positives():
    x = torch.tensor([2.0, -2.0])  # a positive and a negative with the same p_t
    y = torch.tensor([1.0, 0.0])
    loss = focal_loss(x, y, alpha=0.9, gamma=2.0, reduction="none")
    assert loss[0] / loss[1] == pytest.approx(0.9 / 0.1, rel=1e-5)


def test_focal_is_finite_for_extreme_logits():
    x = torch.tensor([-200.0, 200.0, -200.0, 200.0], requires_grad=True)
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    loss = focal_loss(x, y, alpha=0.25, gamma=2.0, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # a confidently wrong positive costs alpha * 200 (log p_t = -200, modulating factor ~1)
    assert loss.item() == pytest.approx(0.25 * 200 + 0.75 * 200, rel=1e-5)


def test_per_label_alpha_tensor_and_auto_alpha():
    x, y = _data((16, 3))
    alpha = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    expected = torch.stack([torchvision_sigmoid_focal(x[:, k], y[:, k], float(alpha[k]), 2.0) for k in range(3)], dim=1)
    torch.testing.assert_close(focal_loss(x, y, alpha=alpha, gamma=2.0, reduction="none").double(), expected)
    pos, neg = torch.tensor([10.0, 50.0]), torch.tensor([990.0, 950.0])
    torch.testing.assert_close(focal_alpha("auto", pos, neg), torch.tensor([0.99, 0.95]))
    beta = 0.999
    w_pos, w_neg = (1 - beta) / (1 - beta**10), (1 - beta) / (1 - beta**990)
    assert float(focal_alpha("class_balanced", pos, neg, cb_beta=beta)[0]) == pytest.approx(w_pos / (w_pos + w_neg),
                                                                                          rel=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("clip", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("gamma_neg,gamma_pos", [(0, 0), (1, 0), (4, 0), (4, 1), (2, 2)])
def test_asymmetric_matches_official_formula_elementwise(shape, clip, gamma_neg, gamma_pos):
    x, y = _data(shape)
    got = asymmetric_loss(x, y, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="none").double()
    torch.testing.assert_close(got, official_asl(x, y, gamma_neg, gamma_pos, clip), rtol=1e-5, atol=1e-6)


def test_asymmetric_reductions_and_official_sum():
    x, y = _data((32, 5))
    ref = official_asl(x, y, 4, 1, 0.05)
    s = asymmetric_loss(x, y, gamma_neg=4, gamma_pos=1, clip=0.05, reduction="sum")
    m = asymmetric_loss(x, y, gamma_neg=4, gamma_pos=1, clip=0.05, reduction="mean")
    assert s.item() == pytest.approx(ref.sum().item(), rel=1e-5)
    assert m.item() == pytest.approx(ref.sum().item() / ref.numel(), rel=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_asymmetric_without_focusing_or_clip_is_bce(shape):
    x, y = _data(shape, scale=2.0)  # logs far from the 1e-8 clamp
    got = asymmetric_loss(x, y, gamma_neg=0, gamma_pos=0, clip=0, reduction="none")
    torch.testing.assert_close(got, F.binary_cross_entropy_with_logits(x, y, reduction="none"), rtol=1e-5, atol=1e-6)


def test_asymmetric_gradient_is_finite_for_fractional_gamma_with_clip():
    x = torch.linspace(-12, 12, 101, requires_grad=True)
    y = torch.zeros(101)
    y[::3] = 1
    asymmetric_loss(x, y, gamma_neg=0.5, gamma_pos=0.5, clip=0.05).backward()
    assert torch.isfinite(x.grad).all()


def test_asymmetric_computes_in_float32_for_half_inputs():
    x = torch.tensor([-12.0, 0.3, 9.0]).half()
    y = torch.tensor([0.0, 1.0, 1.0]).half()
    out = asymmetric_loss(x, y, gamma_neg=4, gamma_pos=0, clip=0.05, reduction="none")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, official_asl(x.float(), y.float(), 4, 0, 0.05))


def test_asymmetric_detached_focusing_same_value_other_gradient():
    x1 = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y = torch.tensor([1.0, 0.0, 0.0])
    a = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05)(x1, y)
    b = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05, detach_focusing=True)(x2, y)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item())
    assert not torch.allclose(x1.grad, x2.grad)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_distillation_is_binary_kl_times_t_squared(temperature):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(8, 4, generator=g, dtype=torch.float64) * 3
    t = torch.randn(8, 4, generator=g, dtype=torch.float64) * 3
    q = torch.sigmoid(t / temperature)
    p = torch.sigmoid(s / temperature)
    kl = q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))
    expected = kl.sum(dim=1).mean() * temperature**2
    got = binary_distillation_kl(s, t, temperature=temperature)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    none = binary_distillation_kl(s, t, temperature=temperature, reduction="none")
    torch.testing.assert_close(none.double(), kl * temperature**2, rtol=1e-4, atol=1e-6)


def test_distillation_is_zero_when_logits_agree_and_teacher_gets_no_gradient():
    s = torch.randn(10, 3, requires_grad=True)
    t = s.detach().clone().requires_grad_(True)
    loss = binary_distillation_kl(s, t, temperature=2.0)
    assert abs(loss.item()) < 1e-6
    (binary_distillation_kl(s, t + 1, temperature=2.0)).backward()
    assert t.grad is None and s.grad is not None


def test_smoothed_bce_mdca_brier_calibration():
    x, y = _data((40, 3))
    s = 0.2
    target = y * (1 - s) + s / 2
    p = torch.sigmoid(x)
    ref_smooth = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert smoothed_bce(x, y, smoothing=s).item() == pytest.approx(ref_smooth.item(), rel=1e-5)
    ref_mdca = sum(abs(p[:, k].mean() - y[:, k].mean()) for k in range(3)) / 3
    assert mdca_loss(x, y).item() == pytest.approx(float(ref_mdca), rel=1e-5)
    ref_brier = ((p - y) ** 2).mean()
    assert brier_loss(x, y).item() == pytest.approx(ref_brier.item(), rel=1e-5)
    bce = F.binary_cross_entropy_with_logits(x, y)
    assert calibration_loss(x, y, kind="mdca", beta=2.0).item() == pytest.approx((bce + 2 * ref_mdca).item(), rel=1e-5)
    assert calibration_loss(x, y, kind="brier", beta=0.5).item() == pytest.approx((bce + 0.5 * ref_brier).item(),
                                                                                  rel=1e-5)


def test_consistency_mask_uses_binary_confidence_max_p_1_minus_p():
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    # main/aux probabilities: confident negative (0.03/0.02), confident positive, unsure, one side unsure
    main = torch.tensor([logit(0.03), logit(0.97), logit(0.5), logit(0.96)])
    aux = torch.tensor([logit(0.02), logit(0.95), logit(0.96), logit(0.6)], requires_grad=True)
    loss, rate = consistency_loss(main, aux, threshold=0.9)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])  # a confident NEGATIVE counts: c = max(p, 1 - p)
    p_main = torch.sigmoid(main)
    bce = F.binary_cross_entropy_with_logits(aux.detach(), p_main, reduction="none")
    assert rate.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx((mask * bce).sum().item() / 4, rel=1e-5)  # mean over ALL samples
    loss.backward()
    assert aux.grad[2] == 0 and aux.grad[3] == 0 and aux.grad[0] != 0


@pytest.mark.parametrize("call,name", [
    (lambda: focal_loss(torch.zeros(2), torch.zeros(2), alpha=0.25, gamma=-1.0), "gamma"),
    (lambda: focal_loss(torch.zeros(2), torch.zeros(2), alpha=1.5, gamma=2.0), "alpha"),
    (lambda: asymmetric_loss(torch.zeros(2), torch.zeros(2), gamma_neg=4, gamma_pos=0, clip=1.0), "clip"),
    (lambda: binary_distillation_kl(torch.zeros(2), torch.zeros(2), temperature=0.0), "temperature"),
    (lambda: focal_loss(torch.zeros(2), torch.zeros(2), alpha=0.25, gamma=2.0, reduction="avg"), "reduction"),
    (lambda: FocalLoss(alpha=0.25, gamma=2.0)(torch.zeros(2, 3), torch.zeros(3, 2)), "logits"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


# ---------------------------------------------------------------- gradients
# The asymmetric loss is a fused autograd Function with an analytic gradient, the others plain
# autograd expressions of their stable forms; each gradient must equal autograd's gradient of the
# written-out reference formula.
def _grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


EXTREME = torch.tensor([-30.0, -12.0, -3.0, -0.2, 0.0, 0.4, 3.0, 12.0, 30.0], dtype=torch.float64)


@pytest.mark.parametrize("alpha", [0.25, -1.0, None])
@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_focal_gradient_equals_autograd_of_reference(alpha, gamma):
    x, y = _data((64, 3), seed=4)
    x = torch.cat([x, EXTREME.repeat(3, 1).T[:, :3]])
    y = torch.cat([y, (torch.arange(27).reshape(9, 3) % 2).double()])
    ref_alpha = -1.0 if alpha is None else alpha
    got = _grad(lambda t: focal_loss(t, y, alpha=alpha, gamma=gamma, reduction="none"), x)
    want = _grad(lambda t: torchvision_sigmoid_focal(t, y, ref_alpha, gamma), x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("clip", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("gamma_neg,gamma_pos", [(0, 0), (1, 0), (4, 0), (4, 1), (2, 3)])
def test_asymmetric_gradient_equals_autograd_of_official_formula(gamma_neg, gamma_pos, clip, detach):
    x, y = _data((64, 3), seed=5)
    got = _grad(lambda t: asymmetric_loss(t, y, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip,
                                          detach_focusing=detach, reduction="none"), x)
    want = _grad(lambda t: official_asl(t, y, gamma_neg, gamma_pos, clip, detach_focusing=detach), x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_distillation_and_consistency_gradients_equal_autograd_of_reference(temperature):
    g = torch.Generator().manual_seed(6)
    s = torch.randn(32, 4, generator=g, dtype=torch.float64) * 3
    t = torch.randn(32, 4, generator=g, dtype=torch.float64) * 3
    q = torch.sigmoid(t / temperature)
    want = _grad(lambda x: (q * torch.log(q / torch.sigmoid(x / temperature))
                            + (1 - q) * torch.log((1 - q) / torch.sigmoid(-x / temperature))) * temperature**2, s)
    got = _grad(lambda x: binary_distillation_kl(x, t, temperature=temperature, reduction="none"), s)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)
    p_main = torch.sigmoid(t)
    mask = ((torch.maximum(p_main, 1 - p_main) > 0.8)
            & (torch.maximum(torch.sigmoid(s), torch.sigmoid(-s)) > 0.8)).double()
    want = _grad(lambda x: mask * F.binary_cross_entropy_with_logits(x, p_main, reduction="none"), s)
    got = _grad(lambda x: consistency_loss(t, x, threshold=0.8, reduction="none")[0], s)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)


def test_fused_losses_pass_gradcheck():
    x = (torch.randn(6, 2, dtype=torch.float64) * 2).requires_grad_(True)
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    t = torch.randn(6, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: focal_loss(z, y, alpha=0.3, gamma=2.0, reduction="none"), (x,))
    assert torch.autograd.gradcheck(lambda z: asymmetric_loss(z, y, gamma_neg=3, gamma_pos=1, clip=0.1,
                                                              reduction="none"), (x,))
    assert torch.autograd.gradcheck(lambda z: binary_distillation_kl(z, t, temperature=2.0, reduction="none"), (x,))


# ---------------------------------------------------------------- value and gradient without autograd
# ``loss_and_grad`` (the training step's fused path) against the reference formulas above: the
# reduced value, and autograd's gradient of the reference's reduction.
def _reference_value_and_grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    value = fn(x)
    (g,) = torch.autograd.grad(value, x)
    return value.detach(), g


def _assert_value_and_grad(got, want):
    torch.testing.assert_close(got[0].double(), want[0], rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(got[1].double(), want[1], rtol=1e-6, atol=1e-10)


def _with_extremes(shape, seed):
    x, y = _data(shape, seed=seed)
    n = shape[1] if len(shape) == 2 else 1
    ext = EXTREME.repeat(n, 1).T if len(shape) == 2 else EXTREME
    ext_y = (torch.arange(ext.numel()).reshape(ext.shape) % 2).double()
    return torch.cat([x, ext]), torch.cat([y, ext_y])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.25, 0.9, -1.0, None])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_focal_loss_and_grad_equal_the_reference(shape, alpha, gamma, reduction):
    x, y = _with_extremes(shape, seed=7)
    ref_alpha = -1.0 if alpha is None else alpha
    reduce = torch.mean if reduction == "mean" else torch.sum
    want = _reference_value_and_grad(lambda t: reduce(torchvision_sigmoid_focal(t, y, ref_alpha, gamma)), x)
    _assert_value_and_grad(FocalLoss(alpha=alpha, gamma=gamma, reduction=reduction).loss_and_grad(x, y), want)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_loss_and_grad_with_one_alpha_per_label(gamma):
    x, y = _with_extremes((32, 4), seed=12)
    alpha = torch.tensor([0.125, 0.5, 0.75, 0.875])  # exact in float32, the buffer's dtype

    def reference(t):
        return torch.stack([torchvision_sigmoid_focal(t[:, k], y[:, k], float(alpha[k]), gamma)
                            for k in range(4)], dim=1).mean()

    want = _reference_value_and_grad(reference, x)
    _assert_value_and_grad(FocalLoss(alpha=alpha, gamma=gamma).loss_and_grad(x, y), want)


# Whole gammas on extreme logits with every clip; fractional ones where the official form has a
# gradient: its (1 - p_t)^0.5 has an infinite derivative where the clipped 1 - p_t is 1 exactly
# (ours clamps the base at eps: test_asymmetric_gradient_is_finite_for_fractional_gamma_with_clip).
ASL_CASES = ([(gn, gp, clip) for gn, gp in [(0, 0), (1, 0), (4, 0), (4, 1), (2, 3)] for clip in (0.0, 1e-9, 0.05, 0.3)]
             + [(0.5, 0.5, 0.0), (2.5, 0.5, 1e-9)])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", ASL_CASES)
@pytest.mark.parametrize("detach", [False, True])
def test_asymmetric_loss_and_grad_equal_the_official_formula(shape, gamma_neg, gamma_pos, clip, detach):
    x, y = _with_extremes(shape, seed=8) if gamma_neg % 1 == gamma_pos % 1 == 0 else _data(shape, seed=8)
    want = _reference_value_and_grad(
        lambda t: official_asl(t, y, gamma_neg, gamma_pos, clip, detach_focusing=detach).mean(), x)
    loss = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, detach_focusing=detach)
    _assert_value_and_grad(loss.loss_and_grad(x, y), want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_distillation_loss_and_grad_equal_the_binary_kl(shape, temperature):
    g = torch.Generator().manual_seed(9)
    s, t = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    q = torch.sigmoid(t / temperature)

    def kl(x):  # per label, summed over labels and averaged over the batch (Hinton et al.'s scale)
        el = (q * torch.log(q / torch.sigmoid(x / temperature))
              + (1 - q) * torch.log((1 - q) / torch.sigmoid(-x / temperature))) * temperature**2
        return el.sum(dim=1).mean() if el.dim() == 2 else el.mean()

    got = BinaryDistillationKL(temperature=temperature).loss_and_grad(s, t)
    _assert_value_and_grad(got, _reference_value_and_grad(kl, s))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threshold", [0.6, 0.9])
def test_consistency_loss_and_grad_equal_the_masked_bce(shape, threshold):
    g = torch.Generator().manual_seed(10)
    main, aux = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    p_main = torch.sigmoid(main)
    mask = ((torch.maximum(p_main, 1 - p_main) > threshold)
            & (torch.maximum(torch.sigmoid(aux), torch.sigmoid(-aux)) > threshold)).double()
    assert 0 < mask.mean() < 1  # both kinds of element occur
    want = _reference_value_and_grad(
        lambda x: (mask * F.binary_cross_entropy_with_logits(x, p_main, reduction="none")).mean(), aux)
    value, grad, rate = ConsistencyLoss(threshold=threshold).loss_and_grad(main, aux)
    _assert_value_and_grad((value, grad), want)
    assert rate.item() == pytest.approx(mask.mean().item())


@pytest.mark.parametrize("shape", SHAPES)
def test_bce_loss_and_grad_equal_autograd_of_bce(shape):
    x, y = _with_extremes(shape, seed=11)
    want = _reference_value_and_grad(lambda t: F.binary_cross_entropy_with_logits(t, y), x)
    _assert_value_and_grad(BCELoss().loss_and_grad(x, y), want)


def test_loss_and_grad_needs_a_reduced_loss():
    with pytest.raises(ValueError, match="`FocalLoss.loss_and_grad` needs reduction 'mean' or 'sum', got 'none'"):
        FocalLoss(reduction="none").loss_and_grad(torch.zeros(2), torch.zeros(2))
