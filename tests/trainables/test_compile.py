"""`optim.compile`: the compiled step computes what the eager one does, epoch for epoch, within
float tolerance (its speed is benchmarks/bench_trainer.py --compile's business)."""

from __future__ import annotations

import pytest

from trainables.config import Config
from trainables.trainer import LOSS_PARTS, fit

STACK = {"optim.max_epochs": 3, "optim.batch_size": 64, "optim.lr": 3e-3, "optim.patience": 0,
         "main_loss.type": "focal", "aux_loss.type": "asymmetric", "teacher.enabled": True, "teacher.ema_decay": 0.99,
         "distill.weight": 0.5, "consistency.weight": 0.3, "weighting.strategy": "softadapt", "model.dropout": 0.1}


@pytest.mark.slow  # compiling takes tens of seconds on 2 cores
def test_a_compiled_full_stack_trains_like_the_eager_one(easy_binary):
    eager = fit(Config().with_overrides(STACK), easy_binary)
    compiled = fit(Config().with_overrides({**STACK, "optim.compile": True}), easy_binary)
    assert len(compiled.history) == len(eager.history) == 3
    keys = [*LOSS_PARTS, "val/auroc", "val/auprc", "val/ece"]
    for e, c in zip(eager.history, compiled.history, strict=True):
        for k in keys:
            assert c[k] == pytest.approx(e[k], rel=1e-4, abs=1e-5), (e["epoch"], k)
    # and not by accident: dropout drew the same masks, so a model with dropout trained identically
    assert compiled.best["epoch"] == eager.best["epoch"]
