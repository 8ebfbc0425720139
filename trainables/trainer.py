"""fit(config, data, report=...): the one training loop, framework-free.

    result = fit(Config(), prepare_data("synthetic:rare"), report=print)

Reads top to bottom: build the model, teacher, losses, weighting and optimiser; then per epoch
train on index slices of tensors that stay on the device, evaluate on validation (main head and
teacher), track targets and early stopping, checkpoint, report. Ray never appears here; the Tune
wrapper passes ``ray.tune.report`` as ``report``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainables.calibration import temperature_report
from trainables.config import Config
from trainables.data import PreparedData
from trainables.errors import UserError
from trainables.losses import (
    AsymmetricLoss,
    BCELoss,
    CalibrationLoss,
    FocalLoss,
    SmoothedBCE,
    binary_distillation_kl,
    consistency_loss,
    focal_alpha,
)
from trainables.metrics import Targets, TargetTracker, classification_metrics
from trainables.model import DualHeadModel, MainPath, backbone_state, load_backbone, read_checkpoint
from trainables.teacher import EMATeacher
from trainables.weighting import GradScale, SoftAdaptWeighter, UncertaintyWeighting, combine_gradients

__all__ = ["fit", "FitResult", "TrainStep", "make_optimizer", "LOSS_PARTS", "predict", "evaluate_holdout", "resolve_device", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "checkpoint.pt"
_CHECKPOINT_FORMAT = "losstune-checkpoint-v1"
# What one training step returns, in this order (a single stacked tensor: one add per step to
# accumulate, one host sync per epoch to read).
LOSS_PARTS = ("train/loss", "train/main", "train/aux", "train/distill", "train/consistency", "consistency/mask_rate")
Report = Callable[..., None]
SELECTABLE = ("val/score", "val/auroc", "val/auprc")


@dataclass
class FitResult:
    status: str  # completed | early_stopped | diverged
    reason: str
    epochs: int  # epochs run, resumed ones included
    best_epoch: int  # 0 when no epoch finished
    best: dict[str, Any]  # the report of the best epoch (by the selected metric)
    history: list[dict[str, Any]]
    targets: dict[str, Any]  # target/* flags at the end
    model: DualHeadModel | None = field(repr=False, default=None)  # best weights, on CPU


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """auto, cpu, cuda or cuda:N; anything else is one line that lists what this machine has."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    allowed = "auto, cpu" + (f", cuda, cuda:0 .. cuda:{n_gpus - 1}" if n_gpus else " (no CUDA GPU is visible here)")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device '{device}' is not a device losstune can train on; allowed: {allowed}")
    if dev.type == "cuda" and not n_gpus:
        raise UserError(f"--device '{device}' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= n_gpus:
        raise UserError(f"--device '{device}': this machine has {n_gpus} CUDA GPU(s); allowed: {allowed}")
    return dev


def build_main_loss(cfg: Config, pos: Tensor, neg: Tensor) -> nn.Module:
    loss = cfg.main_loss
    if loss.type == "bce":
        return BCELoss()
    return FocalLoss(alpha=focal_alpha(loss.alpha, pos, neg, cb_beta=loss.cb_beta), gamma=loss.gamma)


def build_aux_loss(cfg: Config) -> nn.Module | None:
    a = cfg.aux_loss
    if a.type == "asymmetric":
        return AsymmetricLoss(gamma_neg=a.gamma_neg, gamma_pos=a.gamma_pos, clip=a.clip, eps=a.eps,
                              detach_focusing=a.detach_focusing)
    if a.type == "label_smooth":
        return SmoothedBCE(smoothing=a.smoothing)
    if a.type == "calibration":
        return CalibrationLoss(kind=a.kind, beta=a.beta)
    if a.type == "bce":
        return BCELoss()
    return None


def build_weighter(cfg: Config) -> nn.Module | None:
    w = cfg.weighting
    if cfg.aux_loss.type == "none":
        return None
    if w.strategy == "softadapt":
        return SoftAdaptWeighter(2, beta=w.softadapt_beta, variant=w.softadapt_variant, every=w.softadapt_every,
                                 window=w.softadapt_window)
    if w.strategy == "uncertainty":
        return UncertaintyWeighting(2, clamp=w.uncertainty_clamp)
    return None


def make_optimizer(params: list[nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    """AdamW, fused where torch has the kernel (CPU and CUDA float32): one kernel instead of a
    Python loop over parameters, ~5x less optimiser time per step on a small MLP."""
    try:
        return torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


class TrainStep:
    """One optimisation step; returns the loss parts as one stacked, detached tensor (``LOSS_PARTS``).

    Per-step work is kept to tensor ops on the device: no ``.item()``, no host sync. The weights in
    use are read once per epoch with ``current_weights()``.
    """

    def __init__(self, cfg: Config, model: DualHeadModel, teacher: EMATeacher | None, main_loss: nn.Module,
                 aux_loss: nn.Module | None, weighter: nn.Module | None, optimizer: torch.optim.Optimizer,
                 device: torch.device) -> None:
        self.model, self.teacher, self.main_loss, self.aux_loss = model, teacher, main_loss, aux_loss
        self.weighter, self.optimizer = weighter, optimizer
        self.main_path = model.main_path()
        self.strategy = cfg.weighting.strategy if model.aux_head is not None else "static"
        self.aux_weight = cfg.weighting.aux_weight
        self.distill_w, self.temperature = cfg.distill.weight, cfg.distill.temperature
        self.cons_w, self.threshold = cfg.consistency.weight, cfg.consistency.threshold
        self.gradsim_mode, self.gradsim_every = cfg.weighting.gradsim_mode, cfg.weighting.gradsim_every
        self.shared = [p for p in model.backbone.parameters() if p.requires_grad]
        if self.strategy == "gradsim" and not self.shared:
            self.strategy = "static"  # a frozen backbone shares nothing to compare gradients on
        self.zero = torch.zeros((), device=device)
        self.gs_scale = torch.ones((), device=device)  # aux→backbone gradient weight (gradsim)
        self.steps = 0

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        m, z = self.model, self.zero
        feats = m.backbone(x)
        main_logits = m.main_head(feats)
        l_main = self.main_loss(main_logits, y)
        if m.aux_head is None:
            self._update(l_main)
            with torch.no_grad():
                return torch.stack([l_main, l_main, z, z, z, z])

        aux_logits = m.aux_head(GradScale.apply(feats, self.gs_scale) if self.strategy == "gradsim" else feats)
        l_aux = self.aux_loss(aux_logits, y)
        # Distillation and consistency act on the aux head with their configured weights.
        l_distill = l_cons = mask_rate = z
        extra: Tensor | None = None
        if self.distill_w > 0:
            l_distill = binary_distillation_kl(aux_logits, self.teacher(x), temperature=self.temperature)
            extra = self.distill_w * l_distill
        if self.cons_w > 0:
            l_cons, mask_rate = consistency_loss(main_logits, aux_logits, threshold=self.threshold)
            extra = self.cons_w * l_cons if extra is None else extra + self.cons_w * l_cons

        heads = None
        if self.strategy in ("static", "gradsim"):  # main + aux_weight * aux
            aux_part = l_aux if self.aux_weight == 1 else self.aux_weight * l_aux
            aux_part = aux_part if extra is None else aux_part + extra
            total = l_main + aux_part
            if self.strategy == "gradsim" and self.steps % self.gradsim_every == 0:
                self.optimizer.zero_grad(set_to_none=True)
                self._gradsim_backward(l_main, aux_part)
                self._finish_step(heads)
                total = total.detach()
            else:
                self._update(total)
        else:  # softadapt / uncertainty weigh the two heads' losses
            heads = torch.stack([l_main, l_aux])
            head_total = self.weighter(heads) if self.strategy == "uncertainty" else (self.weighter.weights * heads).sum()
            total = head_total if extra is None else head_total + extra
            self._update(total, heads)
        with torch.no_grad():
            return torch.stack([total, l_main, l_aux, l_distill, l_cons, mask_rate])

    def _update(self, total: Tensor, heads: Tensor | None = None) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self._finish_step(heads)

    def _finish_step(self, heads: Tensor | None) -> None:
        self.optimizer.step()
        if isinstance(self.weighter, SoftAdaptWeighter):
            self.weighter.update(heads.detach())
        if self.teacher is not None:
            self.teacher.update(self.main_path)
        self.steps += 1

    @torch.no_grad()
    def current_weights(self) -> dict[str, float]:
        """The weights in use now, for the epoch report (one host sync)."""
        if self.model.aux_head is None:
            return {}
        if self.strategy == "uncertainty":
            w = self.weighter.weights().tolist()
        elif self.strategy == "softadapt":
            w = self.weighter.weights.tolist()
        else:
            w = [1.0, self.aux_weight]
        out = {"weights/main": w[0], "weights/aux": w[1]}
        if self.distill_w > 0:
            out["weights/distill"] = self.distill_w
        if self.cons_w > 0:
            out["weights/consistency"] = self.cons_w
        if self.strategy == "gradsim":
            out["weights/gradsim"] = float(self.gs_scale)
        return out

    def _gradsim_backward(self, l_main: Tensor, aux_part: Tensor) -> None:
        """Per-loss gradients on the backbone (two backward passes), combined by cosine similarity.

        The heads keep their own full gradients; the weight found here is cached in ``gs_scale``
        and applied by ``GradScale`` on the steps in between (one backward pass each).
        """
        m = self.model
        self.gs_scale.fill_(1.0)
        main_params = self.shared + list(m.main_head.parameters())
        aux_params = self.shared + list(m.aux_head.parameters())
        g_main = torch.autograd.grad(l_main, main_params, retain_graph=True, allow_unused=True)
        g_aux = torch.autograd.grad(aux_part, aux_params, allow_unused=True)
        g_main = [torch.zeros_like(p) if g is None else g for p, g in zip(main_params, g_main)]
        g_aux = [torch.zeros_like(p) if g is None else g for p, g in zip(aux_params, g_aux)]
        n = len(self.shared)
        combined, _cos, weight = combine_gradients(g_main[:n], g_aux[:n], mode=self.gradsim_mode)
        for p, g in zip(self.shared + main_params[n:] + aux_params[n:], combined + g_main[n:] + g_aux[n:]):
            p.grad = g
        self.gs_scale.copy_(weight)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "gs_scale": self.gs_scale.detach().cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.gs_scale.copy_(state["gs_scale"])


@torch.inference_mode()
def predict(module: nn.Module, x: Tensor, *, chunk: int = 65536) -> Tensor:
    """Logits [N, K] in eval mode, in chunks (validation sets can be large)."""
    was_training = module.training
    module.eval()
    out = torch.cat([module(x[i:i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else x.new_zeros((0, 1))
    module.train(was_training)
    return out.float()


def fit(config: Config, data: PreparedData, *, report: Report | None = None,
        checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None,
        targets: Targets | None = None, device: str | torch.device = "auto",
        pretrained: str | Path | Mapping[str, Tensor] | None = None, select: str = "val/score") -> FitResult:
    """Train ``config`` on ``data``; ``report(metrics[, checkpoint=dir])`` after every epoch.

    ``select`` (val/score, val/auroc or val/auprc) picks the best epoch, whose weights the result
    keeps, and drives early stopping; every report carries ``objective``, its best value so far.

    With ``checkpoint_dir`` each epoch writes ``checkpoint.pt`` there (model, teacher, optimiser,
    weighting, RNG and loop state); ``resume_from`` (that file or its folder) continues a run so that
    it ends with exactly the metrics of an uninterrupted one on CPU.
    """
    if select not in SELECTABLE:
        raise UserError(f"the metric to select on must be one of {', '.join(SELECTABLE)}, got '{select}'")
    cfg = config
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    train_x, train_y = data.train.x.to(dev), data.train.y.to(dev)
    val_x, val_y = data.val.x.to(dev), data.val.y

    # ---- model, teacher, losses, weighting, optimiser
    model = DualHeadModel.from_config(cfg.model, in_features=data.n_features, n_labels=data.n_labels,
                                      aux_head=cfg.aux_loss.type != "none").to(dev)
    if pretrained is not None:
        source = f"pretrained checkpoint '{pretrained}'" if isinstance(pretrained, (str, Path)) else "pretrained weights"
        state = read_checkpoint(pretrained) if isinstance(pretrained, (str, Path)) else pretrained
        load_backbone(model.backbone, backbone_state(state, source=source), source=source)
    if cfg.model.freeze_backbone:
        model.backbone.requires_grad_(False)
    main_path: MainPath = model.main_path()
    teacher = (EMATeacher(main_path, decay=cfg.teacher.ema_decay, warmup=cfg.teacher.warmup).to(dev)
               if cfg.teacher.enabled else None)
    pos, neg = data.label_counts()
    main_loss = build_main_loss(cfg, pos, neg).to(dev)
    weighter = build_weighter(cfg)
    weighter = weighter.to(dev) if weighter is not None else None
    params = [p for p in model.parameters() if p.requires_grad] + (list(weighter.parameters()) if weighter else [])
    optimizer = make_optimizer(params, cfg)
    step = TrainStep(cfg, model, teacher, main_loss, build_aux_loss(cfg), weighter, optimizer, dev)
    tracker = TargetTracker(targets or Targets())
    loop: dict[str, Any] = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad_epochs": 0, "history": []}
    best_state: dict[str, Tensor] | None = None

    if resume_from is not None:
        ckpt = _load_checkpoint(resume_from, cfg, data)
        model.load_state_dict(ckpt["model"])
        if teacher is not None:
            teacher.load_state_dict(ckpt["teacher"])
        if weighter is not None:
            weighter.load_state_dict(ckpt["weighter"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step.load_state_dict(ckpt["step"])
        tracker.load_state_dict(ckpt["tracker"])
        loop, best_state = dict(ckpt["loop"]), ckpt["best_model"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        shuffle.set_state(ckpt["rng"]["shuffle"])
        if dev.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], dev)

    status, reason = "completed", ""
    n, bs = len(train_x), cfg.optim.batch_size
    for epoch in range(loop["epoch"] + 1, cfg.optim.max_epochs + 1):
        # ---- train: one pass over a fresh permutation, batches are index slices
        model.train()
        order = torch.randperm(n, generator=shuffle).to(dev)
        sums = torch.zeros(len(LOSS_PARTS), device=dev)
        n_steps = 0
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            sums += step(train_x[idx], train_y[idx])
            n_steps += 1
        means = dict(zip(LOSS_PARTS, (sums / max(n_steps, 1)).tolist()))
        metrics: dict[str, Any] = {"epoch": epoch, **_present(means, cfg), **step.current_weights()}

        bad = [k for k in ("train/loss", "train/main", "train/aux", "train/distill", "train/consistency")
               if not math.isfinite(means[k])]
        if bad:
            status = "diverged"
            reason = (f"non-finite {bad[0]} ({means[bad[0]]}) in epoch {epoch}; lower optim.lr or the loss "
                      "weights, or check the data for extreme values")
            metrics.update({"val/auroc": math.nan, "val/auprc": math.nan, "val/ece": math.nan,
                            "val/score": math.nan, "status": status, "reason": reason, **tracker.flags(),
                            "objective": loop["best"] if loop["best_epoch"] else math.nan,
                            "best/epoch": loop["best_epoch"], **loop.get("best_val", {})})
            loop["history"].append(metrics)
            if report is not None:
                report(metrics)
            break

        # ---- evaluate the main head and the teacher on validation
        val = classification_metrics(predict(main_path, val_x).cpu(), val_y, label_names=data.label_names)
        metrics.update({f"val/{k}": v for k, v in val.items()})
        if teacher is not None:
            tv = classification_metrics(predict(teacher, val_x).cpu(), val_y, label_names=data.label_names)
            metrics.update({f"val_teacher/{k}": tv[k] for k in ("auroc", "auprc", "ece", "score")})
        metrics.update(tracker.update(epoch, val))

        # ---- early stopping on the selected metric; keep the best weights
        if metrics[select] > loop["best"]:
            loop.update(best=metrics[select], best_epoch=epoch, bad_epochs=0)
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            loop["bad_epochs"] += 1
        stop = cfg.optim.patience > 0 and loop["bad_epochs"] >= cfg.optim.patience
        last = epoch == cfg.optim.max_epochs
        metrics["objective"] = loop["best"]
        metrics["best/epoch"] = loop["best_epoch"]
        if loop["best_epoch"] == epoch:
            loop["best_val"] = {f"best/val/{k}": val[k] for k in ("auroc", "auprc", "ece", "score")}
        metrics.update(loop["best_val"])
        metrics["status"] = "early_stopped" if stop else ("completed" if last else "running")
        loop["history"].append(metrics)
        loop["epoch"] = epoch

        if checkpoint_dir is not None:
            path = _save_checkpoint(checkpoint_dir, cfg, data, model, teacher, weighter, optimizer, step, tracker,
                                    loop, best_state, shuffle, dev)
            if report is not None:
                report(metrics, checkpoint=str(path.parent))
        elif report is not None:
            report(metrics)
        if stop:
            break

    # From the history, so that resuming a run that had already stopped reports the same.
    if loop["history"] and loop["history"][-1].get("status") == "early_stopped":
        status = "early_stopped"
        reason = f"{select} did not improve for {cfg.optim.patience} epochs (best at epoch {loop['best_epoch']})"
    if best_state is not None:
        model.load_state_dict(best_state)
    best = next((h for h in loop["history"] if h["epoch"] == loop["best_epoch"]), {})
    return FitResult(status=status, reason=reason, epochs=loop["epoch"], best_epoch=loop["best_epoch"], best=best,
                     history=loop["history"], targets=tracker.flags(),
                     model=model.cpu() if best_state is not None else None)


def _present(means: dict[str, float], cfg: Config) -> dict[str, float]:
    """Only the parts this config has: a baseline reports train/loss and train/main, no zeros."""
    keep = {"train/loss", "train/main"}
    if cfg.aux_loss.type != "none":
        keep.add("train/aux")
        if cfg.distill.weight > 0:
            keep.add("train/distill")
        if cfg.consistency.weight > 0:
            keep |= {"train/consistency", "consistency/mask_rate"}
    return {k: v for k, v in means.items() if k in keep}


def evaluate_holdout(model: DualHeadModel, data: PreparedData) -> dict[str, Any]:
    """The main head on validation and on the held-out test split; temperature fit on validation."""
    path = model.main_path()
    val_logits, test_logits = predict(path, data.val.x), predict(path, data.test.x)
    out: dict[str, Any] = {}
    for name, logits, split in (("val", val_logits, data.val), ("test", test_logits, data.test)):
        out.update({f"{name}/{k}": v for k, v in classification_metrics(logits, split.y, label_names=data.label_names).items()})
    out.update(temperature_report(val_logits, data.val.y, test_logits, data.test.y))
    return out


# --------------------------------------------------------------------------- checkpoints
def _save_checkpoint(directory: str | Path, cfg: Config, data: PreparedData, model: nn.Module,
                     teacher: EMATeacher | None, weighter: nn.Module | None, optimizer: torch.optim.Optimizer,
                     step: TrainStep, tracker: TargetTracker, loop: dict[str, Any],
                     best_state: dict[str, Tensor] | None, shuffle: torch.Generator, dev: torch.device) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng: dict[str, Tensor] = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if dev.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(dev)
    obj = {
        "format": _CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "data_fingerprint": data.fingerprint,
        "split_fingerprint": data.split_fingerprint,
        "model": model.state_dict(),
        "teacher": teacher.state_dict() if teacher is not None else {},
        "weighter": weighter.state_dict() if weighter is not None else {},
        "optimizer": optimizer.state_dict(),
        "step": step.state_dict(),
        "tracker": tracker.state_dict(),
        "loop": loop,
        "best_model": best_state,
        "rng": rng,
    }
    path = d / CHECKPOINT_FILE
    tmp = d / (CHECKPOINT_FILE + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a torn checkpoint behind
    return path


def _load_checkpoint(path: str | Path, cfg: Config, data: PreparedData) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_FILE
    ckpt = read_checkpoint(p)
    if ckpt.get("format") != _CHECKPOINT_FORMAT:
        raise UserError(f"'{p}' is not a losstune training checkpoint (format {ckpt.get('format')!r})")
    if ckpt["config"] != cfg.to_dict():
        raise UserError(f"checkpoint '{p}' was written for a different config; resume with the config it was trained with")
    if (ckpt["data_fingerprint"], ckpt["split_fingerprint"]) != (data.fingerprint, data.split_fingerprint):
        raise UserError(f"checkpoint '{p}' was written for different data or splits; resume on the same data and split seed")
    return ckpt

