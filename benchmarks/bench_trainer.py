"""Trainer step overhead, measured side by side in one run (ratios; these machines are noisy).

    python benchmarks/bench_trainer.py [--rows 40000] [--repeats 5] [--plain-losses] [--teacher] [--parts]
                                       [--device cpu|cuda] [--threads N] [--skip-stack] [--compile]
                                       [--gradsim-every] [--gradsim-seeds 4]

1. Epoch time of the full stack (focal + asymmetric + EMA teacher + distillation + consistency +
   SoftAdapt) divided by a plain single-head BCE loop on the same data and backbone, at batch 256
   and 1024 (goal <= 1.4 on a CPU); beside it the same stack with autograd through the losses (the
   step before ``_FusedLosses``, and what a step takes where a loss has no ``loss_and_grad``); with
   ``--compile`` also the full stack with ``optim.compile`` (its compile time printed apart).
2. The same with gradient similarity every step and every 10 steps.
3. Tensor index slicing vs DataLoader(TensorDataset) for one epoch of the plain loop at batch 256
   (goal: slicing >= 1.5x faster).
4. ``--plain-losses``: the full stack at batch 256 with trainables' losses through autograd vs the
   same stack with one loss (focal, asymmetric, distillation KL, consistency) written as a plain
   autograd expression, and with all four plain. A loss's own ``torch.autograd.Function`` earns its
   place only where its plain form costs >= 5% more full-stack step time.
5. ``--teacher``: microseconds per EMA-teacher update, trainables' ``EMATeacher`` vs
   ``AveragedModel.update_parameters`` with a warm-up-aware ``multi_avg_fn`` (the same arithmetic).
6. ``--parts``: what each technique adds to the step at batch 256: the full stack with one part
   switched off at a time (focal -> BCE on the main head, asymmetric -> BCE on the aux head, the EMA
   teacher and distillation, consistency, SoftAdapt -> static weights) and with all of them off (two
   heads, two BCEs), each ÷ the plain step, and the full stack with autograd through the losses;
   blocks of steps interleaved, medians.
7. ``--gradsim-every``: gradient similarity's cosine recomputed every step against every 10 steps
   (``weighting.gradsim_every``, whose default it argues): each scenario preset with
   ``weighting.strategy=gradsim`` on its synthetic task (20,000 rows, 10 epochs, patience off),
   ``--gradsim-seeds`` seeds, the two alternating; the test AUROC of each (mean ± sd over seeds), the
   paired differences, and the wall time of a fit.
Arms alternate within each repeat and the median is kept.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections.abc import Callable

import checkout  # noqa: F401  (first: this checkout's code, not the one installed in the venv)
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, TensorDataset

from trainables.config import Config
from trainables.data import prepare_data
from trainables.model import DualHeadModel
from trainables.teacher import EMATeacher
from trainables.trainer import LOSS_PARTS, TrainStep, make_optimizer

FULL = {"main_loss.type": "focal", "aux_loss.type": "asymmetric", "teacher.enabled": True, "distill.weight": 0.5,
        "consistency.weight": 0.3, "weighting.strategy": "softadapt", "model.dropout": 0.1}
DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def plain_step(path: Callable[[Tensor], Tensor], opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor) -> None:
    """The reference step: one head (``path``), BCE, AdamW."""
    loss = F.binary_cross_entropy_with_logits(path(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def plain_epoch(model, opt, x, y, bs, gen) -> None:
    """The reference: single head, BCE, AdamW, index slices."""
    order = torch.randperm(len(x), generator=gen).to(x.device)
    for i in range(0, len(x), bs):
        idx = order[i:i + bs]
        plain_step(model.main_path(), opt, x[idx], y[idx])
    sync()


def loader_epoch(model, opt, loader) -> None:
    for xb, yb in loader:
        plain_step(model.main_path(), opt, xb, yb)


def full_stack(cfg: Config, data, *, fused: bool = True) -> TrainStep:
    """The step ``fit`` trains with; ``fused=False``: autograd through the losses (the code before
    ``_FusedLosses``, which ``fit`` still takes where a loss or the weighting has no fused form)."""
    torch.manual_seed(0)
    model = DualHeadModel.from_config(cfg.model, in_features=data.n_features, n_labels=data.n_labels,
                                      aux_head=True).to(DEVICE)
    pos, neg = data.label_counts()
    return TrainStep.from_config(cfg, model, pos=pos, neg=neg, fused_losses=fused)


def step_epoch(step, x, y, bs, gen) -> None:
    order = torch.randperm(len(x), generator=gen).to(x.device)
    acc = torch.zeros(len(LOSS_PARTS), device=x.device)
    for i in range(0, len(x), bs):
        idx = order[i:i + bs]
        acc += step(x[idx], y[idx])
    acc.tolist()  # the one host sync per epoch, as in fit()


def measure(arms: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each arm; arms alternate within each repeat, after one warm-up."""
    for fn in arms.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(repeats):
        for k, fn in arms.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def config(hidden: list[int], bs: int, **extra) -> Config:
    return Config().with_overrides({**FULL, "model.hidden": hidden, "optim.batch_size": bs, **extra})


