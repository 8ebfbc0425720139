"""Trainer step overhead, measured side by side in one run (ratios; these machines are noisy).

    python benchmarks/bench_trainer.py [--rows 40000] [--repeats 5]

1. Epoch time of the full stack (focal + asymmetric + EMA teacher + distillation + consistency +
   SoftAdapt) divided by a plain single-head BCE loop on the same data and backbone, at batch 256
   and 1024 (goal <= 1.4).
2. The same with gradient similarity every step and every 10 steps.
3. Tensor index slicing vs DataLoader(TensorDataset) for one epoch of the plain loop at batch 256
   (goal: slicing >= 1.5x faster).
Arms alternate within each repeat and the median epoch time is kept.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from trainables.config import Config
from trainables.data import prepare_data
from trainables.model import DualHeadModel
from trainables.teacher import EMATeacher
from trainables.trainer import (
    LOSS_PARTS,
    TrainStep,
    build_aux_loss,
    build_main_loss,
    build_weighter,
    make_optimizer,
)

FULL = {"main_loss.type": "focal", "aux_loss.type": "asymmetric", "teacher.enabled": True, "distill.weight": 0.5,
        "consistency.weight": 0.3, "weighting.strategy": "softadapt", "model.dropout": 0.1}


def plain_epoch(model, opt, x, y, bs, gen) -> None:
    """The reference: single head, BCE, AdamW, index slices."""
    order = torch.randperm(len(x), generator=gen)
    for i in range(0, len(x), bs):
        idx = order[i:i + bs]
        loss = F.binary_cross_entropy_with_logits(model.main_path()(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def loader_epoch(model, opt, loader) -> None:
    for xb, yb in loader:
        loss = F.binary_cross_entropy_with_logits(model.main_path()(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def full_stack(cfg: Config, data) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    model = DualHeadModel.from_config(cfg.model, in_features=data.n_features, n_labels=data.n_labels, aux_head=True)
    teacher = EMATeacher(model.main_path(), decay=cfg.teacher.ema_decay, warmup=True)
    weighter = build_weighter(cfg)
    params = list(model.parameters()) + (list(weighter.parameters()) if weighter else [])
    opt = make_optimizer(params, cfg)
    pos, neg = data.label_counts()
    return TrainStep(cfg, model, teacher, build_main_loss(cfg, pos, neg), build_aux_loss(cfg), weighter, opt,
                     torch.device("cpu"))


def step_epoch(step, x, y, bs, gen) -> None:
    order = torch.randperm(len(x), generator=gen)
    acc = torch.zeros(len(LOSS_PARTS))
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
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def stack_arms(data, hidden: list[int], bs: int) -> dict[str, Callable[[], None]]:
    x, y = data.train.x, data.train.y
    gen = torch.Generator().manual_seed(0)

    def cfg(**extra) -> Config:
        return Config().with_overrides({**FULL, "model.hidden": hidden, "optim.batch_size": bs, **extra})

    base = DualHeadModel.from_config(cfg().model, in_features=x.shape[1], n_labels=1, aux_head=False)
    base_opt = make_optimizer(list(base.parameters()), cfg())  # the same optimiser as fit()
    steps = {
        "full stack": full_stack(cfg(), data),
        "full + gradsim every step": full_stack(cfg(**{"weighting.strategy": "gradsim", "weighting.gradsim_every": 1}), data),
        "full + gradsim every 10": full_stack(cfg(**{"weighting.strategy": "gradsim", "weighting.gradsim_every": 10}), data),
    }
    arms = {"plain BCE": lambda: plain_epoch(base, base_opt, x, y, bs, gen)}
    arms.update({name: functools.partial(step_epoch, s, x, y, bs, gen) for name, s in steps.items()})
    return arms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=40000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hidden", default="128,64", help="MLP widths (default: the config default)")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = prepare_data(f"synthetic:rare?n={int(args.rows / 0.6)}")
    x, y = data.train.x, data.train.y
    hidden = [int(h) for h in args.hidden.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; train rows {len(x)}, features {x.shape[1]}, "
          f"MLP {hidden}; median of {args.repeats} epochs per arm, arms interleaved\n")
    print(f"{'batch':>5}  {'arm':<28} {'epoch s':>8}  {'/ plain':>7}")
    for bs in (256, 1024):
        med = measure(stack_arms(data, hidden, bs), args.repeats)
        for k, t in med.items():
            goal = "  (goal <= 1.40)" if k == "full stack" else ""
            print(f"{bs:>5}  {k:<28} {t:8.3f}  {t / med['plain BCE']:7.2f}{goal}")

    gen = torch.Generator().manual_seed(0)
    model = DualHeadModel.from_config(Config().model.model_copy(update={"hidden": tuple(hidden)}),
                                      in_features=x.shape[1], n_labels=1, aux_head=False)
    opt = make_optimizer(list(model.parameters()), Config())
    loader = DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(0))
    med = measure({"index slicing": lambda: plain_epoch(model, opt, x, y, 256, gen),
                   "DataLoader": lambda: loader_epoch(model, opt, loader)}, args.repeats)
    s, d = med["index slicing"], med["DataLoader"]
    print(f"\nbatch 256: index slicing {s:.3f} s, DataLoader(TensorDataset) {d:.3f} s per epoch: "
          f"slicing is {d / s:.2f}x faster (goal >= 1.5)")


if __name__ == "__main__":
    main()
