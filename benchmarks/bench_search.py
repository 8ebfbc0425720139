"""Does TPE with ASHA earn its compute? Epochs to reach random search's best, on the synthetic tasks.

    python benchmarks/bench_search.py [--tasks rare,screening,treatment] [--seeds 0,1,2,3,4]
                                      [--trials 16] [--epochs 12] [--rows 12000] [--arms A,B,B0]
                                      [--grace-period 3] [--reduction-factor 3]

For each task and sampler seed, `losstune tune` jobs (run in this process on one local Ray runtime,
no MLflow, no baseline arm, no confirmation) with the same trial count, maximum epochs, data and
split (split seed 0), and early stopping by patience off, so only the scheduler stops a trial:

  A   random sampler + FIFO: every trial runs every epoch
  B   TPE + ASHA, as a job gets it (multivariate TPE with groups and the constant liar)
  B0  independent TPE without the constant liar (Optuna 4's default) + ASHA: the row for that choice

Every epoch's report is recorded in the order the driver received it (a Tune callback), so "epochs
spent" is what the searcher and scheduler had seen at that moment. Per job the script prints the
best validation score and when it was reached; per task, the median over seeds (min, max) of

    epochs B spent until its best-so-far validation score reached A's final best / A's total epochs

(goal <= 0.5; "never" when B's best stays below A's, counted as infinite in the median), the same
for B0, each arm's total epochs over A's, and each arm's winner on the test split (mean ± sd).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import checkout  # noqa: F401  (first: this checkout's code, not the one installed in the venv)

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

ARMS = {"A": ("random", "fifo"), "B": ("tpe", "asha"), "B0": ("tpe", "asha")}


@dataclass
class Arm:
    best: float
    total_epochs: int
    curve: list[float] = field(repr=False)  # best-so-far objective after each epoch the driver received
    test: dict[str, float]
    wall_s: float

    def epochs_to(self, score: float) -> int | None:
        return next((i + 1 for i, v in enumerate(self.curve) if v >= score - 1e-12), None)


def recorder():
    from ray.tune import Callback

    class Record(Callback):
        def __init__(self) -> None:
            self.objectives: list[float] = []

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            v = result.get("objective")
            self.objectives.append(float(v) if v is not None and math.isfinite(v) else -math.inf)

    return Record()


def run_arm(name: str, task: str, seed: int, args, store: str) -> Arm:
    from tuner.job.plan import plan_job
    from tuner.job.run import run_job
    from tuner.job.spec import JobSpec

    sampler, scheduler = ARMS[name]
    spec = JobSpec.from_options(
        data=f"synthetic:{task}?n={args.rows}", num_trials=args.trials, max_epochs=args.epochs, split_seed=0,
        seed=seed, sampler=sampler, scheduler=scheduler, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor, experiment=f"{task}-{seed}-{name}", baseline_trials=0,
        confirm_top=0, fix=["optim.patience=0"])
    job, data, space, pretrained = plan_job(spec, store)
    rec = recorder()
    t0 = time.perf_counter()
    out = run_job(job, data, space, pretrained, address=None, verbose=0, callbacks=[rec])
    wall = time.perf_counter() - t0
    curve, best = [], -math.inf
    for v in rec.objectives:
        best = max(best, v)
        curve.append(best)
    holdout = out.winner.holdout if out.winner is not None else {}
    return Arm(best=best, total_epochs=len(curve), curve=curve, wall_s=wall,
               test={m: holdout.get(f"test/{m}", math.nan) for m in ("auroc", "auprc")})


def plain_tpe():
    """Independent TPE without the constant liar: Optuna 4's default TPE."""
    import optuna

    import tuner.job.launch

    chosen = tuner.job.launch.sampler

    def patched(job, seed):
        if job.spec.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=False, constant_liar=False)
        return chosen(job, seed)

    return chosen, patched


def spread(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    med = statistics.median(values)

    def f(v: float) -> str:
        return f"{v:.2f}" if math.isfinite(v) else "never"

    lo = min(finite) if finite else math.inf
    return f"{f(med)} ({f(lo)}..{f(max(values))})"


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="rare,screening,treatment")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--rows", type=int, default=12000)
    ap.add_argument("--arms", default="A,B,B0")
    ap.add_argument("--grace-period", type=int, default=3)
    ap.add_argument("--reduction-factor", type=float, default=3.0)
    args = ap.parse_args()
    arms = args.arms.split(",")
    if "A" not in arms:
        ap.error("--arms must include A, the reference")

    import ray

    import tuner.job.launch

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    store = tempfile.mkdtemp(prefix="bench-search-")
    chosen, patched = plain_tpe()
    results: dict[tuple[str, int, str], Arm] = {}
    print(f"{args.trials} trials x {args.epochs} epochs, {args.rows} rows, grace period {args.grace_period}, "
          f"reduction factor {args.reduction_factor}; store {store}")
    print(f"{'task':10} {'seed':>4} {'arm':>3}  {'best val':>8} {'epochs':>6} {'to A best':>9} {'test AUROC':>10} "
          f"{'test AUPRC':>10} {'wall s':>6}")
    for task in args.tasks.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for name in arms:
                tuner.job.launch.sampler = patched if name == "B0" else chosen
                arm = results[task, seed, name] = run_arm(name, task, seed, args, store)
                reach = arm.epochs_to(results[task, seed, "A"].best)
                print(f"{task:10} {seed:>4} {name:>3}  {arm.best:8.4f} {arm.total_epochs:6d} "
                      f"{reach if reach is not None else 'never':>9} {arm.test['auroc']:10.4f} "
                      f"{arm.test['auprc']:10.4f} {arm.wall_s:6.1f}", flush=True)
    tuner.job.launch.sampler = chosen

    seeds = [int(s) for s in args.seeds.split(",")]
    print("\nper task, median over seeds (min..max); 'to A best' = epochs until the arm's best-so-far "
          "validation score reached A's final best / A's total epochs (goal <= 0.5 for B)")
    for task in args.tasks.split(","):
        a = [results[task, s, "A"] for s in seeds]
        for name in arms:
            r = [results[task, s, name] for s in seeds]
            to_best = [(x.epochs_to(y.best) or math.inf) / y.total_epochs for x, y in zip(r, a, strict=True)]
            total = [x.total_epochs / y.total_epochs for x, y in zip(r, a, strict=True)]
            gap = [x.best - y.best for x, y in zip(r, a, strict=True)]
            print(f"{task:10} {name:>3}  to A best {spread(to_best):>22}  epochs/A {spread(total):>18}  "
                  f"best - A best {statistics.median(gap):+.4f}  test AUROC {mean_sd([x.test['auroc'] for x in r])}  "
                  f"test AUPRC {mean_sd([x.test['auprc'] for x in r])}")


if __name__ == "__main__":
    main()
