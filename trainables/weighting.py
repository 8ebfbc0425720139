"""How the main and aux losses become one total: static, SoftAdapt, uncertainty, gradient similarity.

Every strategy is a ``LossWeighting`` with one interface, so the training step never asks which one
it holds:

    aux_logits = model.aux_head(weighting.aux_input(feats))
    total = weighting.backward(l_main, l_aux, extra)   # combine the losses and backpropagate
    optimizer.step()
    weighting.after_step(heads)                         # the step's [main, aux] losses, detached
    weighting.reported_weights()                        # weights/* for the epoch report (one host sync)

``extra`` is the aux head's other terms (distillation, consistency), already times their own
weights: every strategy adds them to the aux side unchanged.

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
    "LossWeighting",
    "StaticWeighting",
    "SoftAdaptWeighter",
    "UncertaintyWeighting",
    "GradientSimilarity",
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


class LossWeighting(nn.Module):
    """The interface every strategy implements; subclasses override ``combine`` and what they need.

    A strategy is an ``nn.Module``: its state (SoftAdapt's history, learnable log-variances, the
    cached gradient-similarity weight) is in its ``state_dict`` and its parameters, if any, go to
    the optimiser with the model's.
    """

    def aux_input(self, feats: Tensor) -> Tensor:
        """What the aux head sees of the shared features (gradient similarity scales its gradient here)."""
        return feats

    def combine(self, l_main: Tensor, l_aux: Tensor, extra: Tensor | None) -> Tensor:
        """The total loss of one step."""
        raise NotImplementedError

    def backward(self, l_main: Tensor, l_aux: Tensor, extra: Tensor | None) -> Tensor:
        """Set every gradient of this step (the optimiser has zeroed them); returns the detached total."""
        total = self.combine(l_main, l_aux, extra)
        total.backward()
        return total.detach()

    def step_weights(self) -> Tensor | None:
        """[w_main, w_aux] of this step where they take no gradient and ``backward`` is ``combine``'s,
        so the step may combine the losses itself (``TrainStep``'s fused losses); None otherwise."""
        return None

    def after_step(self, heads: Tensor) -> None:
        """After the optimiser step, with the step's detached [main, aux] losses."""

    def reported_weights(self) -> dict[str, float]:
        """``weights/main``, ``weights/aux`` (and the strategy's own) as they are now."""
        raise NotImplementedError


class StaticWeighting(LossWeighting):
    """main + aux_weight * aux."""

    def __init__(self, *, aux_weight: float = 1.0) -> None:
        super().__init__()
        self.aux_weight = aux_weight
        self.register_buffer("_weights", torch.tensor([1.0, aux_weight]), persistent=False)

    def step_weights(self) -> Tensor | None:
        return self._weights

    def _aux_side(self, l_aux: Tensor, extra: Tensor | None) -> Tensor:
        side = l_aux if self.aux_weight == 1 else self.aux_weight * l_aux  # one autograd node less at 1
        return side if extra is None else side + extra

    def combine(self, l_main: Tensor, l_aux: Tensor, extra: Tensor | None) -> Tensor:
        return l_main + self._aux_side(l_aux, extra)

    def reported_weights(self) -> dict[str, float]:
        return {"weights/main": 1.0, "weights/aux": self.aux_weight}


class SoftAdaptWeighter(LossWeighting):
    """SoftAdapt during training, without host syncs.

    Each step adds the K loss values to a block; every ``every`` steps the block mean joins a
    history of the last ``window`` block means and the weights are recomputed from it (a single
    step's loss is too noisy for a slope). Weights are scaled to sum to K, so equal weights are 1
    each, the same scale as static weighting. Until two block means exist the weights stay 1.
    """

    def __init__(self, *, n_losses: int = 2, beta: float = 0.1, variant: Variant = "loss_weighted",
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

    def combine(self, l_main: Tensor, l_aux: Tensor, extra: Tensor | None) -> Tensor:
        total = (self.weights * torch.stack([l_main, l_aux])).sum()
        return total if extra is None else total + extra

    def step_weights(self) -> Tensor | None:
        return self.weights

    def after_step(self, heads: Tensor) -> None:
        self.update(heads)

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

    def reported_weights(self) -> dict[str, float]:
        main, aux = self.weights.tolist()
        return {"weights/main": main, "weights/aux": aux}

    def get_extra_state(self) -> Any:
        return {"steps_in_block": self.steps_in_block, "filled": self.filled}

    def set_extra_state(self, state: Any) -> None:
        self.steps_in_block = int(state["steps_in_block"])
        self.filled = int(state["filled"])


class UncertaintyWeighting(LossWeighting):
    """Kendall et al. 2018: L = sum_k exp(-s_k) L_k + s_k with learnable s_k = log sigma_k^2.

    The minimum over s_k is at exp(-s_k) = 1 / L_k, so the weights settle instead of collapsing; s_k
    is clamped to [-clamp, clamp] so a loss near 0 cannot push its weight to infinity.
    """

    def __init__(self, *, n_losses: int = 2, clamp: float = 6.0) -> None:
        super().__init__()
        if clamp <= 0:
            raise ValueError(f"`clamp` must be > 0, got {clamp}")
        self.clamp = clamp
        self.log_vars = nn.Parameter(torch.zeros(n_losses))

    def forward(self, losses: Tensor) -> Tensor:
        """The weighted total sum_k exp(-s_k) L_k + s_k."""
        s = self.log_vars.clamp(-self.clamp, self.clamp)
        return (torch.exp(-s) * losses + s).sum()

    def combine(self, l_main: Tensor, l_aux: Tensor, extra: Tensor | None) -> Tensor:
        total = self(torch.stack([l_main, l_aux]))
        return total if extra is None else total + extra

    @torch.no_grad()
    def weights(self) -> Tensor:
        """The current weights exp(-s_k)."""
        return torch.exp(-self.log_vars.clamp(-self.clamp, self.clamp))

    def reported_weights(self) -> dict[str, float]:
        main, aux = self.weights().tolist()
        return {"weights/main": main, "weights/aux": aux}


class GradientSimilarity(StaticWeighting):
    """Du et al. 2018 on the shared backbone: main + aux_weight * aux, with the aux side's gradient on
    the ``shared`` parameters scaled by max(0, cos) (weighted) or 1[cos > 0] (gated).

    Every ``every`` steps the cosine between the two sides' backbone gradients is measured (two
    backward passes) and the combined gradient set directly; the weight found is cached in
    ``gs_scale`` and applied by ``GradScale`` on the aux head's input on the steps in between (one
    backward pass each). The heads always get their own full gradients.
    """

    def __init__(self, *, shared: Sequence[nn.Parameter], main_head: Sequence[nn.Parameter],
                 aux_head: Sequence[nn.Parameter], aux_weight: float = 1.0,
                 mode: Literal["weighted", "gated"] = "weighted", every: int = 1) -> None:
        super().__init__(aux_weight=aux_weight)
        if mode not in ("weighted", "gated"):
            raise ValueError(f"`mode` must be 'weighted' or 'gated', got {mode!r}")
        if every < 1 or not shared:
            raise ValueError(f"need every >= 1 and shared parameters to compare; got {every}, {len(shared)}")
        # Plain lists, not registered: these are the model's parameters, which the optimiser already holds.
        self.shared, self.main_head, self.aux_head = list(shared), list(main_head), list(aux_head)
        self.mode, self.every = mode, every
        self.register_buffer("gs_scale", torch.ones(()))  # the aux side's weight on the backbone
        self.steps = 0

    def step_weights(self) -> Tensor | None:
        return None  # its backward sets the backbone's gradients itself

    def aux_input(self, feats: Tensor) -> Tensor:
        return GradScale.apply(feats, self.gs_scale)

    def backward(self, l_main: Tensor, l_aux: Tensor, extra: Tensor | None) -> Tensor:
        if self.steps % self.every:
            return super().backward(l_main, l_aux, extra)
        aux_side = self._aux_side(l_aux, extra)
        self.gs_scale.fill_(1.0)  # GradScale is in the aux side's graph: measure its raw gradient
        main_params, aux_params = self.shared + self.main_head, self.shared + self.aux_head
        g_main = torch.autograd.grad(l_main, main_params, retain_graph=True, allow_unused=True)
        g_aux = torch.autograd.grad(aux_side, aux_params, allow_unused=True)
        g_main = [torch.zeros_like(p) if g is None else g for p, g in zip(main_params, g_main)]
        g_aux = [torch.zeros_like(p) if g is None else g for p, g in zip(aux_params, g_aux)]
        n = len(self.shared)
        combined, _cos, weight = combine_gradients(g_main[:n], g_aux[:n], mode=self.mode)
        for p, g in zip(self.shared + self.main_head + self.aux_head, combined + g_main[n:] + g_aux[n:]):
            p.grad = g
        self.gs_scale.copy_(weight)
        return (l_main + aux_side).detach()

    def after_step(self, heads: Tensor) -> None:
        self.steps += 1

    def reported_weights(self) -> dict[str, float]:
        return {**super().reported_weights(), "weights/gradsim": float(self.gs_scale)}

    def get_extra_state(self) -> Any:
        return {"steps": self.steps}

    def set_extra_state(self, state: Any) -> None:
        self.steps = int(state["steps"])


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
