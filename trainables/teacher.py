"""EMA momentum teacher (Tarvainen & Valpola 2017): an average of WEIGHTS, never of logits.

theta_t <- d_t * theta_t + (1 - d_t) * theta after each optimizer step, over the main path
(backbone + main head). Averaging logits across shuffled batches would mix different patients'
outputs and mean nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

__all__ = ["EMATeacher"]


class EMATeacher(nn.Module):
    """An exponential moving average of ``module``'s weights, kept in a frozen copy of it.

    With ``warmup`` the decay at update t (t = 1, 2, ...) is d_t = min(d, 1 - 1/(t + 1)): a running
    mean early on, so that d = 0.9999 (a lag of ~10,000 steps) still gives a teacher that moves in
    a short medical run; without it d_t = d. The teacher starts equal to the student's initial
    weights, and every floating-point parameter and buffer is averaged (integer buffers are copied).

    This is its own class, not ``torch.optim.swa_utils.AveragedModel``, though it averages with
    torch's own EMA function (``get_ema_multi_avg_fn(d_t)``: one multi-tensor lerp by 1 - d_t):
    ``AveragedModel.update_parameters`` re-walks, regroups and re-copies every tensor on each call
    (several times the cost of the update itself on a small MLP) and compares its ``n_averaged``
    buffer on the host twice, a device sync per step on CUDA. ``benchmarks/bench_trainer.py
    --teacher`` measures both.
    """

    def __init__(self, module: nn.Module, *, decay: float, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"`decay` must be in (0, 1), got {decay!r}")
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.module = copy.deepcopy(module).requires_grad_(False).eval()
        # The tensor lists per source module, built once: walking the module tree on every step
        # costs more than the update itself on a small MLP.
        self._lists: tuple[nn.Module, list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]] | None = None
        self._ema: tuple[float, Callable[..., None]] | None = None  # get_ema_multi_avg_fn for one d_t

    def train(self, mode: bool = True) -> EMATeacher:
        # The teacher always predicts in eval mode (no dropout): its logits are targets.
        super().train(False)
        return self

    def current_decay(self) -> float:
        """d_t of the latest update t (``update`` counts t before it averages)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - 1.0 / (self.updates + 1))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One EMA step towards ``module``'s current weights (call after each optimizer step)."""
        if self._lists is None or self._lists[0] is not module:
            src = [*module.parameters(), *module.buffers()]
            dst = [*self.module.parameters(), *self.module.buffers()]
            if [t.shape for t in src] != [t.shape for t in dst]:
                raise ValueError("the teacher must be updated from the module it was built from")
            floats = [(d, s_) for d, s_ in zip(dst, src) if d.is_floating_point()]
            others = [(d, s_) for d, s_ in zip(dst, src) if not d.is_floating_point()]
            self._lists = (module, [d for d, _ in floats], [s_ for _, s_ in floats], others)
        self.updates += 1
        decay = self.current_decay()
        if self._ema is None or self._ema[0] != decay:  # d_t changes only during warm-up
            self._ema = (decay, get_ema_multi_avg_fn(decay))
        _, averaged, current, others = self._lists
        if averaged:
            self._ema[1](averaged, current, None)  # averaged <- d_t averaged + (1 - d_t) current
        for avg, cur in others:
            avg.copy_(cur)

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.module(*args, **kwargs)

    def get_extra_state(self) -> Any:
        return {"updates": self.updates}

    def set_extra_state(self, state: Any) -> None:
        self.updates = int(state["updates"])
