"""The trainer learns, reports every part, resumes bit-identically and ends diverged runs cleanly."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from trainables.config import Config
from trainables.data import PreparedData, Split
from trainables.errors import UserError
from trainables.metrics import Targets
from trainables.model import read_checkpoint
from trainables.trainer import CHECKPOINT_FILE, evaluate_holdout, fit
from trainables.vocab import Status

FAST = {"optim.max_epochs": 5, "optim.batch_size": 64, "optim.lr": 3e-3, "consistency.weight": 0.3,
        "teacher.ema_decay": 0.99}
AUX = [{"aux_loss.type": "asymmetric"}, {"aux_loss.type": "label_smooth"}, {"aux_loss.type": "bce"},
       {"aux_loss.type": "calibration", "aux_loss.kind": "mdca"},
       {"aux_loss.type": "calibration", "aux_loss.kind": "brier"},
       {"aux_loss.type": "none", "distill.weight": 0, "consistency.weight": 0}]
WEIGHTING = [{"weighting.strategy": "static"}, {"weighting.strategy": "softadapt"},
             {"weighting.strategy": "uncertainty"},
             {"weighting.strategy": "gradsim", "weighting.gradsim_mode": "weighted"},
             {"weighting.strategy": "gradsim", "weighting.gradsim_mode": "gated", "weighting.gradsim_every": 3}]


@pytest.mark.parametrize("task", ["easy_binary", "easy_multilabel"])
@pytest.mark.parametrize("overrides", AUX + WEIGHTING, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_trainer_learns_an_easy_task_within_a_few_epochs(task, overrides, request):
    data = request.getfixturevalue(task)
    result = fit(Config().with_overrides({**FAST, **overrides}), data)
    assert result.status in (Status.COMPLETED.value, Status.EARLY_STOPPED.value)
    assert max(h["val/auroc"] for h in result.history) > 0.85
    assert result.best["val/score"] == max(h["val/score"] for h in result.history)


def test_report_carries_every_loss_part_weight_and_metric(easy_binary):
    reports = []
    cfg = Config().with_overrides({**FAST, "optim.max_epochs": 2, "weighting.strategy": "gradsim"})
    fit(cfg, easy_binary, report=reports.append, targets=Targets(auroc=0.5, auprc=0.99))
    keys = set(reports[-1])
    assert {"epoch", "train/loss", "train/main", "train/aux", "train/distill", "train/consistency",
            "consistency/mask_rate", "weights/main", "weights/aux", "weights/distill", "weights/consistency",
            "weights/gradsim", "val/auroc", "val/auprc", "val/ece", "val/score", "val_teacher/auroc",
            "target/auroc_met", "target/auprc_met", "target/all_met", "target/epoch_reached", "status"} <= keys
    assert [r["epoch"] for r in reports] == [1, 2]
    assert reports[0]["target/auroc_met"] == 1 and reports[-1]["target/auprc_met"] == 0
    assert reports[-1]["target/epoch_reached"] == -1
    assert reports[-1]["weights/distill"] == 0.5 and reports[-1]["weights/consistency"] == pytest.approx(0.3)
    assert 0 <= reports[-1]["consistency/mask_rate"] <= 1


def test_baseline_reports_no_aux_parts(easy_binary):
    reports = []
    cfg = Config().with_overrides({**FAST, "optim.max_epochs": 1, "main_loss.type": "bce", "aux_loss.type": "none",
                                   "teacher.enabled": False, "distill.weight": 0, "consistency.weight": 0})
    fit(cfg, easy_binary, report=reports.append)
    assert not any(k.startswith(("train/aux", "train/distill", "weights/", "val_teacher/")) for k in reports[0])
    assert reports[0]["train/loss"] == reports[0]["train/main"]


@pytest.mark.parametrize("strategy", ["softadapt", "uncertainty", "gradsim"])
def test_resume_from_epoch_3_of_6_is_bit_identical(easy_binary, tmp_path, strategy):
    cfg = Config().with_overrides({**FAST, "optim.max_epochs": 6, "optim.patience": 0,
                                   "weighting.strategy": strategy, "weighting.gradsim_every": 4,
                                   "weighting.softadapt_every": 3, "model.dropout": 0.2})
    saved = tmp_path / "epoch3"

    def keep_epoch3(metrics, checkpoint=None):
        if metrics["epoch"] == 3:
            shutil.copytree(checkpoint, saved)

    full = fit(cfg, easy_binary, report=keep_epoch3, checkpoint_dir=tmp_path / "run",
               targets=Targets(auroc=0.9))
    seen = []
    resumed = fit(cfg, easy_binary, resume_from=saved, report=lambda m, **_: seen.append(m["epoch"]),
                  targets=Targets(auroc=0.9))
    assert seen == [4, 5, 6]
    assert resumed.history == full.history  # every metric of every epoch, exactly
    assert resumed.best_epoch == full.best_epoch and resumed.targets == full.targets
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "run" / CHECKPOINT_FILE).is_file()


def test_resume_refuses_a_checkpoint_of_another_config(easy_binary, tmp_path):
    cfg = Config().with_overrides({**FAST, "optim.max_epochs": 1})
    fit(cfg, easy_binary, checkpoint_dir=tmp_path)
    with pytest.raises(UserError, match="different config"):
        fit(cfg.with_overrides({"main_loss.gamma": 1.0}), easy_binary, resume_from=tmp_path)


def test_non_finite_loss_ends_the_run_as_diverged(easy_binary):
    x = easy_binary.train.x.clone()
    x[5, 0] = math.nan
    data = PreparedData(train=Split(x, easy_binary.train.y), val=easy_binary.val, test=easy_binary.test,
                        feature_names=easy_binary.feature_names, label_names=easy_binary.label_names,
                        preprocessor=None, source="nan", fingerprint="x", split_fingerprint="y")
    reports = []
    result = fit(Config().with_overrides(FAST), data, report=reports.append)
    assert result.status == "diverged" and "non-finite train/" in result.reason and "epoch 1" in result.reason
    assert reports[-1]["status"] == Status.DIVERGED.value and math.isnan(reports[-1]["val/score"])
    assert result.model is None and len(reports) == 1 and result.epochs == 0
    normal = fit(Config().with_overrides({**FAST, "optim.max_epochs": 1}), easy_binary).history[0]
    # the same report as any epoch (validation not evaluated, so NaN), plus the reason
    assert set(reports[-1]) - set(normal) == {"reason"}
    assert {k for k in set(normal) - set(reports[-1]) if not k.startswith("best/val/")} == {
        f"val_teacher/{k}" for k in ("auroc", "auprc", "ece", "score", "score_ece")}


def test_early_stopping_on_a_task_without_signal(easy_binary):
    g = torch.Generator().manual_seed(0)
    noise = lambda s: Split(torch.randn(s.x.shape, generator=g), s.y)  # noqa: E731
    data = PreparedData(train=noise(easy_binary.train), val=noise(easy_binary.val), test=noise(easy_binary.test),
                        feature_names=easy_binary.feature_names, label_names=easy_binary.label_names,
                        preprocessor=None, source="noise", fingerprint="n", split_fingerprint="n")
    cfg = Config().with_overrides({**FAST, "optim.max_epochs": 60, "optim.patience": 2})
    result = fit(cfg, data)
    assert result.status == Status.EARLY_STOPPED.value == "early-stopped" and result.epochs < 60
    assert result.epochs - result.best_epoch == 2
    assert result.history[-1]["status"] == Status.EARLY_STOPPED.value
    assert "did not improve for 2 epochs" in result.reason


def test_resuming_a_run_that_stopped_early_trains_no_further(easy_binary, tmp_path):
    g = torch.Generator().manual_seed(0)
    noise = lambda s: Split(torch.randn(s.x.shape, generator=g), s.y)  # noqa: E731
    data = PreparedData(train=noise(easy_binary.train), val=noise(easy_binary.val),
                        test=noise(easy_binary.test), feature_names=easy_binary.feature_names,
                        label_names=easy_binary.label_names, preprocessor=None, source="noise",
                        fingerprint="n", split_fingerprint="n")
    cfg = Config().with_overrides({**FAST, "optim.max_epochs": 60, "optim.patience": 2})
    first = fit(cfg, data, checkpoint_dir=tmp_path)
    seen = []
    again = fit(cfg, data, resume_from=tmp_path, report=seen.append)
    assert first.status == again.status == Status.EARLY_STOPPED.value and seen == []
    assert again.history == first.history and again.reason == first.reason


def test_checkpoint_keeps_the_keys_the_tuner_reads(easy_binary, tmp_path):
    cfg = Config().with_overrides({**FAST, "optim.max_epochs": 2})
    result = fit(cfg, easy_binary, checkpoint_dir=tmp_path)
    ckpt = read_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert Config.from_dict(ckpt["config"]) == cfg
    assert set(ckpt["best_model"]) == set(ckpt["model"]) == set(result.model.state_dict())
    for k, v in result.model.state_dict().items():  # the result keeps the best epoch's weights
        assert torch.equal(v, ckpt["best_model"][k])


def test_frozen_pretrained_backbone_stays_fixed(easy_binary):
    first = fit(Config().with_overrides({**FAST, "optim.max_epochs": 2}), easy_binary)
    state = first.model.state_dict()
    cfg = Config().with_overrides({**FAST, "optim.max_epochs": 2, "model.freeze_backbone": True,
                                   "weighting.strategy": "gradsim"})
    second = fit(cfg, easy_binary, pretrained=state)
    for k, v in second.model.backbone.state_dict().items():
        assert torch.equal(v, state[f"backbone.{k}"])
    assert max(h["val/auroc"] for h in second.history) > 0.85


def test_holdout_evaluation_reports_test_and_temperature(easy_binary):
    result = fit(Config().with_overrides({**FAST, "optim.max_epochs": 2}), easy_binary)
    out = evaluate_holdout(result.model, easy_binary)
    assert {"val/auroc", "test/auroc", "test/auprc", "test/ece", "test/ece_scaled", "temperature"} <= set(out)
    assert out["val/score"] == pytest.approx(result.best["val/score"], abs=1e-6)


def test_the_optimizer_computes_torchs_adamw_without_importing_the_compiler():
    """A new worker process's first epoch imported torch._dynamo through torch's optimiser wrappers
    (1.5 s of 1.7 s): losstune's AdamW skips that and must still compute exactly what
    torch.optim.AdamW computes, step for step. In a fresh process, so that nothing
    imported the compiler before."""
    import subprocess
    import sys

    code = r"""
