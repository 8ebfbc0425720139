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


def test_an_image_backbones_batchnorm_statistics_are_averaged_like_its_weights():
    """METHODS.md, EMA teacher: an image backbone's BatchNorm running mean and variance are averaged
    with the same d_t as the weights, and the count of batches is copied: a hand-computed EMA over the
    student's statistics after each step equals the teacher's."""
    from trainables.config import Config
    from trainables.model import DualHeadModel
    from trainables.trainer import TrainStep

    torch.manual_seed(0)
    cfg = Config().with_overrides({"model.backbone": "cnn", "teacher.ema_decay": 0.9, "teacher.warmup": True,
                                   "augment.enabled": False})
    model = DualHeadModel.from_config(cfg.model, input_shape=(1, 16, 16), n_labels=1, aux_head=True)
    step = TrainStep.from_config(cfg, model, pos=torch.tensor([8.0]), neg=torch.tensor([24.0]))
    bn = next(m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    name = next(n for n, m in model.main_path().named_modules() if m is bn)
    expected_mean, expected_var = bn.running_mean.clone(), bn.running_var.clone()
    for t in range(1, 6):
        x = torch.randint(0, 256, (32, 1, 16, 16), dtype=torch.uint8)
        y = (torch.rand(32, 1) < 0.25).float()
        step(x, y)
        d = min(0.9, 1 - 1 / (t + 1))
        expected_mean = d * expected_mean + (1 - d) * bn.running_mean
        expected_var = d * expected_var + (1 - d) * bn.running_var
    teacher_bn = dict(step.teacher.module.named_modules())[name]
    assert torch.allclose(teacher_bn.running_mean, expected_mean, atol=1e-6)
    assert torch.allclose(teacher_bn.running_var, expected_var, atol=1e-6)
    assert int(teacher_bn.num_batches_tracked) == int(bn.num_batches_tracked) == 5
    assert not torch.allclose(teacher_bn.running_mean, bn.running_mean)  # it lags the student