def stack_arms(data, x, y, hidden: list[int], bs: int, *, compile_: bool = False) -> dict[str, Callable[[], None]]:
    gen = torch.Generator().manual_seed(0)
    base = DualHeadModel.from_config(config(hidden, bs).model, in_features=x.shape[1], n_labels=data.n_labels,
                                     aux_head=False).to(DEVICE)
    base_opt = make_optimizer(list(base.parameters()), config(hidden, bs))  # the same optimiser as fit()
    steps = {
        "full stack": full_stack(config(hidden, bs), data),
        "full stack, autograd losses": full_stack(config(hidden, bs), data, fused=False),
        "full + gradsim every step": full_stack(config(hidden, bs, **{"weighting.strategy": "gradsim",
                                                                      "weighting.gradsim_every": 1}), data),
        "full + gradsim every 10": full_stack(config(hidden, bs, **{"weighting.strategy": "gradsim",
                                                                    "weighting.gradsim_every": 10}), data),
    }
    if compile_:
        compiled = full_stack(config(hidden, bs, **{"optim.compile": True}), data)
        t = time.perf_counter()
        for n in {bs, len(x) % bs or bs}:  # the shapes an epoch sees: full batches and the last one
            compiled(x[:n], y[:n])
        sync()
        print(f"{bs:>5}  compiling the step took {time.perf_counter() - t:.1f} s (once per trial; not in the ratios)")
        steps["full stack, compiled"] = compiled
    arms = {"plain BCE": lambda: plain_epoch(base, base_opt, x, y, bs, gen)}
    arms.update({name: functools.partial(step_epoch, s, x, y, bs, gen) for name, s in steps.items()})
    return arms


# --------------------------------------------------------------------------- plain-autograd losses
# The same losses as trainables.losses, written as plain autograd expressions (the stable forms
# METHODS.md states; the tests' reference formulas): what a fused Function has to beat.
class PlainFocal(nn.Module):
    def __init__(self, alpha: float | Tensor | None, gamma: float) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = x.float(), y.float()
        z = x * (2 * y - 1)  # x for positives, -x for negatives
        bce = F.softplus(-z)  # -log p_t
        loss = torch.exp(-self.gamma * (bce + z)) * bce  # (1 - p_t)^gamma = exp(-gamma softplus(z))
        if self.alpha is not None:
            loss = loss * ((1 - self.alpha) + (2 * self.alpha - 1) * y)
        return loss.mean()


class PlainAsymmetric(nn.Module):
    def __init__(self, *, gamma_neg: float, gamma_pos: float, clip: float, eps: float,
                 detach_focusing: bool) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.detach = detach_focusing

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.float()
        p, q = torch.sigmoid(x), torch.sigmoid(-x)
        p_m = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        w_pos = q.clamp(min=self.eps) ** self.gamma_pos
        w_neg = p_m.clamp(min=self.eps) ** self.gamma_neg
        if self.detach:
            w_pos, w_neg = w_pos.detach(), w_neg.detach()
        loss = -torch.where(y > 0.5, w_pos * torch.log(p.clamp(min=self.eps)),
                            w_neg * torch.log((1 - p_m).clamp(min=self.eps)))
        return loss.mean()


