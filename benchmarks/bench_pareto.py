"""How good a front does a search of two objectives find? Hypervolume after N epochs, per sampler and scheduler.

    python benchmarks/bench_pareto.py [--tasks rare,treatment] [--seeds 0,1,2,3,4] [--trials 16] [--epochs 8]
                                      [--rows 8000] [--arms tpe-fifo,tpe-asha,random-fifo,random-asha]
                                      [--objectives val/auroc:max,val/ece:min] [--reference 0.5,0.3]

For each task and sampler seed, `losstune tune` jobs of several objectives (run in this process on one
local Ray runtime, no MLflow, no baseline arm, no confirmation) with the same trials, epochs, data and
split; early stopping by patience off, so only the scheduler stops a trial:

  tpe-fifo      Optuna's multi-objective TPE, every trial to its last epoch (a job's default)
  tpe-asha      multi-objective TPE, ASHA on the first objective (--scheduler asha)
  random-fifo   random search, every trial to its last epoch: the reference
  random-asha   random search, ASHA on the first objective
  nsga2-fifo    NSGA-II (a quarter of the trials per generation), every trial to its last epoch

Every epoch's report is recorded in the order the driver received it (a Tune callback); a trial's
point at any moment is its latest report's values at its best epoch so far (each objective at the
epoch best for the first one, as the job's front uses them). After N epochs of search (a quarter, half
and all of a FIFO job's epochs) the script computes the hypervolume of the front of those points
against a fixed reference point (``--reference``: AUROC 0.5 and ECE 0.3 by default; a point not
better on both adds nothing), exact (``trainables.pareto.hypervolume``). Per task it prints the median
over seeds (min..max) of each arm's hypervolume, then, last, each arm's median ratio to random-fifo
at the same epoch budget (above 1: a better front for the same compute).
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

ARMS = {"tpe-fifo": ("tpe", "fifo"), "tpe-asha": ("tpe", "asha"), "random-fifo": ("random", "fifo"),
        "random-asha": ("random", "asha"), "nsga2-fifo": ("nsga2", "fifo")}
REFERENCE_ARM = "random-fifo"


@dataclass
class Run:
    reports: list[tuple[str, tuple[float, ...]]] = field(repr=False)  # (trial id, objective values), in order
    wall_s: float = 0.0

    def hypervolume_after(self, epochs: int, objectives, reference) -> float:
        from trainables.pareto import hypervolume

        latest: dict[str, tuple[float, ...]] = {}
        for trial, values in self.reports[:epochs]:
            latest[trial] = values
        import numpy as np

        if not latest:
            return 0.0
        return hypervolume(np.array(list(latest.values())), objectives, reference)


def recorder(metrics: list[str]):
    from ray.tune import Callback

    class Record(Callback):
        def __init__(self) -> None:
            self.reports: list[tuple[str, tuple[float, ...]]] = []

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            values = tuple(float(result.get(f"best/{m}", math.nan)) for m in metrics)
            self.reports.append((trial.trial_id, values))

    return Record()


def run_arm(name: str, task: str, seed: int, args, store: str) -> Run:
    from tuner.job.plan import plan_job
    from tuner.job.run import run_job
    from tuner.job.spec import JobSpec

    sampler, scheduler = ARMS[name]
    spec = JobSpec.from_options(
        data=f"synthetic:{task}?n={args.rows}", num_trials=args.trials, max_epochs=args.epochs, split_seed=0,
        seed=seed, sampler=sampler, scheduler=scheduler, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor, experiment=f"{task}-{seed}-{name}", baseline_trials=0,
        confirm_top=0, fix=["optim.patience=0"], objectives=args.objectives)
    job, data, space, pretrained = plan_job(spec, store)
    rec = recorder([o.metric for o in spec.objective_list])
    t0 = time.perf_counter()
    run_job(job, data, space, pretrained, address=None, verbose=0, callbacks=[rec])
    return Run(reports=rec.reports, wall_s=time.perf_counter() - t0)


def spread(values: list[float], digits: int = 4) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="rare,treatment")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rows", type=int, default=8000)
    ap.add_argument("--arms", default="tpe-fifo,tpe-asha,random-fifo,random-asha")
    ap.add_argument("--objectives", default="val/auroc:max,val/ece:min")
    ap.add_argument("--reference", default="0.5,0.3", help="the reference point, one value per objective")
    ap.add_argument("--grace-period", type=int, default=2)
    ap.add_argument("--reduction-factor", type=float, default=3.0)
    args = ap.parse_args()
    arms = args.arms.split(",")
    if REFERENCE_ARM not in arms:
        ap.error(f"--arms must include {REFERENCE_ARM}, the reference")

    import ray

    from trainables.pareto import parse_objectives

    objectives = parse_objectives(args.objectives)
    reference = [float(x) for x in args.reference.split(",")]
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    store = tempfile.mkdtemp(prefix="bench-pareto-")
    full = args.trials * args.epochs  # a FIFO job's epochs
    budgets = [full // 4, full // 2, full]
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = args.tasks.split(",")
    results: dict[tuple[str, int, str], Run] = {}
    print(f"{args.trials} trials x {args.epochs} epochs, {args.rows} rows, objectives {args.objectives}, "
          f"reference point {reference}; hypervolume after {budgets} epochs of search; store {store}")
    print(f"{'task':10} {'seed':>4} {'arm':>12}  {'epochs':>6}  " + "  ".join(f"{'HV@' + str(b):>8}" for b in budgets)
          + f"  {'wall s':>6}")
    for task in tasks:
        for seed in seeds:
            for name in arms:
                run = results[task, seed, name] = run_arm(name, task, seed, args, store)
                hv = [run.hypervolume_after(b, objectives, reference) for b in budgets]
                print(f"{task:10} {seed:>4} {name:>12}  {len(run.reports):6d}  "
                      + "  ".join(f"{v:8.4f}" for v in hv) + f"  {run.wall_s:6.1f}", flush=True)

    print("\nper task, median over seeds (min..max) of the hypervolume after N epochs of search")
    for task in tasks:
        for name in arms:
            runs = [results[task, s, name] for s in seeds]
            cells = [spread([r.hypervolume_after(b, objectives, reference) for r in runs]) for b in budgets]
            epochs = statistics.median(len(r.reports) for r in runs)
            shown = "  ".join(f"@{b}: {c}" for b, c in zip(budgets, cells))
            print(f"{task:10} {name:>12}  epochs {epochs:5.0f}  {shown}")

    print(f"\nratios last: hypervolume / {REFERENCE_ARM}'s at the same epochs, median over seeds (min..max)")
    for task in tasks:
        for name in arms:
            cells = []
            for b in budgets:
                ratios = []
                for s in seeds:
                    ref = results[task, s, REFERENCE_ARM].hypervolume_after(b, objectives, reference)
                    mine = results[task, s, name].hypervolume_after(b, objectives, reference)
                    ratios.append(mine / ref if ref > 0 else math.inf)
                cells.append(f"@{b}: {spread(ratios, 2)}")
            print(f"{task:10} {name:>12}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
