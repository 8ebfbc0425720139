"""Does a job stay light at scale? A 1M-row table, and 500 trials.

    python benchmarks/bench_scale.py [--part table,trials] [--rows 1000000] [--repeats 2]
                                     [--trials 500] [--concurrency 2]

table   A --rows x 60 table (48 numeric columns with 5-30% missing values, 11 text categoricals of
        3-40 levels with missing values, one label at about 1:100) written once as CSV and as
        Parquet. For each format, in fresh processes (alternating, --repeats each): pandas reading
        the file alone, and `prepare_data` (read, check, split, fit the preprocessor, tensors).
        Prints the time ratio (goal: CSV <= 2x, Parquet <= 3x) and each one's peak RSS, against the raw frame's
        size in memory (`DataFrame.memory_usage(deep=True)`).
trials  --trials trials of one epoch each on a small table (synthetic:rare, 2,000 rows), through
        `run_job` with MLflow tracking into a local sqlite store, as `losstune tune` runs them. The
        driver's peak RSS (and its RSS then) when the 50th and the last trial ended (goal: last <=
        1.2x the 50th), and
        Tune's bookkeeping share of the search's wall time: 1 - (time inside trials / concurrency) /
        wall, next to Ray's published ~14% for 10,000 one-second trials.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import checkout  # noqa: F401  (first: this checkout's code, not the one installed in the venv)

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

N_NUMERIC, N_CATEGORICAL = 48, 11

_CHILD = r"""
import json, resource, sys, time
kind, path = sys.argv[1], sys.argv[2]
import pandas as pd
if kind == "prepare":
    from trainables.data import prepare_data
t = time.perf_counter()
if kind == "pandas":
    frame = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path, low_memory=False)
    extra = {"frame_bytes": int(frame.memory_usage(deep=True).sum())}