class PlainDistill(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.t = temperature

    def forward(self, x: Tensor, teacher: Tensor) -> Tensor:
        s, tt = x.float() / self.t, teacher.detach().float() / self.t
        q = torch.sigmoid(tt)
        kl = (F.binary_cross_entropy_with_logits(s, q, reduction="none")
              - F.binary_cross_entropy_with_logits(tt, q, reduction="none")) * self.t**2
        return kl.sum(dim=1).mean()


class PlainConsistency(nn.Module):
    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.edge = math.log(threshold / (1 - threshold))

    def forward(self, main: Tensor, aux: Tensor) -> tuple[Tensor, Tensor]:
        x = aux.float()
        with torch.no_grad():
            main = main.float()
            mask = ((main.abs() > self.edge) & (x.abs() > self.edge)).float()
            target = torch.sigmoid(main)
        return (mask * F.binary_cross_entropy_with_logits(x, target, reduction="none")).mean(), mask.mean()


def with_plain(step: TrainStep, cfg: Config, which: set[str]) -> TrainStep:
    """``step`` with the losses named in ``which`` (focal, asymmetric, distillation, consistency) plain
    (through autograd: the plain forms have no ``loss_and_grad``)."""
    a = cfg.aux_loss
    step.fused = False
    if "focal" in which:
        alpha = step.main_loss.alpha
        use_alpha = isinstance(alpha, Tensor) or (alpha is not None and alpha >= 0)
        step.main_loss = PlainFocal(alpha if use_alpha else None, cfg.main_loss.gamma)
    if "asymmetric" in which:
        step.aux_loss = PlainAsymmetric(gamma_neg=a.gamma_neg, gamma_pos=a.gamma_pos, clip=a.clip, eps=a.eps,
                                        detach_focusing=a.detach_focusing)
    if "distillation" in which:
        step.distill = PlainDistill(cfg.distill.temperature)
    if "consistency" in which:
        step.consistency = PlainConsistency(cfg.consistency.threshold)
    return step


PLAIN_ARMS = {"plain focal": {"focal"}, "plain asymmetric": {"asymmetric"},
              "plain distillation": {"distillation"}, "plain consistency": {"consistency"},
              "all four plain": {"focal", "asymmetric", "distillation", "consistency"}}


def plain_loss_times(data, x, y, hidden: list[int], repeats: int, *, bs: int = 256,
                     block: int = 50) -> dict[str, list[float]]:
    """Seconds per step of each arm, one value per block of ``block`` steps on the same random batches.

    Short blocks, many of them, interleaved: a busy machine slows some blocks of every arm alike,
    and the median and the minimum over blocks both stay put (an epoch per repeat did not).
    """
    cfg = config(hidden, bs)
    arms = {"trainables' losses": full_stack(cfg, data, fused=False)}
    arms.update({name: with_plain(full_stack(cfg, data), cfg, which) for name, which in PLAIN_ARMS.items()})
    return block_times(arms, x, y, repeats, bs=bs, block=block)


def block_times(arms: dict[str, Callable[[Tensor, Tensor], object]], x: Tensor, y: Tensor, repeats: int, *,
                bs: int, block: int) -> dict[str, list[float]]:
    """Seconds per step of each arm (a step function), one value per block of ``block`` steps on the
    same random batches of ``bs`` rows, the arms interleaved block by block after one warm-up block."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(len(x), (bs,), generator=g).to(x.device) for _ in range(block)]

    def run(step: Callable[[Tensor, Tensor], object]) -> None:
        for idx in batches:
            step(x[idx], y[idx])

    for step in arms.values():  # warm-up
        run(step)
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(repeats):
        for name, step in arms.items():
            sync()
            t = time.perf_counter()
            run(step)
            sync()
            times[name].append((time.perf_counter() - t) / block)
    return times


# --------------------------------------------------------------------------- what each part costs
PARTS = {"full stack": {},
         "full stack, autograd losses": {},
         "  less focal (BCE main)": {"main_loss.type": "bce"},
         "  less asymmetric (BCE aux)": {"aux_loss.type": "bce"},
         "  less teacher + distillation": {"teacher.enabled": False, "distill.weight": 0.0},
         "  less consistency": {"consistency.weight": 0.0},
         "  less SoftAdapt (static)": {"weighting.strategy": "static"}}
PARTS["two heads, two BCEs"] = {k: v for part in PARTS.values() for k, v in part.items()}


def part_times(data, x, y, hidden: list[int], blocks: int, *, bs: int = 256,
               block: int = 50) -> dict[str, list[float]]:
    """Seconds per step of the plain step and of each ``PARTS`` variant, one value per block of
    ``block`` steps on the same random batches, the arms interleaved block by block."""
    base = DualHeadModel.from_config(config(hidden, bs).model, in_features=x.shape[1], n_labels=data.n_labels,
                                     aux_head=False).to(DEVICE)
    base_opt = make_optimizer(list(base.parameters()), config(hidden, bs))
    arms: dict[str, Callable[[Tensor, Tensor], object]] = {
        "plain BCE": functools.partial(plain_step, base.main_path(), base_opt)}
    arms.update({name: full_stack(config(hidden, bs, **extra), data, fused="autograd" not in name)
                 for name, extra in PARTS.items()})
    return block_times(arms, x, y, blocks, bs=bs, block=block)


# --------------------------------------------------------------------------- the teacher's update
def averaged_model_teacher(module: nn.Module, *, decay: float) -> Callable[[], None]:
    """torch's AveragedModel with a warm-up-aware multi_avg_fn: d_t = min(d, 1 - 1/(t + 1))."""
    t = [0]

    @torch.no_grad()
    def warmup_ema(ema: list[Tensor], current: list[Tensor], _n_averaged: Tensor) -> None:
        t[0] += 1  # a Python count: reading n_averaged here would sync a GPU once more
        torch._foreach_lerp_(ema, current, 1 - min(decay, 1 - 1 / (t[0] + 1)))  # as get_ema_multi_avg_fn

    avg = AveragedModel(module, multi_avg_fn=warmup_ema, use_buffers=True)
    avg.n_averaged.fill_(1)  # average from the first update on, like EMATeacher
    return lambda: avg.update_parameters(module)


def teacher_update_us(hidden: list[int], n_features: int, repeats: int, *,
                      updates: int = 2000) -> dict[str, float]:
    model = DualHeadModel(in_features=n_features, n_labels=1, hidden=tuple(hidden)).to(DEVICE)
    path = model.main_path()
    own = EMATeacher(path, decay=0.999, warmup=True).to(DEVICE)
    arms = {"EMATeacher.update (own class)": lambda: own.update(path),
            "AveragedModel.update_parameters": averaged_model_teacher(path, decay=0.999)}

    def run(fn: Callable[[], None]) -> Callable[[], None]:
        def loop() -> None:
            for _ in range(updates):
                fn()
            sync()
        return loop

    med = measure({k: run(fn) for k, fn in arms.items()}, repeats)
    return {k: v / updates * 1e6 for k, v in med.items()}


GRADSIM_TASKS = {"rare": "rare_disease_detection", "screening": "multi_disease_screening",
                 "treatment": "treatment_response_prediction"}


def gradsim_every(seeds: int, every: tuple[int, ...] = (1, 10)) -> None:
    """Section 7: what recomputing the gradient-similarity cosine less often costs in AUROC and saves
    in time, on held-out data, seed by seed."""
    from search_spaces import load_scenario
    from trainables.trainer import evaluate_holdout, fit

    print(f"\ngradient similarity every k steps, k = {' vs '.join(map(str, every))}: the presets with "
          f"weighting.strategy=gradsim, 20,000 rows, 10 epochs, {seeds} seeds; test AUROC mean ± sd, "
          "wall per fit")
    lines = []
    for task, scenario in GRADSIM_TASKS.items():
        data = prepare_data(f"synthetic:{task}?n=20000")
        base = load_scenario(scenario).config
        auroc: dict[int, list[float]] = {k: [] for k in every}
        wall: dict[int, list[float]] = {k: [] for k in every}
        for seed in range(seeds):
            for k in every:
                cfg = base.with_overrides({"weighting.strategy": "gradsim", "weighting.gradsim_every": k,
                                           "seed": seed, "optim.max_epochs": 10, "optim.patience": 0})
                t = time.perf_counter()
                result = fit(cfg, data, device=DEVICE)
                wall[k].append(time.perf_counter() - t)
                auroc[k].append(float(evaluate_holdout(result.model, data)["test/auroc"]))
        for k in every:
            sd = statistics.stdev(auroc[k]) if seeds > 1 else float("nan")
            print(f"  {task:<10} k={k:<3} test AUROC {statistics.mean(auroc[k]):.4f} ± {sd:.4f}, "
                  f"{statistics.median(wall[k]):.2f} s a fit")
        lo, hi = every[0], every[-1]
        diffs = [b - a for a, b in zip(auroc[lo], auroc[hi])]
        time_ratio = statistics.median(wall[hi]) / statistics.median(wall[lo])
        spread = statistics.stdev(auroc[lo]) if seeds > 1 else float("nan")
        lines.append(f"{task:<10} every {hi} ÷ every {lo}: time {time_ratio:.2f}, test AUROC paired difference "
                     f"{min(diffs):+.4f} .. {max(diffs):+.4f} (seed sd {spread:.4f})")
    print("ratios:")
    for line in lines:
        print("  " + line)


def main() -> None:
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=40000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hidden", default="128,64", help="MLP widths (default: the config default)")
    ap.add_argument("--plain-losses", action="store_true",
                    help="fused autograd Functions vs plain autograd losses")
    ap.add_argument("--teacher", action="store_true",
                    help="microseconds per EMA-teacher update, both variants")
    ap.add_argument("--parts", action="store_true",
                    help="what each technique adds to the step: the full stack less one part at a time")
    ap.add_argument("--skip-stack", action="store_true", help="skip sections 1-3")
    ap.add_argument("--compile", action="store_true",
                    help="add the full stack with optim.compile (torch.compile of forward and losses)")
    ap.add_argument("--gradsim-every", action="store_true",
                    help="gradient similarity every step vs every 10 steps: test AUROC and time per fit")
    ap.add_argument("--gradsim-seeds", type=int, default=4, help="seeds per task for --gradsim-every")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the data stays on the device)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    DEVICE = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = prepare_data(f"synthetic:rare?n={int(args.rows / 0.6)}")
    x, y = data.train.x.to(DEVICE), data.train.y.to(DEVICE)
    hidden = [int(h) for h in args.hidden.split(",")]
    print(f"torch {torch.__version__}, {DEVICE}, {torch.get_num_threads()} threads; train rows {len(x)}, "
          f"features {x.shape[1]}, MLP {hidden}; median of {args.repeats} epochs per arm, arms interleaved\n")
    steps_at = {bs: math.ceil(len(x) / bs) for bs in (256, 1024)}

    if not args.skip_stack:
        print(f"{'batch':>5}  {'arm':<28} {'epoch s':>8} {'ms/step':>8}  {'/ plain':>7}")
        for bs in (256, 1024):
            med = measure(stack_arms(data, x, y, hidden, bs, compile_=args.compile), args.repeats)
            for k, t in med.items():
                goal = "  (goal <= 1.40)" if k == "full stack" else ""
                per_step = t / steps_at[bs] * 1e3
                print(f"{bs:>5}  {k:<28} {t:8.3f} {per_step:8.3f}  {t / med['plain BCE']:7.2f}{goal}")

        if DEVICE.type == "cpu":
            gen = torch.Generator().manual_seed(0)
            model = DualHeadModel.from_config(Config().model.model_copy(update={"hidden": tuple(hidden)}),
                                              in_features=x.shape[1], n_labels=1, aux_head=False)
            opt = make_optimizer(list(model.parameters()), Config())
            loader = DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True,
                                generator=torch.Generator().manual_seed(0))
            med = measure({"index slicing": lambda: plain_epoch(model, opt, x, y, 256, gen),
                           "DataLoader": lambda: loader_epoch(model, opt, loader)}, args.repeats)
            s, d = med["index slicing"], med["DataLoader"]
            print(f"\nbatch 256: index slicing {s:.3f} s, DataLoader(TensorDataset) {d:.3f} s per epoch: "
                  f"slicing is {d / s:.2f}x faster (goal >= 1.5)")

    if args.plain_losses:
        blocks = max(args.repeats, 5) * 8
        print(f"\nfull stack at batch 256, losses one at a time as plain autograd expressions; {blocks} "
              "blocks of 50 steps per arm, interleaved\n(keep a fused Function where its plain form costs "
              ">= +5%)")
        times = plain_loss_times(data, x, y, hidden, blocks)
        ref_med, ref_min = statistics.median(times["trainables' losses"]), min(times["trainables' losses"])
        vs = "vs trainables"
        print(f"{'arm':<22} {'median ms/step':>14} {vs:>13}  {'min ms/step':>11} {vs:>13}")
        for k, v in times.items():
            med, low = statistics.median(v), min(v)
            print(f"{k:<22} {med * 1e3:14.3f} {100 * (med / ref_med - 1):+12.1f}%  {low * 1e3:11.3f} "
                  f"{100 * (low / ref_min - 1):+12.1f}%")

    if args.parts:
        blocks = max(args.repeats, 5) * 8
        print(f"\nwhat each part adds to the step, batch 256; {blocks} blocks of 50 steps per arm, interleaved")
        times = part_times(data, x, y, hidden, blocks)
        med = {k: statistics.median(v) for k, v in times.items()}
        full = med["full stack"]
        print(f"{'arm':<32} {'ms/step':>8} {'/ plain':>8} {'part costs':>11}")
        for k, t in med.items():
            part = f"{(full - t) * 1e3:+8.3f} ms" if k.startswith("  less") else ""
            print(f"{k:<32} {t * 1e3:8.3f} {t / med['plain BCE']:8.2f} {part:>11}")

    if args.teacher:
        print("\nEMA teacher update of the main path (backbone + main head), microseconds per update")
        for k, us in teacher_update_us(hidden, x.shape[1], args.repeats).items():
            print(f"{k:<34} {us:8.1f} us")

    if args.gradsim_every:
        gradsim_every(args.gradsim_seeds)


if __name__ == "__main__":
    main()