import sys, torch
from trainables.config import Config
from trainables.trainer import make_optimizer
from search_spaces import load_scenario
cfg = load_scenario("rare_disease_detection").config
def train(make):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = make(list(net.parameters()))
    x, y = torch.randn(64, 6), torch.rand(64, 1)
    for _ in range(5):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()], opt.state_dict()
mine, state = train(lambda ps: make_optimizer(ps, cfg))
assert "torch._dynamo" not in sys.modules, "the compiler was imported"
assert type(make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)).__name__ == "_AdamW"
ref, ref_state = train(lambda ps: torch.optim.AdamW(ps, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                                      fused=True))
assert "torch._dynamo" in sys.modules  # torch's own AdamW does import it: the check above can fail
assert all(torch.equal(a, b) for a, b in zip(mine, ref))
assert all(torch.equal(state["state"][i][k], ref_state["state"][i][k])
           for i in ref_state["state"] for k in ("step", "exp_avg", "exp_avg_sq"))
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# --------------------------------------------------------------------------- the fused losses
# Where every loss has ``loss_and_grad`` and the weights take no gradient, a step computes the losses'
# gradients itself (_FusedLosses). It must step exactly as autograd through the losses does.
FUSED = [{}, {"main_loss.type": "bce"}, {"main_loss.alpha": None, "main_loss.gamma": 0.0},
         {"main_loss.alpha": "auto"}, {"aux_loss.type": "bce"},
         {"aux_loss.gamma_pos": 1.0, "aux_loss.clip": 0.0},
         {"aux_loss.gamma_pos": 2.0, "aux_loss.detach_focusing": True},
         {"distill.weight": 0.0}, {"consistency.weight": 0.0},
         {"teacher.enabled": False, "distill.weight": 0.0, "consistency.weight": 0.0},
         {"weighting.strategy": "static", "weighting.aux_weight": 0.4},
         {"weighting.strategy": "softadapt", "weighting.softadapt_every": 1, "weighting.softadapt_window": 2}]


