"""Ray Tune's overhead: `losstune tune` vs the same trials one after another in one process.

    python benchmarks/bench_tune_overhead.py [--trials 16] [--epochs 10] [--rows 20000]

1. `losstune tune` (a subprocess, as a user runs it: Ray start included) runs 16 trials, 2 at a
   time, FIFO and without early stopping, so every trial does its full work.
2. The same 16 configurations, read back from the job, run one after another in this process with
   a plain Optuna study (enqueued, asked, trained with fit(), told).
Prints both wall times and their ratio (goal <= 0.65: two cores should nearly halve the time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

from search_spaces import load_scenario, sample_config, scenario_space
from trainables.data import prepare_data
from trainables.trainer import fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rows", type=int, default=80000, help="synthetic rows (80000: trials of ~3 s on 2 cores)")
    args = ap.parse_args()
    data_spec = f"synthetic:rare?n={args.rows}"
    store = Path(tempfile.mkdtemp(prefix="bench-tune-"))

    cmd = [sys.executable, "-m", "tuner.cli", "tune", "--data", data_spec, "--scenario", "rare_disease_detection",
           "--num-trials", str(args.trials), "--max-epochs", str(args.epochs), "--scheduler", "fifo",
           "--concurrency", "2", "--cpus-per-trial", "1", "--fix", "optim.patience=0", "--experiment", "bench",
           "--storage-path", str(store), "--no-tracking"]  # tracking is bench_tracking.py's business
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
        sampled = sample_config(space, trial)
        result = fit(space.base.with_overrides({**sampled, **c}), data)
        study.tell(trial, result.best["objective"])
    seq_s = time.perf_counter() - t0

    print(f"{len(configs)} trials x {args.epochs} epochs on {data_spec} ({len(data.train)} training rows)")
    print(f"losstune tune (2 concurrent, 1 CPU each, Ray start included): {tune_s:7.1f} s")
    print(f"same configs one after another, plain Optuna, {torch.get_num_threads()} torch threads: {seq_s:7.1f} s")
    print(f"ratio tune / sequential: {tune_s / seq_s:.2f} (goal <= 0.65)")


if __name__ == "__main__":
    main()
