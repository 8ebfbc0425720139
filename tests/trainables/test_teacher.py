"""The EMA teacher against a hand-computed EMA of the weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

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
    for k, v in teacher.module.state_dict().items():
        torch.testing.assert_close(v.double(), manual[k], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(teacher.module[0].weight, student[0].weight)


def test_ema_teacher_warmup_follows_min_d_one_minus_inverse_step():
    teacher, manual, _ = _run(0.9999, warmup=True)
    for k, v in teacher.module.state_dict().items():
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


def test_same_arithmetic_as_averaged_model_with_torchs_ema_function():
    """Without warm-up, bit for bit what METHODS.md's AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(d))
    computes when it averages from the first update on."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    teacher = EMATeacher(student, decay=0.9, warmup=False)
    reference = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    reference.n_averaged.fill_(1)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        student(torch.randn(16, 4)).pow(2).mean().backward()  # train mode: BatchNorm's buffers move too
        opt.step()
        teacher.update(student)
        reference.update_parameters(student)
    for (k, a), b in zip(teacher.module.state_dict().items(), reference.module.state_dict().values()):
        if a.is_floating_point():
            assert torch.equal(a, b), k
    # an integer buffer (num_batches_tracked) is copied, not averaged
    assert int(teacher.module[1].num_batches_tracked) == 5


def test_teacher_state_round_trips_with_its_update_count():
    student = nn.Linear(3, 1)
    teacher = EMATeacher(student, decay=0.99)
    for _ in range(3):
        teacher.update(student)
    other = EMATeacher(student, decay=0.99)
    other.load_state_dict(teacher.state_dict())
    assert other.updates == 3 and other.current_decay() == teacher.current_decay() == pytest.approx(0.75)
