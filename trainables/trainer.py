"""fit(config, data, report=...): the one training loop, framework-free.

    result = fit(Config(), prepare_data("synthetic:rare"), report=print)

Reads top to bottom: build the training state (model, teacher, losses, weighting, optimiser); then
per epoch train on index slices of tensors that stay on the device, evaluate on validation (main
head and teacher), track targets and the best epoch, checkpoint, report. Ray never appears here;
the Tune wrapper passes ``ray.tune.report`` as ``report``.
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

from trainables.augment import ImageAugment
from trainables.calibration import Calibration, calibration_report, choose_calibration, temperature_report
from trainables.config import Config
from trainables.data import PreparedData
from trainables.errors import UserError
from trainables.losses import (
    AsymmetricLoss,
    BCELoss,
    BinaryDistillationKL,
    CalibrationLoss,
    ConsistencyLoss,
    FocalLoss,
    SmoothedBCE,
    focal_alpha,
)
from trainables.metrics import Targets, TargetTracker, classification_metrics
from trainables.model import (
    DualHeadModel,
    load_pretrained,
    load_pretrained_into,
    read_checkpoint,
    weights_fingerprint,
)
from trainables.optim import without_compiler
from trainables.teacher import EMATeacher
from trainables.vocab import BEST_EPOCH, OBJECTIVE, SCORE, SELECTABLE, Status
from trainables.weighting import (
    GradientSimilarity,
    LossWeighting,
    SoftAdaptWeighter,
    StaticWeighting,
    UncertaintyWeighting,
)

__all__ = ["fit", "FitResult", "TrainStep", "TrainState", "BestEpoch", "make_optimizer", "LOSS_PARTS",
           "predict", "evaluate_holdout", "resolve_device", "input_statistics", "CHECKPOINT_FILE", "SELECTABLE"]

CHECKPOINT_FILE = "checkpoint.pt"
INIT_FINGERPRINT = "init/backbone"  # report key: weights_fingerprint of the backbone before the first step
_CHECKPOINT_FORMAT = "losstune-checkpoint-v2"  # v2: one TrainState (weighting and best epoch as objects)
# What one training step returns, in this order (a single stacked tensor: one add per step to
# accumulate, one host sync per epoch to read).
LOSS_PARTS = ("train/loss", "train/main", "train/aux", "train/distill", "train/consistency", "consistency/mask_rate")
_LOSSES = LOSS_PARTS[:5]  # the parts that must stay finite
_VAL_KEYS = ("auroc", "auprc", "ece", "score", "score_ece")  # what every epoch reports of validation (and best/val/*)
Report = Callable[..., None]


@dataclass
class FitResult:
    status: str  # a Status value: completed | early-stopped | diverged
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


# --------------------------------------------------------------------------- building blocks
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


def build_weighting(cfg: Config, model: DualHeadModel) -> LossWeighting | None:
    """The configured strategy for the two heads; None for the single-head baseline."""
    w = cfg.weighting
    if model.aux_head is None:
        return None
    if w.strategy == "softadapt":
        return SoftAdaptWeighter(n_losses=2, beta=w.softadapt_beta, variant=w.softadapt_variant,
                                 every=w.softadapt_every, window=w.softadapt_window)
    if w.strategy == "uncertainty":
        return UncertaintyWeighting(n_losses=2, clamp=w.uncertainty_clamp)
    shared = [p for p in model.backbone.parameters() if p.requires_grad]
    if w.strategy == "gradsim" and shared:  # a frozen backbone shares nothing to compare gradients on
        return GradientSimilarity(shared=shared, main_head=list(model.main_head.parameters()),
                                  aux_head=list(model.aux_head.parameters()), aux_weight=w.aux_weight,
                                  mode=w.gradsim_mode, every=w.gradsim_every)
    return StaticWeighting(aux_weight=w.aux_weight)


_AdamW = without_compiler(torch.optim.AdamW, "_AdamW")  # every worker's first epoch, without 1.5 s of import


def make_optimizer(params: list[nn.Parameter] | list[dict[str, Any]], cfg: Config) -> torch.optim.Optimizer:
    """AdamW, fused where torch has the kernel (CPU and CUDA float32): one kernel instead of a
    Python loop over parameters, ~5x less optimiser time per step on a small MLP. ``params`` may be
    parameter groups (a fine-tuned backbone's own learning rate). Without importing the compiler
    where the run does not compile (``_AdamW``)."""
    adamw = torch.optim.AdamW if cfg.optim.compile else _AdamW
    try:
        return adamw(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return adamw(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


def _param_groups(cfg: Config, model: DualHeadModel, extra: list[nn.Parameter]) -> list[dict[str, Any]]:
    """The backbone at lr × optim.backbone_lr_mult (fine-tuning moves pretrained features gently),
    the heads and the weighting's parameters at lr; a backbone frozen for the whole run is left out."""
    backbone = [] if cfg.model.freeze_backbone else list(model.backbone.parameters())
    mine = {id(p) for p in model.backbone.parameters()}
    rest = [p for p in model.parameters() if id(p) not in mine] + extra
    groups = [{"params": rest, "lr": cfg.optim.lr}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": cfg.optim.lr * cfg.optim.backbone_lr_mult})
    return groups


class _FusedLosses(torch.autograd.Function):
    """Every loss of a two-head step and their total, with the gradient of the total with respect to
    each head's logits worked out in the forward pass (each loss's ``loss_and_grad``), so backward
    through the losses is one autograd node of two multiplications. Through autograd, the focal,
    asymmetric, distillation and consistency losses and their weighting are 27 nodes of small [B, K]
    operations, and on a CPU the engine's and each operation's overhead, not the arithmetic, is their
    cost: fused, a full-stack step at batch 256 takes ~11% less time (``benchmarks/bench_trainer.py``).
    Used where the weights take no gradient (``LossWeighting.step_weights``); the tests check that it
    steps as the autograd path does."""

    @staticmethod
    def forward(ctx, main_logits: Tensor, aux_logits: Tensor, teacher_logits: Tensor | None, y: Tensor,
                weights: Tensor, step: TrainStep) -> tuple[Tensor, Tensor]:
        l_main, d_main = step.main_loss.loss_and_grad(main_logits, y)
        l_aux, d_aux = step.aux_loss.loss_and_grad(aux_logits, y)
        d_main, d_aux = d_main * weights[0], d_aux * weights[1]
        l_distill = l_cons = mask_rate = step.zero
        if step.distill is not None:
            l_distill, d = step.distill.loss_and_grad(aux_logits, teacher_logits)
            d_aux.add_(d, alpha=step.distill_weight)
        if step.consistency is not None:
            l_cons, d, mask_rate = step.consistency.loss_and_grad(main_logits, aux_logits)
            d_aux.add_(d, alpha=step.consistency_weight)
        losses = torch.stack([l_main, l_aux, l_distill, l_cons])
        total = torch.dot(losses, torch.cat([weights, step.extra_weights]))
        ctx.save_for_backward(d_main, d_aux)
        parts = torch.cat([total[None], losses, mask_rate[None]])
        ctx.mark_non_differentiable(parts)
        return total, parts

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor, _parts: Tensor):
        d_main, d_aux = ctx.saved_tensors
        return d_main * grad, d_aux * grad, None, None, None, None


class TrainStep:
    """One optimisation step; returns the loss parts as one stacked, detached tensor (``LOSS_PARTS``).

    How the two heads' losses are weighted is the ``weighting`` object's business (None for the
    single-head baseline); distillation and consistency are aux-head terms with fixed weights.
    Per-step work is kept to tensor ops on the device: no ``.item()``, no host sync. The weights in
    use are read once per epoch with ``current_weights()``.
    """

    def __init__(self, *, model: DualHeadModel, optimizer: torch.optim.Optimizer, main_loss: nn.Module,
                 aux_loss: nn.Module | None = None, weighting: LossWeighting | None = None,
                 teacher: EMATeacher | None = None, distill: nn.Module | None = None,
                 distill_weight: float = 0.0, consistency: nn.Module | None = None,
                 consistency_weight: float = 0.0, augment: ImageAugment | None = None,
                 fused_losses: bool = True) -> None:
        two_heads = model.aux_head is not None
        if two_heads != (aux_loss is not None) or two_heads != (weighting is not None):
            raise ValueError("an aux head needs an aux loss and a weighting; a single head, neither")
        if distill is not None and teacher is None:
            raise ValueError("distillation needs the teacher")
        self.model, self.optimizer, self.main_loss, self.aux_loss = model, optimizer, main_loss, aux_loss
        self.weighting, self.teacher = weighting, teacher
        self.distill, self.distill_weight = distill, distill_weight
        self.consistency, self.consistency_weight = consistency, consistency_weight
        self.main_path = model.main_path()
        self.augment = augment  # images: a fresh random crop, rotation, … of each image of each batch
        device = next(model.parameters()).device
        self.zero = torch.zeros((), device=device)
        # Images on a GPU: bf16 autocast for the networks (the losses stay float32) and channels-last
        # convolutions; a CPU trains in float32, where bf16 is slower and rounds the results differently.
        self.autocast = model.is_image and device.type == "cuda"
        self.extra_weights = torch.tensor([distill_weight if distill is not None else 0.0,
                                           consistency_weight if consistency is not None else 0.0], device=device)
        losses = [main_loss, aux_loss, distill, consistency]
        # The losses' gradients written out (_FusedLosses) where every loss has them and the weights
        # take no gradient; otherwise autograd through the losses and the weighting's own backward.
        self.fused = (fused_losses and two_heads and weighting.step_weights() is not None
                      and all(hasattr(f, "loss_and_grad") for f in losses if f is not None))

    @classmethod
    def from_config(cls, cfg: Config, model: DualHeadModel, *, pos: Tensor, neg: Tensor,
                    fused_losses: bool = True) -> TrainStep:
        """Teacher, losses, weighting and optimiser for ``model`` (already on its device);
        ``fused_losses=False`` takes autograd through the losses even where ``_FusedLosses`` could."""
        dev, two_heads = next(model.parameters()).device, model.aux_head is not None
        teacher = None
        if cfg.teacher.enabled:
            t = cfg.teacher
            teacher = EMATeacher(model.main_path(), decay=t.ema_decay, warmup=t.warmup).to(dev)
        weighting = build_weighting(cfg, model)
        weighting = weighting.to(dev) if weighting is not None else None
        extra = list(weighting.parameters()) if weighting is not None else []  # uncertainty's log-variances
        use_distill, use_cons = two_heads and cfg.distill.weight > 0, two_heads and cfg.consistency.weight > 0
        augment = ImageAugment(cfg.augment, device=dev, seed=cfg.seed) if model.is_image else None
        step = cls(model=model, optimizer=make_optimizer(_param_groups(cfg, model, extra), cfg), augment=augment,
                   main_loss=build_main_loss(cfg, pos, neg).to(dev), aux_loss=build_aux_loss(cfg),
                   weighting=weighting, teacher=teacher,
                   distill=BinaryDistillationKL(temperature=cfg.distill.temperature) if use_distill else None,
                   distill_weight=cfg.distill.weight,
                   consistency=ConsistencyLoss(threshold=cfg.consistency.threshold) if use_cons else None,
                   consistency_weight=cfg.consistency.weight, fused_losses=fused_losses)
        if cfg.optim.compile:
            step.compile()
        return step

    def compile(self) -> None:
        """Compile the forward pass and the losses (and with them, through AOTAutograd, their backward)
        with ``torch.compile``; the optimiser, the weighting and the teacher update stay eager. Dropout
        draws from the same generator as in eager mode (inductor's ``fallback_random``), so a compiled
        run computes what an eager one does, up to float rounding of fused kernels."""
        import torch._inductor.config as inductor

        inductor.fallback_random = True
        self._losses = torch.compile(self._losses, dynamic=False)  # two static shapes: full batches, the last
        self.fused = False  # the compiler fuses the autograd form's kernels itself

    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The main head's, the aux head's and the teacher's logits, in float32 (None where absent)."""
        m = self.model
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            feats = m.backbone(x)
            main_logits = m.main_head(feats)
            aux_logits = m.aux_head(self.weighting.aux_input(feats)) if self.weighting is not None else None
            teacher_logits = self.teacher(x) if self.distill is not None else None
        return tuple(t.float() if t is not None else None for t in (main_logits, aux_logits, teacher_logits))

    def _losses(self, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        """main loss, aux loss, distillation, consistency, mask rate, and the aux head's other terms
        times their weights (zeros where a part is off)."""
        z = self.zero
        main_logits, aux_logits, teacher_logits = self._logits(x)
        l_main = self.main_loss(main_logits, y)
        if self.weighting is None:  # the single-head baseline: nothing to weigh
            return l_main, z, z, z, z, z
        l_aux = self.aux_loss(aux_logits, y)
        l_distill = l_cons = mask_rate = extra = z
        if self.distill is not None:
            l_distill = self.distill(aux_logits, teacher_logits)
            extra = self.distill_weight * l_distill
        if self.consistency is not None:
            l_cons, mask_rate = self.consistency(main_logits, aux_logits)
            weighted = self.consistency_weight * l_cons
            extra = weighted if self.distill is None else extra + weighted
        return l_main, l_aux, l_distill, l_cons, mask_rate, extra

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        if self.augment is not None:
            x = self.augment(x)
            if self.autocast:
                x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        if self.fused:
            main_logits, aux_logits, teacher_logits = self._logits(x)
            total, parts = _FusedLosses.apply(main_logits, aux_logits, teacher_logits, y,
                                              self.weighting.step_weights(), self)
            total.backward()
        else:
            l_main, l_aux, l_distill, l_cons, mask_rate, extra = self._losses(x, y)
            if self.weighting is None:
                l_main.backward()
                total = l_main
            else:
                has_extra = self.distill is not None or self.consistency is not None
                total = self.weighting.backward(l_main, l_aux, extra if has_extra else None)
            with torch.no_grad():
                parts = torch.stack([total, l_main, l_aux, l_distill, l_cons, mask_rate])
        self.optimizer.step()
        if self.weighting is not None:
            self.weighting.after_step(parts[1:3])
        if self.teacher is not None:
            self.teacher.update(self.main_path)
        return parts

    def run_epoch(self, x: Tensor, y: Tensor, *, batch_size: int,
                  shuffle: torch.Generator) -> dict[str, float]:
        """One pass over a fresh permutation of (x, y) in index slices; the mean of each loss part."""
        self.model.train()
        order = torch.randperm(len(x), generator=shuffle).to(x.device)
        sums = torch.zeros(len(LOSS_PARTS), device=x.device)
        n_steps = 0
        starts = list(range(0, len(x), batch_size))
        if self.model.is_image and len(starts) > 1 and len(x) - starts[-1] == 1:
            starts.pop()  # BatchNorm cannot train on one image: it joins the batch before it
        for i, start in enumerate(starts):
            idx = order[start:starts[i + 1] if i + 1 < len(starts) else len(x)]
            sums += self(x[idx], y[idx])
            n_steps += 1
        return dict(zip(LOSS_PARTS, (sums / max(n_steps, 1)).tolist()))  # the epoch's one host sync

    @torch.no_grad()
    def current_weights(self) -> dict[str, float]:
        """The weights in use now, for the epoch report (one host sync)."""
        if self.weighting is None:
            return {}
        out = self.weighting.reported_weights()
        if self.distill is not None:
            out["weights/distill"] = self.distill_weight
        if self.consistency is not None:
            out["weights/consistency"] = self.consistency_weight
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "teacher": self.teacher.state_dict() if self.teacher is not None else {},
                "weighting": self.weighting.state_dict() if self.weighting is not None else {},
                "augment": self.augment.state_dict() if self.augment is not None else {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        if self.weighting is not None:
            self.weighting.load_state_dict(state["weighting"])
        if self.augment is not None:
            self.augment.load_state_dict(state["augment"])


@dataclass
class BestEpoch:
    """The best epoch so far by the selected metric, and how many epochs have not beaten it."""

    value: float = -math.inf
    epoch: int = 0  # 0 until an epoch improved on -inf
    val: dict[str, float] = field(default_factory=dict)  # that epoch's validation auroc/auprc/ece/score
    bad_epochs: int = 0
    weights: dict[str, Tensor] | None = field(default=None, repr=False)  # the model's, copied to the CPU

    def observe(self, epoch: int, value: float, val: Mapping[str, float], model: nn.Module) -> None:
        if value > self.value:
            self.value, self.epoch, self.bad_epochs = value, epoch, 0
            self.val = {k: val[k] for k in _VAL_KEYS}
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1

    def report(self) -> dict[str, Any]:
        """``objective``, ``best/epoch`` and ``best/val/*`` for an epoch's report."""
        return {OBJECTIVE: self.value if self.epoch else math.nan, BEST_EPOCH: self.epoch,
                **{f"best/val/{k}": v for k, v in self.val.items()}}

    def state_dict(self) -> dict[str, Any]:  # the weights travel beside it, as the checkpoint's best_model
        return {"value": self.value, "epoch": self.epoch, "val": dict(self.val),
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.value, self.epoch = float(state["value"]), int(state["epoch"])
        self.val, self.bad_epochs = dict(state["val"]), int(state["bad_epochs"])


@dataclass(kw_only=True)
class TrainState:
    """Everything a run continues from: ``state_dict()`` is what a checkpoint holds, ``load_state_dict``
    restores all of it (model, teacher, weighting, optimiser, targets, best epoch, history, RNGs)."""

    step: TrainStep
    tracker: TargetTracker
    shuffle: torch.Generator  # the epochs' permutations; dropout draws from torch's global generator
    device: torch.device
    epoch: int = 0  # the last epoch that finished
    best: BestEpoch = field(default_factory=BestEpoch)
    history: list[dict[str, Any]] = field(default_factory=list)  # every epoch's report

    @classmethod
    def build(cls, cfg: Config, data: PreparedData, device: torch.device, *, targets: Targets | None = None,
              pretrained: str | Path | Mapping[str, Tensor] | None = None) -> TrainState:
        """A fresh run; the caller seeds torch first (the model's initial weights come from it)."""
        model = DualHeadModel.from_config(cfg.model, input_shape=data.input_shape, n_labels=data.n_labels,
                                          aux_head=cfg.aux_loss.type != "none",
                                          image_stats=input_statistics(cfg, data, pretrained=pretrained is not None))
        if pretrained is not None:  # a file, or the state dict the tuner's driver read once for all trials
            where = (f"pretrained checkpoint '{pretrained}'" if isinstance(pretrained, (str, Path))
                     else "pretrained weights")
            load_pretrained_into(model, load_pretrained(pretrained), spec=cfg.model.backbone, source=where)
        model = model.to(device)
        if model.is_image and device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        if cfg.model.freeze_backbone:
            model.backbone.requires_grad_(False)
        pos, neg = data.label_counts()
        return cls(step=TrainStep.from_config(cfg, model, pos=pos, neg=neg),
                   tracker=TargetTracker(targets or Targets()),
                   shuffle=torch.Generator().manual_seed(cfg.seed), device=device)

    @property
    def early_stopped(self) -> bool:
        return bool(self.history) and self.history[-1]["status"] == Status.EARLY_STOPPED.value

    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Tensor] = {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {**self.step.state_dict(), "tracker": self.tracker.state_dict(), "epoch": self.epoch,
                "best": self.best.state_dict(), "best_model": self.best.weights, "history": self.history,
                "rng": rng}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step.load_state_dict(state)
        self.tracker.load_state_dict(state["tracker"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.best.load_state_dict(state["best"])
        self.best.weights = state["best_model"]
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


def input_statistics(cfg: Config, data: PreparedData, *, pretrained: bool) -> tuple[list[float], list[float]] | None:
    """The per-channel mean and std an image model normalises with: ImageNet's when pretrained
    torchvision or timm weights are loaded (what they were trained on; averaged over RGB for one
    channel), else the training split's. None for a table."""
    if not data.is_image:
        return None
    if pretrained and cfg.model.backbone.startswith(("torchvision:", "timm:")):
        from trainables.backbones import imagenet_stats

        mean, std = imagenet_stats(data.input_shape[0])
        return list(mean), list(std)
    return data.image_stats


@torch.inference_mode()
def predict(module: nn.Module, x: Tensor, *, chunk: int = 65536) -> Tensor:
    """Logits [N, K] in eval mode, in chunks (validation sets can be large; an image chunk holds at
    most ~16 M input values)."""
    if len(x):
        chunk = max(1, min(chunk, (1 << 24) // max(1, x[0].numel())))
    was_training = module.training
    module.eval()
    out = torch.cat([module(x[i:i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else x.new_zeros((0, 1))
    module.train(was_training)
    return out.float()


# --------------------------------------------------------------------------- the loop
def fit(config: Config, data: PreparedData, *, report: Report | None = None,
        checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None,
        targets: Targets | None = None, device: str | torch.device = "auto",
        pretrained: str | Path | Mapping[str, Tensor] | None = None, select: str = SCORE) -> FitResult:
    """Train ``config`` on ``data``; ``report(metrics[, checkpoint=dir])`` after every epoch.

    ``select`` (val/score, val/auroc or val/auprc) picks the best epoch, whose weights the result
    keeps, and drives early stopping; every report carries ``objective``, its best value so far.

    With ``checkpoint_dir`` each epoch writes ``checkpoint.pt`` there (the whole ``TrainState``);
    ``resume_from`` (that file or its folder) continues a run so that it ends with exactly the
    metrics of an uninterrupted one on CPU.
    """
    if select not in SELECTABLE:
        raise UserError(f"the metric to select on must be one of {', '.join(SELECTABLE)}, got '{select}'")
    cfg, dev = config, resolve_device(device)
    torch.manual_seed(cfg.seed)
    state = TrainState.build(cfg, data, dev, targets=targets, pretrained=pretrained)
    if resume_from is not None:
        state.load_state_dict(_load_checkpoint(resume_from, cfg, data))
    step, best, opt = state.step, state.best, cfg.optim
    train_x, train_y, val_x = data.train.x.to(dev), data.train.y.to(dev), data.val.x.to(dev)
    # The backbone as training starts (pretrained weights included), reported with epoch 1.
    initial = {INIT_FINGERPRINT: weights_fingerprint(step.model.backbone.state_dict())} if state.epoch == 0 else {}

    # A resumed run that had already stopped early has no epoch left.
    for epoch in range(state.epoch + 1, (state.epoch if state.early_stopped else opt.max_epochs) + 1):
        # ---- a pretrained backbone waits while the new heads settle (optim.freeze_backbone_epochs)
        if opt.freeze_backbone_epochs and not cfg.model.freeze_backbone:
            step.model.backbone.requires_grad_(epoch > opt.freeze_backbone_epochs)
        # ---- train: one pass over a fresh permutation, batches are index slices
        means = step.run_epoch(train_x, train_y, batch_size=opt.batch_size, shuffle=state.shuffle)
        diverged = _divergence(means, epoch)

        # ---- evaluate the main head and the teacher on validation; a diverged model is not evaluated
        val, teacher_val = (None, None) if diverged else _evaluate(step, val_x, data)
        if val is not None:
            state.tracker.update(epoch, val)
            best.observe(epoch, val[select.removeprefix("val/")], val, step.model)

        # ---- early stopping on the selected metric; the report
        stop = not diverged and 0 < opt.patience <= best.bad_epochs
        status = (Status.DIVERGED if diverged else Status.EARLY_STOPPED if stop
                  else Status.COMPLETED if epoch == opt.max_epochs else Status.RUNNING)
        row = {"epoch": epoch, **_present(means, cfg), **step.current_weights(),
               **_val_report(val, teacher_val), **state.tracker.flags(), **best.report(),
               "status": status.value, **(initial if epoch == 1 else {})}
        state.history.append({**row, "reason": diverged} if diverged else row)
        if diverged:  # reported, never checkpointed: there is nothing to continue from
            _send(report, state.history[-1])
            break
        state.epoch = epoch
        saved = _save_checkpoint(checkpoint_dir, cfg, data, state) if checkpoint_dir is not None else None
        _send(report, row, saved)
        if stop:
            break

    # From the history, so that resuming a run that had already ended reports the same.
    status = Status(state.history[-1]["status"]) if state.history else Status.COMPLETED
    reason = state.history[-1].get("reason", "") if state.history else ""
    if status is Status.EARLY_STOPPED:
        reason = f"{select} did not improve for {opt.patience} epochs (best at epoch {best.epoch})"
    if best.weights is not None:
        step.model.load_state_dict(best.weights)
    return FitResult(status=status.value, reason=reason, epochs=state.epoch, best_epoch=best.epoch,
                     best=next((h for h in state.history if h["epoch"] == best.epoch), {}),
                     history=state.history, targets=state.tracker.flags(),
                     model=step.model.cpu() if best.weights is not None else None)


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


def _divergence(means: dict[str, float], epoch: int) -> str:
    """Why the epoch diverged ("" when every loss part is finite)."""
    bad = next((k for k in _LOSSES if not math.isfinite(means[k])), None)
    if bad is None:
        return ""
    return (f"non-finite {bad} ({means[bad]}) in epoch {epoch}; lower optim.lr or the loss weights, or check "
            "the data for extreme values")


def _evaluate(step: TrainStep, val_x: Tensor,
              data: PreparedData) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Validation metrics of the main head, and of the teacher if there is one."""
    def on_val(module: nn.Module) -> dict[str, Any]:
        return classification_metrics(predict(module, val_x).cpu(), data.val.y, label_names=data.label_names)

    return on_val(step.main_path), (on_val(step.teacher) if step.teacher is not None else None)


def _val_report(val: Mapping[str, Any] | None, teacher_val: Mapping[str, Any] | None) -> dict[str, Any]:
    """val/* (per label too) and val_teacher/*; an epoch that was not evaluated reports val/* as NaN,
    so that every report has the keys a search and its scheduler read."""
    shown = val if val is not None else dict.fromkeys(_VAL_KEYS, math.nan)
    out = {f"val/{k}": v for k, v in shown.items()}
    if teacher_val is not None:
        out.update({f"val_teacher/{k}": teacher_val[k] for k in _VAL_KEYS})
    return out


def _send(report: Report | None, row: dict[str, Any], checkpoint: Path | None = None) -> None:
    if report is None:
        return
    if checkpoint is None:
        report(row)  # `report=print` and other one-argument callables work
    else:
        report(row, checkpoint=str(checkpoint.parent))


@dataclass
class Holdout:
    """The main head on validation and on the held-out test split, with its post-hoc calibration."""

    metrics: dict[str, Any]  # val/* and test/*; temperature; ECE and Brier before and after calibration
    calibration: Calibration  # per label: Platt or temperature, whichever has the lower validation NLL
    test_probs: Any  # numpy [N, K]: calibrated probabilities on the test split (for paired comparisons)
    test_raw_probs: Any = None  # numpy [N, K]: the same before calibration (for reliability diagrams)
    val_probs: Any = None  # numpy [N, K]: calibrated probabilities on validation (where thresholds are chosen)


def holdout_evaluation(model: DualHeadModel, data: PreparedData) -> Holdout:
    """Validation and test metrics of the main head. Calibration is fit on validation only: the
    shared temperature (its keys predate per-label calibration) and the per-label choice between
    Platt scaling and temperature (METHODS.md: one temperature cannot move a shifted base rate)."""
    path = model.main_path()
    val_logits, test_logits = predict(path, data.val.x), predict(path, data.test.x)
    out: dict[str, Any] = {}
    for name, logits, split in (("val", val_logits, data.val), ("test", test_logits, data.test)):
        out.update({f"{name}/{k}": v
                    for k, v in classification_metrics(logits, split.y, label_names=data.label_names).items()})
    out.update(temperature_report(val_logits, data.val.y, test_logits, data.test.y))
    cal = choose_calibration(val_logits.detach().cpu().double(), data.val.y.detach().cpu())
    for name, logits, split in (("val", val_logits, data.val), ("test", test_logits, data.test)):
        rep = calibration_report(cal, logits.detach().cpu().double(), split.y.detach().cpu())
        out[f"{name}/ece_calibrated"] = rep["ece_after"]
        out[f"{name}/brier"], out[f"{name}/brier_calibrated"] = rep["brier_before"], rep["brier_after"]
    z = test_logits.detach().cpu().double()
    return Holdout(metrics=out, calibration=cal, test_probs=cal.apply(z), test_raw_probs=torch.sigmoid(z).numpy(),
                   val_probs=cal.apply(val_logits.detach().cpu().double()))


def evaluate_holdout(model: DualHeadModel, data: PreparedData) -> dict[str, Any]:
    return holdout_evaluation(model, data).metrics


# --------------------------------------------------------------------------- checkpoints
def _save_checkpoint(directory: str | Path, cfg: Config, data: PreparedData, state: TrainState) -> Path:
    """The run's whole state plus what it was trained on; ``config``, ``model`` and ``best_model`` are
    top-level keys that ``tuner.job.winner`` reads."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    obj = {"format": _CHECKPOINT_FORMAT, "config": cfg.to_dict(), "data_fingerprint": data.fingerprint,
           "split_fingerprint": data.split_fingerprint, **state.state_dict()}
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
        raise UserError(f"'{p}' is not a losstune training checkpoint of this version (format "
                        f"{ckpt.get('format')!r}, expected {_CHECKPOINT_FORMAT!r})")
    if ckpt["config"] != cfg.to_dict():
        raise UserError(f"checkpoint '{p}' was written for a different config; "
                        "resume with the config it was trained with")
    if (ckpt["data_fingerprint"], ckpt["split_fingerprint"]) != (data.fingerprint, data.split_fingerprint):
        raise UserError(f"checkpoint '{p}' was written for different data or splits; "
                        "resume on the same data and split seed")
    return ckpt
