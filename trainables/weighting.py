"""Adaptive loss weighting: SoftAdapt, uncertainty weighting, gradient similarity.

None of these minimizes a learnable sigmoid(w) weight together with the loss: d/dw of sigmoid(w) L
is >= 0 for every w, so such weights collapse to 0 and the loss "improves" trivially.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "finite_difference_coefficients",
    "softadapt_weights",
    "SoftAdaptWeighter",
    "UncertaintyWeighting",
    "combine_gradients",
    "GradScale",
]

Variant = Literal["original", "loss_weighted", "normalized"]
_VARIANTS = ("original", "loss_weighted", "normalized")
_EPS = 1e-8


def finite_difference_coefficients(order: int) -> Tensor:
    """Forward-difference weights for the first derivative from ``order + 1`` equally spaced points.

    Order ``n`` is exact for polynomials of degree n: [-1, 1] for n = 1, [-25/12, 4, -3, 4/3, -1/4]
    for n = 4 — what SoftAdapt's official code uses for a history of n + 1 values.
    """
    if order < 1:
        raise ValueError(f"`order` must be >= 1, got {order}")
    pts = torch.arange(order + 1, dtype=torch.float64)
    powers = torch.arange(order + 1, dtype=torch.float64)
    vander = pts[None, :] ** powers[:, None]  # row m: i^m
    rhs = torch.zeros(order + 1, dtype=torch.float64)
    rhs[1] = 1.0  # d/dx x^m at 0 is 1 for m = 1, 0 otherwise
    return torch.linalg.solve(vander, rhs)


@functools.lru_cache(maxsize=64)
def _coefficients(order: int, device: torch.device) -> Tensor:
    return finite_difference_coefficients(order).to(device)


def softadapt_weights(histories: Sequence[Sequence[float]] | Tensor, *, beta: float = 0.1,
                      variant: Variant = "original") -> Tensor:
    """SoftAdapt weights (Heydari et al. 2019) from K loss histories, oldest value first.

    s_k is each history's slope by finite differences (all points); then
    original: softmax(beta * s); loss_weighted: f_k e^(beta s_k) / sum f_l e^(beta s_l) with f_k the
    mean of history k; normalized: softmax(beta * s / ||s||_1) (the official code divides by the
    signed sum, which flips the preference when every loss falls; the L1 norm keeps it).
    Returns K weights that sum to 1 (up to the 1e-8 the official code adds to the denominator).
    """
    if variant not in _VARIANTS:
        raise ValueError(f"`variant` must be one of {_VARIANTS}, got {variant!r}")
    h = histories if isinstance(histories, Tensor) else torch.as_tensor([list(map(float, x)) for x in histories])
    if h.dim() != 2 or h.shape[1] < 2:
        raise ValueError(f"`histories` must be K sequences of at least 2 values each, got shape {tuple(h.shape)}")
    h = h.to(torch.float64)
    slopes = h @ _coefficients(h.shape[1] - 1, h.device)
    if variant == "normalized":
        slopes = slopes / (slopes.abs().sum() + _EPS)
    e = torch.exp(beta * (slopes - slopes.max()))
    if variant == "loss_weighted":
        e = h.mean(dim=1) * e
    return e / (e.sum() + _EPS)


class SoftAdaptWeighter(nn.Module):
    """SoftAdapt during training, without host syncs.

    Each step adds the K loss values to a block; every ``every`` steps the block mean joins a
    history of the last ``window`` block means and the weights are recomputed from it (a single
    step's loss is too noisy for a slope). Weights are scaled to sum to K, so equal weights are 1
    each, the same scale as static weighting. Until two block means exist the weights stay 1.
    """

    def __init__(self, n_losses: int, *, beta: float = 0.1, variant: Variant = "loss_weighted",
                 every: int = 10, window: int = 5) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"`variant` must be one of {_VARIANTS}, got {variant!r}")
        if every < 1 or window < 2 or n_losses < 1:
            raise ValueError(f"need n_losses >= 1, every >= 1, window >= 2; got {n_losses}, {every}, {window}")
        self.beta, self.variant, self.every, self.window = beta, variant, every, window
        self.register_buffer("block", torch.zeros(n_losses))
        self.register_buffer("history", torch.zeros(window, n_losses))
        self.register_buffer("weights", torch.ones(n_losses))
        self.steps_in_block = 0
        self.filled = 0

    @torch.no_grad()
    def update(self, losses: Tensor) -> Tensor:
        """Record this step's K losses (detached) and return the weights to use for the next step."""
        self.block += losses.detach().float()
        self.steps_in_block += 1
        if self.steps_in_block == self.every:
            self.history.copy_(torch.cat([self.history[1:], (self.block / self.every)[None]]))
            self.block.zero_()
            self.steps_in_block = 0
            self.filled = min(self.filled + 1, self.window)
            if self.filled >= 2:
                recent = self.history[-self.filled:].T
                w = softadapt_weights(recent, beta=self.beta, variant=self.variant)
                self.weights.copy_(w.float() * len(w))
        return self.weights

    def get_extra_state(self) -> Any:
        return {"steps_in_block": self.steps_in_block, "filled": self.filled}

    def set_extra_state(self, state: Any) -> None:
        self.steps_in_block = int(state["steps_in_block"])
        self.filled = int(state["filled"])


class UncertaintyWeighting(nn.Module):
    """Kendall et al. 2018: L = sum_k exp(-s_k) L_k + s_k with learnable s_k = log sigma_k^2.

    The minimum over s_k is at exp(-s_k) = 1 / L_k, so the weights settle instead of collapsing; s_k
    is clamped to [-clamp, clamp] so a loss near 0 cannot push its weight to infinity.
    """

    def __init__(self, n_losses: int, *, clamp: float = 6.0) -> None:
        super().__init__()
        if clamp <= 0:
            raise ValueError(f"`clamp` must be > 0, got {clamp}")
        self.clamp = clamp
        self.log_vars = nn.Parameter(torch.zeros(n_losses))

    def forward(self, losses: Tensor) -> Tensor:
        """The weighted total sum_k exp(-s_k) L_k + s_k."""
        s = self.log_vars.clamp(-self.clamp, self.clamp)
        return (torch.exp(-s) * losses + s).sum()

    @torch.no_grad()
    def weights(self) -> Tensor:
        """The current weights exp(-s_k)."""
        return torch.exp(-self.log_vars.clamp(-self.clamp, self.clamp))


def combine_gradients(g_main: Sequence[Tensor], g_aux: Sequence[Tensor], *,
                      mode: Literal["weighted", "gated"] = "weighted") -> tuple[list[Tensor], Tensor, Tensor]:
    """Gradient similarity (Du et al. 2018) on shared parameters.

    weighted: g = g_main + max(0, cos) g_aux; gated: g = g_main + 1[cos > 0] g_aux, with cos the
    cosine between the flattened main and aux gradients. Returns (combined, cos, weight).
    """
    if mode not in ("weighted", "gated"):
        raise ValueError(f"`mode` must be 'weighted' or 'gated', got {mode!r}")
    a = torch.cat([g.reshape(-1) for g in g_main])
    b = torch.cat([g.reshape(-1) for g in g_aux])
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp(min=1e-12)
    weight = cos.clamp(min=0) if mode == "weighted" else (cos > 0).to(cos.dtype)
    return [gm + weight * ga for gm, ga in zip(g_main, g_aux)], cos, weight


class GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale`` as it is AT BACKWARD TIME.

    Placed between the shared backbone and the aux head, it lets one backward pass give the
    backbone g_main + w * g_aux while the aux head still gets its full gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None