else:
    data = prepare_data(path, ["label"])
    extra = {"features": data.n_features, "train_rows": len(data.train)}
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **extra}))
"""


def write_table(rows: int, folder: Path) -> tuple[Path, Path]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    cols: dict[str, object] = {}
    signal = np.zeros(rows)
    for j in range(N_NUMERIC):
        v = rng.normal(size=rows).astype(np.float32)
        if j < 6:
            signal += v * (0.8 - 0.1 * j)
        v[rng.random(rows) < 0.05 + 0.25 * (j % 6) / 5] = np.nan
        cols[f"num_{j}"] = np.round(v, 4)
    for j in range(N_CATEGORICAL):
        levels = np.array([f"c{j}_{k}" for k in range(3 + 37 * j // max(N_CATEGORICAL - 1, 1))], dtype=object)
        codes = rng.integers(0, len(levels), size=rows)
        v = levels[codes]
        v[rng.random(rows) < 0.1] = None
        if j == 0:
            signal += np.where(codes == 0, 1.0, 0.0)
        cols[f"cat_{j}"] = v
    logit = signal - np.quantile(signal, 0.99)  # about 1 in 100 positive
    cols["label"] = (rng.random(rows) < 1 / (1 + np.exp(-4 * logit))).astype(np.int8)
    frame = pd.DataFrame(cols)
    csv, parquet = folder / "table.csv", folder / "table.parquet"
    frame.to_csv(csv, index=False)
    frame.to_parquet(parquet, index=False)
    return csv, parquet


def child(kind: str, path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, kind, str(path)], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parent.parent)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table_part(args) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    t = time.perf_counter()
    csv, parquet = write_table(args.rows, folder)
    print(f"table: {args.rows:,} rows x {N_NUMERIC + N_CATEGORICAL + 1} columns; CSV {csv.stat().st_size / 2**20:.0f} "
          f"MiB, Parquet {parquet.stat().st_size / 2**20:.0f} MiB (written in {time.perf_counter() - t:.0f} s, "
          f"{folder})")
    lines = []
    for path in (csv, parquet):
        runs: dict[str, list[dict]] = {"pandas": [], "prepare": []}
        for _ in range(args.repeats):
            for kind in runs:
                runs[kind].append(child(kind, path))
        p_wall = statistics.median(r["wall_s"] for r in runs["pandas"])
        q_wall = statistics.median(r["wall_s"] for r in runs["prepare"])
        p_rss = max(r["peak_rss"] for r in runs["pandas"])
        q_rss = max(r["peak_rss"] for r in runs["prepare"])
        frame = runs["pandas"][0]["frame_bytes"]
        fmt = path.suffix[1:]
        print(f"  {fmt:8} pandas read {p_wall:6.1f} s, peak RSS {p_rss / 2**30:5.2f} GiB | "
              f"prepare_data {q_wall:6.1f} s, "
              f"peak RSS {q_rss / 2**30:5.2f} GiB ({runs['prepare'][0]['features']} features, "
              f"{runs['prepare'][0]['train_rows']:,} train rows) | raw frame {frame / 2**30:.2f} GiB")
        goal = " (goal <= 2)" if fmt == "csv" else " (goal <= 3)"
        lines.append(f"{fmt:8} prepare_data / pandas read: time {q_wall / p_wall:.2f}x{goal}, peak RSS "
                     f"{q_rss / p_rss:.2f}x; prepare_data peak RSS / raw frame {q_rss / frame:.2f}x")
    for p in (csv, parquet):
        p.unlink()
    folder.rmdir()
    return lines


def trials_part(args) -> list[str]:
    import psutil
    import ray
    from ray.tune import Callback

    from tuner.job.plan import plan_job
    from tuner.job.run import Tracking, run_job
    from tuner.job.spec import JobSpec

    class Watch(Callback):
        def __init__(self) -> None:
            self.ended, self.peak_at, self.now_at, self.in_trials = 0, {}, {}, 0.0
            self.started = time.perf_counter()

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.ended += 1
            self.in_trials += float((trial.last_result or {}).get("time_total_s", 0.0))
            if self.ended in (50, args.trials) or self.ended % 100 == 0:
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                self.peak_at[self.ended] = rss
                self.now_at[self.ended] = now = psutil.Process().memory_info().rss
                print(f"  trial {self.ended:4d} ended at {time.perf_counter() - self.started:6.1f} s, driver peak RSS "
                      f"{rss / 2**20:.0f} MiB, RSS now {now / 2**20:.0f} MiB", flush=True)

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    store = Path(tempfile.mkdtemp(prefix="bench-scale-trials-"))
    spec = JobSpec.from_options(data="synthetic:rare?n=2000", num_trials=args.trials, max_epochs=1,
                                concurrency=args.concurrency, experiment="scale", baseline_trials=0, confirm_top=0)
    job, data, space, pretrained = plan_job(spec, str(store))
    watch = Watch()
    print(f"trials: {args.trials} trials x 1 epoch, {args.concurrency} at a time, MLflow into sqlite ({store})")
    out = run_job(job, data, space, pretrained, address=None, verbose=0, callbacks=[watch],
                  tracking=Tracking(uri=f"sqlite:///{store}/mlflow.db", experiment="scale"))
    wall = out.wall_by_part["stack"]
    ideal = watch.in_trials / args.concurrency
    first, last = watch.peak_at.get(50), watch.peak_at.get(args.trials)
    lines = [f"search wall {wall:.0f} s for {watch.ended} trials ({wall / max(watch.ended, 1):.2f} s each); "
             "time inside "
             f"trials {watch.in_trials:.0f} s ({watch.in_trials / max(watch.ended, 1):.2f} s each); Tune's bookkeeping "
             f"share {1 - ideal / wall:.0%}, {(wall - ideal) / max(watch.ended, 1):.3f} s per trial "
             "(Ray publishes ~14% for 10,000 1-s trials: ~0.14 s per trial)"]
    if first and last:
        lines.append(f"driver peak RSS at trial {args.trials} / at trial 50: {last / first:.2f}x (goal <= 1.2; "
                     f"{first / 2**20:.0f} -> {last / 2**20:.0f} MiB)")
        now_first, now_last = watch.now_at[50], watch.now_at[args.trials]
        lines.append(f"driver RSS at trial {args.trials} / at trial 50: {now_last / now_first:.2f}x "
                     f"({now_first / 2**20:.0f} -> {now_last / 2**20:.0f} MiB)")
    ray.shutdown()
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="table,trials")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    lines = []
    parts = args.part.split(",")
    if "table" in parts:
        lines += table_part(args)
    if "trials" in parts:
        lines += trials_part(args)
    print("\nratios:")
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    main()
