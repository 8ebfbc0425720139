"""Per-label sigmoid losses, exactly as ../shared/METHODS.md states them.

Each loss has a functional form and a small ``nn.Module`` holding its hyperparameters. Inputs are
logits and 0/1 targets of shape [B] or [B, K]; nothing here uses softmax (over a single logit it
is constant 1, so a softmax-based term would silently be zero). The modules a two-head training step
uses also have ``loss_and_grad``: the reduced loss and its gradient with respect to the logits,
written out and computed without autograd (``trainer._FusedLosses``; the tests check both against the
reference formulas).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.config import Interval

__all__ = [
    "focal_loss",
    "asymmetric_loss",
    "binary_distillation_kl",
    "smoothed_bce",
    "mdca_loss",
    "brier_loss",
    "calibration_loss",
    "consistency_loss",
    "FocalLoss",
    "BCELoss",
    "AsymmetricLoss",
    "BinaryDistillationKL",
    "SmoothedBCE",
    "CalibrationLoss",
    "ConsistencyLoss",
    "focal_alpha",
]

Reduction = Literal["none", "mean", "sum"]
_REDUCTIONS = ("none", "mean", "sum")


# The allowed ranges, as the config states its own (one interval type, one message format).
_NON_NEG = Interval(0)
_POSITIVE = Interval(0, lo_open=True)
_UNIT = Interval(0, 1)
_CLIP = Interval(0, 1, hi_open=True)
_EPS = Interval(0, 1, lo_open=True, hi_open=True)
_THRESHOLD = Interval(0.5, 1, hi_open=True)


def _check(name: str, value: float, allowed: Interval) -> None:
    if not allowed.contains(value):
        span = allowed.describe()
        span = f"in {span}" if span[0] in "([" else span  # "in [0, 1)", but ">= 0"
        raise ValueError(f"`{name}` must be a finite number {span}, got {value!r}")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_shapes(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    if a.shape != b.shape or a.dim() not in (1, 2):
        raise ValueError(f"`{names[0]}` and `{names[1]}` must both be [B] or [B, K], "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _f32(t: Tensor) -> Tensor:
    """At least float32: half-precision probabilities underflow the eps clamps; float64 stays."""
    return t if t.dtype == torch.float64 else t.float()


# A fused autograd Function stays only where it saves >= 5% of the full-stack step at batch 256
# (benchmarks/bench_trainer.py --plain-losses measures each loss against its plain autograd form).
# The asymmetric loss keeps one: written plainly (two clamped logs, two clamped powers, a where)
# it is ~20 autograd nodes, and the analytic gradient saved 5-15% of the step on CUDA (1-3% on
# CPU). The focal, distillation and consistency losses are plain autograd expressions: fused they
# saved ~1% or nothing (a Function's Python-side cost eats what its fewer nodes save). The tests
# check every gradient against autograd of the written-out formula.
def _asymmetric_terms(x: Tensor, y: Tensor, gamma_neg: float, gamma_pos: float, clip: float, eps: float,
                      detach_focusing: bool) -> tuple[Tensor, Tensor]:
    """The elementwise asymmetric loss and its derivative in ``x`` (targets 0/1). Parts that are 1 or
    a no-op for the given hyperparameters are skipped: each is an operation on the whole batch."""
    p, q = torch.sigmoid(x), torch.sigmoid(-x)  # q = 1 - p without cancellation
    pos = y > 0.5
    # positives: (1 - p)^g+ log p, base and log clamped at eps; d/dx log max(p, eps) = (1 - p) [p >= eps]
    log_p = torch.log(p.clamp(min=eps))
    d_pos = q * (p >= eps)
    if gamma_pos:
        w_pos = q.clamp(min=eps) ** gamma_pos
        loss_pos, d_pos = w_pos * log_p, d_pos * w_pos
        if not detach_focusing:  # d/dx (1 - p)^g+ = -g+ (1 - p)^g+ p
            d_pos = d_pos - gamma_pos * log_p * p * w_pos * (q >= eps)
    else:
        loss_pos = log_p
    # negatives: p_m^g- log(1 - p_m) with p_m = max(p - clip, 0), which moves only where p > clip
    p_m = (p - clip).clamp(min=0) if clip > 0 else p
    dpm = p * q * (p > clip) if clip > 0 else p * q
    one_m = 1 - p_m
    if clip >= eps:  # then 1 - p_m >= clip >= eps: the clamp never acts
        log_nm, d_neg = torch.log(one_m), -dpm / one_m
    else:
        log_nm, d_neg = torch.log(one_m.clamp(min=eps)), -dpm / one_m.clamp(min=eps) * (one_m >= eps)
    if gamma_neg:
        p_mc = p_m.clamp(min=eps)
        w_neg = p_mc ** gamma_neg
        loss_neg, d_focus = w_neg * log_nm, d_neg * w_neg
        if not detach_focusing:  # d/dx p_m^g- = g- p_m^(g- - 1) dp_m/dx where p_m >= eps
            d_focus = d_focus + gamma_neg * log_nm * (w_neg / p_mc) * dpm * (p_m >= eps)
        d_neg = d_focus
    else:
        loss_neg = log_nm
    return -torch.where(pos, loss_pos, loss_neg), -torch.where(pos, d_pos, d_neg)


class _AsymmetricFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, gamma_neg: float, gamma_pos: float, clip: float, eps: float,
                detach_focusing: bool) -> Tensor:
        loss, d_x = _asymmetric_terms(x, y, gamma_neg, gamma_pos, clip, eps, detach_focusing)
        ctx.save_for_backward(d_x)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (d_x,) = ctx.saved_tensors
        return grad * d_x, None, None, None, None, None, None


# --------------------------------------------------------------------------- focal
def focal_loss(logits: Tensor, targets: Tensor, *, alpha: float | Tensor | None, gamma: float,
               reduction: Reduction = "mean") -> Tensor:
    """Sigmoid focal loss: -alpha_t (1 - p_t)^gamma log p_t, alpha weighting POSITIVES.

    ``alpha`` None or < 0 disables alpha weighting; a tensor gives one alpha per label (last dim).
    Stable: log p_t from BCE-with-logits, (1 - p_t)^gamma = exp(-gamma * softplus(z_t)).
    """
    _check("gamma", gamma, _NON_NEG)
    _check_reduction(reduction)
    _check_shapes(logits, targets, ("logits", "targets"))
    if not isinstance(alpha, Tensor) and alpha is not None and alpha >= 0:
        _check("alpha", alpha, _UNIT)
    return _reduce(_focal(_f32(logits), targets, alpha, gamma), reduction)


def _focal(x: Tensor, targets: Tensor, alpha: float | Tensor | None, gamma: float) -> Tensor:
    y = targets.to(x.dtype)
    use_alpha = isinstance(alpha, Tensor) or (alpha is not None and alpha >= 0)
    alpha_t = (1 - alpha) + (2 * alpha - 1) * y if use_alpha else None  # alpha if y = 1 else 1 - alpha
    if gamma == 0:
        loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    else:
        z = x * (2 * y - 1)  # z_t: x for positives, -x for negatives
        bce = F.softplus(-z)  # -log p_t
        # (1 - p_t)^gamma = exp(-gamma softplus(z_t)), and softplus(z_t) = bce + z_t
        loss = torch.exp(-gamma * (bce + z)) * bce
    return loss * alpha_t if alpha_t is not None else loss


def _focal_sum_and_grad(x: Tensor, y: Tensor, alpha: float | Tensor | None, gamma: float,
                        scale: float) -> tuple[Tensor, Tensor]:
    """``scale`` times the summed focal loss and its derivative in ``x`` (targets 0/1), from log p_t and
    log(1 - p_t): d/dz_t [-(1 - p_t)^gamma log p_t] = (1 - p_t)^gamma (gamma p_t log p_t - (1 - p_t)).
    alpha_t, the scale and dz_t/dx = +-1 are one factor per element."""
    pos = y > 0.5
    z = torch.where(pos, x, -x)  # z_t
    log_pt, log_qt = F.logsigmoid(z), F.logsigmoid(-z)  # log p_t, log(1 - p_t)
    if isinstance(alpha, Tensor) or (alpha is not None and alpha >= 0):
        a_pos, a_neg = alpha * scale, (1 - alpha) * scale
    else:
        a_pos = a_neg = scale
    # alpha_t and alpha_t dz_t/dx (Python numbers make a default-dtype tensor: no copy for float32)
    weight, signed = torch.where(pos, a_pos, a_neg).to(x.dtype), torch.where(pos, a_pos, -a_neg).to(x.dtype)
    if gamma == 0:
        return -torch.dot(log_pt.reshape(-1), weight.reshape(-1)), -torch.exp(log_qt) * signed
    w = torch.exp(log_qt * gamma)  # (1 - p_t)^gamma
    loss = -torch.dot((w * log_pt).reshape(-1), weight.reshape(-1))
    return loss, w * (gamma * torch.exp(log_pt) * log_pt - torch.exp(log_qt)) * signed


def _mean_scale(reduction: str, n: int, name: str) -> float:
    """What ``loss_and_grad`` multiplies the elementwise sums by: 1/n for 'mean', 1 for 'sum'."""
    if reduction == "none":
        raise ValueError(f"`{name}.loss_and_grad` needs reduction 'mean' or 'sum', got 'none'")
    return 1.0 / max(n, 1) if reduction == "mean" else 1.0


def focal_alpha(mode: float | str | None, pos: Tensor, neg: Tensor, *, cb_beta: float = 0.999) -> float | Tensor | None:
    """Resolve a config alpha: a number, None, 'auto' (1 - prevalence) or 'class_balanced' (Cui et al.).

    ``pos``/``neg`` are per-label counts of positives and negatives in the training split.
    """
    if mode is None or isinstance(mode, (int, float)):
        return mode
    pos, neg = pos.double(), neg.double()
    if mode == "auto":
        return (1 - pos / (pos + neg)).float()
    if mode == "class_balanced":
        w_pos = (1 - cb_beta) / (1 - cb_beta**pos)
        w_neg = (1 - cb_beta) / (1 - cb_beta**neg)
        return (w_pos / (w_pos + w_neg)).float()
    raise ValueError(f"`alpha` must be a number, None, 'auto' or 'class_balanced', got {mode!r}")


class FocalLoss(nn.Module):
    def __init__(self, *, alpha: float | Tensor | None = 0.25, gamma: float = 2.0,
                 reduction: Reduction = "mean") -> None:
        super().__init__()
        _check("gamma", gamma, _NON_NEG)
        _check_reduction(reduction)
        self.gamma, self.reduction = gamma, reduction
        if isinstance(alpha, Tensor):
            self.register_buffer("alpha", alpha.float())
        else:
            self.alpha = alpha

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_shapes(logits, targets, ("logits", "targets"))
        return _reduce(_focal(_f32(logits), targets, self.alpha, self.gamma), self.reduction)

    def loss_and_grad(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The reduced loss and its gradient with respect to ``logits``, without autograd (0/1 targets)."""
        _check_shapes(logits, targets, ("logits", "targets"))
        x = _f32(logits)
        scale = _mean_scale(self.reduction, x.numel(), "FocalLoss")
        return _focal_sum_and_grad(x, targets, self.alpha, self.gamma, scale)