def _twin_steps(cfg: Config, data):
    from trainables.model import DualHeadModel
    from trainables.trainer import TrainStep

    pos, neg = data.label_counts()
    steps = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = DualHeadModel.from_config(cfg.model, in_features=data.n_features, n_labels=data.n_labels,
                                          aux_head=cfg.aux_loss.type != "none")
        with torch.no_grad():  # confident heads, so that the consistency mask is not empty
            for head in (model.main_head, model.aux_head):
                head.weight.mul_(8)
        steps.append(TrainStep.from_config(cfg, model, pos=pos, neg=neg, fused_losses=fused))
    return steps


@pytest.mark.parametrize("task", ["easy_binary", "easy_multilabel"])
@pytest.mark.parametrize("overrides", FUSED, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_fused_losses_step_exactly_as_autograd_through_the_losses(task, overrides, request):
    data = request.getfixturevalue(task)
    cfg = Config().with_overrides({**FAST, "consistency.threshold": 0.6, "distill.weight": 0.5, **overrides})
    fused, autograd = _twin_steps(cfg, data)
    assert fused.fused and not autograd.fused
    x, y = data.train.x, data.train.y
    seen_consistency = False
    for i in range(4):
        batch = slice(64 * i, 64 * (i + 1))
        parts = []
        for step in (fused, autograd):
            torch.manual_seed(100 + i)  # the same dropout masks
            parts.append(step(x[batch], y[batch]))
        torch.testing.assert_close(parts[0], parts[1], rtol=1e-5, atol=1e-7)
        for a, b in zip(fused.model.parameters(), autograd.model.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        seen_consistency |= bool(parts[0][4] > 0)
    assert seen_consistency == (cfg.consistency.weight > 0)


@pytest.mark.parametrize("overrides", [{"weighting.strategy": "uncertainty"}, {"weighting.strategy": "gradsim"},
                                       {"aux_loss.type": "label_smooth"}, {"aux_loss.type": "calibration"},
                                       {"aux_loss.type": "none", "distill.weight": 0, "consistency.weight": 0},
                                       {"optim.compile": True}],
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_steps_the_fused_losses_cannot_take_go_through_autograd(easy_binary, overrides):
    # learnable weights, gradient surgery, a loss without loss_and_grad, one head, the compiler's own fusion
    from trainables.model import DualHeadModel
    from trainables.trainer import TrainStep

    cfg = Config().with_overrides({**FAST, **overrides})
    model = DualHeadModel.from_config(cfg.model, in_features=easy_binary.n_features, n_labels=1,
                                      aux_head=cfg.aux_loss.type != "none")
    pos, neg = easy_binary.label_counts()
    assert not TrainStep.from_config(cfg, model, pos=pos, neg=neg).fused
