"""Ray Tune's overhead: `losstune tune` vs the same trials one after another in one process.

    python benchmarks/bench_tune_overhead.py [--trials 16] [--epochs 10] [--rows 80000] [--breakdown]

1. `losstune tune` (a subprocess, as a user runs it: Ray start included) runs 16 trials, 2 at a
   time, FIFO and without early stopping, so every trial does its full work.
2. The same 16 configurations, read back from the job, run one after another in this process with
   a plain Optuna study (enqueued, asked, trained with fit(), told).
Prints both wall times and their ratio (goal <= 0.65: two cores should nearly halve the time).
3. ``--breakdown``: where a job's fixed cost goes. Fresh processes time the interpreter, the CLI and
   each heavy import; one more runs a 2-trial, 1-epoch job on a small table through ``run_job`` with
   MLflow into a new sqlite store, phase by phase (planning and data, Ray start, the first trial's
   first report, the rest of the search, the winner's evaluation and the records, Ray's shutdown).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import checkout  # noqa: F401  (first: this checkout's code, not the one installed in the venv)
import optuna
import torch

from search_spaces import load_scenario, scenario_space
from trainables.data import prepare_data
from trainables.trainer import fit

_PHASES = r"""
import json, os, sys, tempfile, time
t0 = time.perf_counter()
marks = {}
def mark(name):
    marks[name] = time.perf_counter()
from tuner.job.spec import JobSpec
from tuner.job.plan import plan_job
from tuner.job.run import Tracking, run_job
from tuner.cluster.runtime import connect
import torch, ray  # what the driver imports anyway on its way to run_job
from ray.tune import Callback
mark("imports (tuner, torch, ray)")
store = tempfile.mkdtemp(prefix="bench-breakdown-")
spec = JobSpec.from_options(data="synthetic:rare?n=3000", num_trials=2, max_epochs=1, concurrency=2, experiment="b",
                            baseline_trials=0, confirm_top=0)
job, data, space, pretrained = plan_job(spec, store)
mark("plan the job, prepare the data")
runtime = connect(None)
mark("Ray start (local runtime)")
class Phases(Callback):
    at = {}
    def setup(self, **info):
        Phases.at.setdefault("MLflow records opened, Tune set up", time.perf_counter())
    def on_trial_result(self, iteration, trials, trial, result, **info):
        Phases.at.setdefault("first trial started, its first epoch reported", time.perf_counter())
    def on_experiment_end(self, trials, **info):
        Phases.at.setdefault("rest of the search (2 trials x 1 epoch)", time.perf_counter())
out = run_job(job, data, space, pretrained, address=None, verbose=0, callbacks=[Phases()],
              tracking=Tracking(uri=f"sqlite:///{store}/mlflow.db", experiment="b"))
marks.update(Phases.at)
mark("winner on test, references, report, MLflow closed")
runtime.shutdown()
mark("Ray shutdown")
print(json.dumps({"start": t0, "marks": marks}))
"""


def breakdown() -> None:
    def wall(code: list[str], repeats: int = 3) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, *code], capture_output=True, check=True)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    py = wall(["-c", "pass"])
    print("a job's fixed cost, part by part (median of 3 fresh processes for the first rows)")
    print(f"  {'python interpreter':52} {py:6.2f} s")
    print(f"  {'losstune --help (the CLI alone)':52} {wall(['-m', 'tuner.cli', '--help']) - py:6.2f} s")
    for mod in ("torch", "pandas", "optuna", "ray.tune", "mlflow", "sklearn.ensemble"):
        print(f"  {'import ' + mod:52} {wall(['-c', f'import {mod}']) - py:6.2f} s")
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PHASES], capture_output=True, text=True, check=True)
    total = time.perf_counter() - t
    got = json.loads(done.stdout.strip().splitlines()[-1])
    prev = got["start"]
    print(f"one 2-trial, 1-epoch job through run_job, in a fresh process ({total:.1f} s in all):")
    for name, at in got["marks"].items():
        print(f"  {name:52} {at - prev:6.2f} s")
        prev = at


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--breakdown", action="store_true", help="also time a job's fixed cost, part by part")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rows", type=int, default=80000, help="synthetic rows (80000: trials of ~3 s on 2 cores)")
    args = ap.parse_args()
    if args.breakdown:
        breakdown()
    data_spec = f"synthetic:rare?n={args.rows}"
    store = Path(tempfile.mkdtemp(prefix="bench-tune-"))

    cmd = [sys.executable, "-m", "tuner.cli", "tune", "--data", data_spec, "--scenario", "rare_disease_detection",
           "--num-trials", str(args.trials), "--max-epochs", str(args.epochs), "--scheduler", "fifo",
           "--concurrency", "2", "--cpus-per-trial", "1", "--fix", "optim.patience=0", "--experiment", "bench",
           "--storage-path", str(store), "--no-tracking",  # tracking is bench_tracking.py's business
           "--no-baseline", "--confirm-top", "0"]  # the search alone: bench_arms.py measures the arms
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    tune_s = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"losstune tune failed:\n{proc.stderr[-2000:]}")
    configs = [json.loads((d / "params.json").read_text()) for d in sorted((store / "bench").glob("train_trial_*"))]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    data = prepare_data(data_spec)
    scenario = load_scenario("rare_disease_detection")
    space = scenario_space(scenario, fixed={"optim.patience": 0, "optim.max_epochs": args.epochs})
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    for c in configs:
        study.enqueue_trial(space.to_optuna(c))
    for c in configs:
        trial = study.ask()
        constants = space(trial)  # the enqueued values are suggested, as a job's searcher suggests them
        result = fit(space.base.with_overrides({**constants, **c}), data)
        study.tell(trial, result.best["objective"])
    seq_s = time.perf_counter() - t0

    print(f"{len(configs)} trials x {args.epochs} epochs on {data_spec} ({len(data.train)} training rows)")
    print(f"losstune tune (2 concurrent, 1 CPU each, Ray start included): {tune_s:7.1f} s")
    print(f"same configs one after another, plain Optuna, {torch.get_num_threads()} torch threads: {seq_s:7.1f} s")
    print(f"ratio tune / sequential: {tune_s / seq_s:.2f} (goal <= 0.65)")


if __name__ == "__main__":
    main()