class BCELoss(nn.Module):
    def __init__(self, *, reduction: Reduction = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction=self.reduction)

    def loss_and_grad(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The reduced loss and its gradient with respect to ``logits`` (sigmoid(x) - y), without autograd."""
        x = _f32(logits)
        y = targets.to(x.dtype)
        scale = _mean_scale(self.reduction, x.numel(), "BCELoss")
        loss = F.binary_cross_entropy_with_logits(x, y, reduction="sum") * scale
        return loss, (torch.sigmoid(x) - y) * scale


# --------------------------------------------------------------------------- asymmetric
def asymmetric_loss(logits: Tensor, targets: Tensor, *, gamma_neg: float, gamma_pos: float, clip: float,
                    eps: float = 1e-8, reduction: Reduction = "mean", detach_focusing: bool = False) -> Tensor:
    """Asymmetric loss (Ridnik et al. 2021): -(y (1-p)^g+ log p + (1-y) p_m^g- log(1 - p_m)).

    p_m = max(p - clip, 0) shifts negatives' probabilities; the logs are clamped at ``eps``. Computed
    in float32 (fp16 probabilities underflow the clamp). The official code sums; here the reduction
    is explicit, so 'mean' does not grow with the batch size.
    """
    for name, v in (("gamma_neg", gamma_neg), ("gamma_pos", gamma_pos)):
        _check(name, v, _NON_NEG)
    _check("clip", clip, _CLIP)
    _check("eps", eps, _EPS)
    _check_reduction(reduction)
    _check_shapes(logits, targets, ("logits", "targets"))
    x = _f32(logits)
    # Focusing bases are clamped at eps: where p_m = 0 the log term is exactly 0, so the value is
    # unchanged, and the gradient of p_m^g at 0 (infinite for g < 1) never turns into NaN.
    loss = _AsymmetricFn.apply(x, targets.to(x.dtype), float(gamma_neg), float(gamma_pos), float(clip), float(eps),
                               bool(detach_focusing))
    return _reduce(loss, reduction)


class AsymmetricLoss(nn.Module):
    def __init__(self, *, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8,
                 detach_focusing: bool = False, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.kw = dict(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=eps,
                       detach_focusing=detach_focusing, reduction=reduction)
        asymmetric_loss(torch.zeros(1), torch.zeros(1), **self.kw)  # validate once, here

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return asymmetric_loss(logits, targets, **self.kw)

    def loss_and_grad(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The reduced loss and its gradient with respect to ``logits``, without autograd (0/1 targets)."""
        _check_shapes(logits, targets, ("logits", "targets"))
        kw = self.kw
        x = _f32(logits)
        loss, d_x = _asymmetric_terms(x, targets.to(x.dtype), float(kw["gamma_neg"]), float(kw["gamma_pos"]),
                                      float(kw["clip"]), float(kw["eps"]), bool(kw["detach_focusing"]))
        scale = _mean_scale(kw["reduction"], loss.numel(), "AsymmetricLoss")
        return loss.sum() * scale, d_x * scale


# --------------------------------------------------------------------------- distillation
def binary_distillation_kl(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float,
                           reduction: Reduction = "mean") -> Tensor:
    """Per-label binary KL(q || s) with q = sigmoid(t/T), s = sigmoid(x/T), times T^2.

    Stable form: BCEWithLogits(x/T, q) - H(q), and H(q) = BCEWithLogits(t/T, q). 'mean' sums over
    labels and averages over the batch (Hinton et al.'s scale); 'none' is elementwise; 'sum' sums
    everything. The teacher gets no gradient.
    """
    _check("temperature", temperature, _POSITIVE)
    _check_reduction(reduction)
    _check_shapes(student_logits, teacher_logits, ("student_logits", "teacher_logits"))
    x = _f32(student_logits)
    s, t = x / temperature, teacher_logits.detach().to(x.dtype) / temperature
    q = torch.sigmoid(t)
    # KL(q || s) = BCE(x/T, q) - H(q), and H(q) = BCE(t/T, q) (a constant: the teacher gets no gradient)
    kl = (F.binary_cross_entropy_with_logits(s, q, reduction="none")
          - F.binary_cross_entropy_with_logits(t, q, reduction="none")) * temperature**2
    if reduction == "mean":
        return (kl.sum(dim=1) if kl.dim() == 2 else kl).mean()
    return _reduce(kl, reduction)


class BinaryDistillationKL(nn.Module):
    def __init__(self, *, temperature: float = 2.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        _check("temperature", temperature, _POSITIVE)
        _check_reduction(reduction)
        self.temperature, self.reduction = temperature, reduction

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return binary_distillation_kl(student_logits, teacher_logits, temperature=self.temperature,
                                      reduction=self.reduction)

    def loss_and_grad(self, student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        """The reduced loss and its gradient with respect to ``student_logits``, without autograd:
        d/dx T^2 KL(q || sigmoid(x/T)) = T (sigmoid(x/T) - q)."""
        _check_shapes(student_logits, teacher_logits, ("student_logits", "teacher_logits"))
        x, temp = _f32(student_logits), self.temperature
        s, t = x / temp, teacher_logits.to(x.dtype) / temp
        q = torch.sigmoid(t)
        per_row = x.dim() == 2 and self.reduction == "mean"  # 'mean' sums over labels, averages over the batch
        scale = _mean_scale(self.reduction, x.shape[0] if per_row else x.numel(), "BinaryDistillationKL")
        # BCE(s, q) - BCE(t, q) = softplus(s) - softplus(t) - q (s - t), summed
        kl = (F.softplus(s) - F.softplus(t) - q * (s - t)).sum() * (temp * temp * scale)
        return kl, (torch.sigmoid(s) - q) * (temp * scale)


# --------------------------------------------------------------------------- other aux losses
def smoothed_bce(logits: Tensor, targets: Tensor, *, smoothing: float, reduction: Reduction = "mean") -> Tensor:
    """BCE against y (1 - s) + s / 2."""
    _check("smoothing", smoothing, _CLIP)
    _check_reduction(reduction)
    _check_shapes(logits, targets, ("logits", "targets"))
    y = targets.float() * (1 - smoothing) + smoothing / 2
    return F.binary_cross_entropy_with_logits(logits.float(), y, reduction=reduction)


def mdca_loss(logits: Tensor, targets: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """MDCA (Hebbalaguppe et al. 2022): per label |mean_i p_ik - mean_i y_ik|; 'mean' averages labels.

    It is a batch-level quantity, so 'none' gives one value per label, not per sample.
    """
    _check_reduction(reduction)
    _check_shapes(logits, targets, ("logits", "targets"))
    p = torch.sigmoid(logits.float())
    gap = (p.mean(dim=0) - targets.float().mean(dim=0)).abs()
    return _reduce(gap.reshape(-1), reduction)


def brier_loss(logits: Tensor, targets: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """(p - y)^2 per element."""
    _check_reduction(reduction)
    _check_shapes(logits, targets, ("logits", "targets"))
    return _reduce((torch.sigmoid(logits.float()) - targets.float()) ** 2, reduction)


def calibration_loss(logits: Tensor, targets: Tensor, *, kind: Literal["mdca", "brier"] = "mdca",
                     beta: float = 1.0) -> Tensor:
    """BCE + beta * MDCA (or Brier), both batch means. Noisy on small batches: MDCA is batch-level."""
    _check("beta", beta, _NON_NEG)
    if kind not in ("mdca", "brier"):
        raise ValueError(f"`kind` must be 'mdca' or 'brier', got {kind!r}")
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float())
    extra = mdca_loss(logits, targets) if kind == "mdca" else brier_loss(logits, targets)
    return bce + beta * extra


class SmoothedBCE(nn.Module):
    def __init__(self, *, smoothing: float = 0.1, reduction: Reduction = "mean") -> None:
        super().__init__()
        _check("smoothing", smoothing, _CLIP)
        self.smoothing, self.reduction = smoothing, reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return smoothed_bce(logits, targets, smoothing=self.smoothing, reduction=self.reduction)


class CalibrationLoss(nn.Module):
    def __init__(self, *, kind: Literal["mdca", "brier"] = "mdca", beta: float = 1.0) -> None:
        super().__init__()
        _check("beta", beta, _NON_NEG)
        self.kind, self.beta = kind, beta

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return calibration_loss(logits, targets, kind=self.kind, beta=self.beta)


# --------------------------------------------------------------------------- consistency
def consistency_loss(main_logits: Tensor, aux_logits: Tensor, *, threshold: float,
                     reduction: Reduction = "mean") -> tuple[Tensor, Tensor]:
    """Confidence-masked consistency (FixMatch-style) from the main head to the aux head.

    Binary confidence c = max(p, 1 - p); per label, mask = c_main > tau and c_aux > tau. Loss =
    mask * BCE(aux_logits, stopgrad(p_main)), averaged over ALL elements (masked ones count as 0).
    Returns (loss, mask_rate). At low prevalence nearly every confident element is a negative.
    """
    _check("threshold", threshold, _THRESHOLD)
    _check_reduction(reduction)
    _check_shapes(main_logits, aux_logits, ("main_logits", "aux_logits"))
    x = _f32(aux_logits)
    p_main, mask = _consistency_target(main_logits, x, threshold)
    loss = mask * F.binary_cross_entropy_with_logits(x, p_main, reduction="none")
    return _reduce(loss, reduction), mask.mean()


@torch.no_grad()
def _consistency_target(main_logits: Tensor, x: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """p_main (no gradient) and the mask where both heads are confident, in ``x``'s dtype."""
    main = main_logits.to(x.dtype)
    # max(p, 1 - p) = sigmoid(|x|) > tau  <=>  |x| > logit(tau): the same mask, on the logits.
    edge = math.log(threshold / (1 - threshold))
    return torch.sigmoid(main), ((main.abs() > edge) & (x.abs() > edge)).to(x.dtype)


class ConsistencyLoss(nn.Module):
    def __init__(self, *, threshold: float = 0.9) -> None:
        super().__init__()
        _check("threshold", threshold, _THRESHOLD)
        self.threshold = threshold

    def forward(self, main_logits: Tensor, aux_logits: Tensor) -> tuple[Tensor, Tensor]:
        return consistency_loss(main_logits, aux_logits, threshold=self.threshold)

    def loss_and_grad(self, main_logits: Tensor, aux_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The mean loss, its gradient with respect to ``aux_logits`` (mask * (sigmoid(aux) - p_main) / n;
        the main head gets none) and the mask rate, without autograd."""
        _check_shapes(main_logits, aux_logits, ("main_logits", "aux_logits"))
        x = _f32(aux_logits)
        p_main, mask = _consistency_target(main_logits, x, self.threshold)
        scale = 1.0 / max(x.numel(), 1)
        bce = F.softplus(x) - p_main * x  # BCE(x, p_main)
        loss = torch.dot(mask.reshape(-1), bce.reshape(-1)) * scale
        return loss, (torch.sigmoid(x) - p_main) * (mask * scale), mask.mean()
