"""The EMA teacher against a hand-computed EMA of the weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.teacher import EMATeacher


def _run(decay, warmup, steps=7):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    teacher = EMATeacher(student, decay=decay, warmup=warmup)
    manual = {k: v.detach().clone().double() for k, v in student.state_dict().items()}
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    for t in range(1, steps + 1):
        opt.zero_grad()
        student(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        teacher.update(student)
        d = min(decay, 1 - 1 / (t + 1)) if warmup else decay
        for k, v in student.state_dict().items():
            manual[k] = d * manual[k] + (1 - d) * v.double()
    return teacher, manual, student


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.999])
def test_ema_teacher_equals_hand_computed_ema(decay):
    teacher, manual, student = _run(decay, warmup=False)
    for k, v in teacher.averaged.module.state_dict().items():
        torch.testing.assert_close(v.double(), manual[k], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(teacher.averaged.module[0].weight, student[0].weight)


def test_ema_teacher_warmup_follows_min_d_one_minus_inverse_step():
    teacher, manual, _ = _run(0.9999, warmup=True)
    for k, v in teacher.averaged.module.state_dict().items():
        torch.testing.assert_close(v.double(), manual[k], rtol=1e-5, atol=1e-6)
    assert teacher.current_decay() == pytest.approx(1 - 1 / 8)


def test_teacher_predicts_in_eval_mode_without_gradients():
    student = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    teacher = EMATeacher(student, decay=0.9)
    teacher.train()
    x = torch.randn(16, 4)
    a, b = teacher(x), teacher(x)
    assert torch.equal(a, b) and not a.requires_grad


def test_decay_outside_open_unit_interval_is_refused():
    with pytest.raises(ValueError, match="`decay`"):
        EMATeacher(nn.Linear(2, 1), decay=1.0)
