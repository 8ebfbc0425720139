"""EMA momentum teacher (Tarvainen & Valpola 2017): an average of WEIGHTS, never of logits.

theta_t <- d * theta_t + (1 - d) * theta after each optimizer step, over the main path (backbone +
main head), with torch's own ``AveragedModel``. Averaging logits across shuffled batches would mix
different patients' outputs and mean nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["EMATeacher"]


class EMATeacher(nn.Module):
    """Holds an ``AveragedModel`` of ``module`` and updates it with decay ``d``.

    With ``warmup`` the decay at update t (t = 1, 2, ...) is min(d, 1 - 1/(t + 1)): a running
    mean early on, so that d = 0.9999 (a lag of ~10,000 steps) still gives a teacher that moves in
    a short medical run. The teacher starts equal to the student's initial weights.
    """

    def __init__(self, module: nn.Module, *, decay: float, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"`decay` must be in (0, 1), got {decay!r}")
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.averaged = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        # n_averaged = 1: the first update averages with the initial weights instead of copying.
        self.averaged.n_averaged.fill_(1)
        self.averaged.requires_grad_(False)
        self.averaged.eval()
        self._current = decay
        self._cache: tuple | None = None

    def train(self, mode: bool = True) -> EMATeacher:
        # The teacher always predicts in eval mode (no dropout): its logits are targets.
        super().train(False)
        return self

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - 1.0 / (self.updates + 1))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One EMA step towards ``module``'s current weights (call after each optimizer step).

        The arithmetic is AveragedModel's own (``_foreach_lerp_`` of every float parameter and
        buffer). ``update_parameters`` regroups the tensors by device and dtype and copies each one
        on every call (65 us per step vs 8 us here on a small MLP), so the tensor lists are built
        once per source module and reused.
        """
        self.updates += 1
        self._current = self.current_decay()
        if self._cache is None or self._cache[0] is not module:
            src = [*module.parameters(), *module.buffers()]
            dst = [*self.averaged.module.parameters(), *self.averaged.module.buffers()]
            if [t.shape for t in src] != [t.shape for t in dst]:
                raise ValueError("the teacher must be updated from the module it was built from")
            floats = [(d, s_) for d, s_ in zip(dst, src) if d.is_floating_point()]
            others = [(d, s_) for d, s_ in zip(dst, src) if not d.is_floating_point()]
            self._cache = (module, [d for d, _ in floats], [s_ for _, s_ in floats], others)
        _, dst, src, others = self._cache
        torch._foreach_lerp_(dst, src, 1.0 - self._current)
        for d, s_ in others:
            d.copy_(s_)
        self.averaged.n_averaged += 1

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.averaged.module(*args, **kwargs)

    def get_extra_state(self) -> Any:
        return {"updates": self.updates}

    def set_extra_state(self, state: Any) -> None:
        self.updates = int(state["updates"])
