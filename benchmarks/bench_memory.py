"""Memory of concurrent trials: the data goes to Ray's object store once and trials map it.

    python benchmarks/bench_memory.py [--rows 1000000] [--features 120]

Runs the same 2-trial job (2 at a time, 1 epoch) twice on a local Ray runtime: on a ~500 MB
dataset and on a tiny one of the same shape. During each run it samples the PSS (proportional set
size: a page shared by several processes counts once in the sum) of this driver and of every
process of that runtime — raylet with its object store, GCS, workers — and keeps the peak. The
driver holds the big arrays during both runs, so the difference between the two peaks is what
handing them to 2 concurrent trials costs: the object store's copy plus each trial's working
memory. It is printed against one copy of the dataset (goal <= 1.3x: trials map the object store's
copy instead of holding their own).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import checkout  # noqa: F401  (first: this checkout's code, not the one installed in the venv)
import numpy as np
import psutil
import torch

from trainables.data import PreparedData, Split


def synthetic_arrays(rows: int, features: int) -> PreparedData:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    logit = x[:, :5] @ np.array([1.2, -1.0, 0.8, 0.7, -0.6], dtype=np.float32) - 3.5
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)[:, None]
    cut1, cut2 = int(rows * 0.6), int(rows * 0.8)
    t = lambda a, b: Split(torch.from_numpy(x[a:b]), torch.from_numpy(y[a:b]))  # noqa: E731
    return PreparedData(train=t(0, cut1), val=t(cut1, cut2), test=t(cut2, rows),
                        feature_names=[f"f{i}" for i in range(features)], label_names=["y"], preprocessor=None,
                        source=f"arrays {rows}x{features}", fingerprint=f"mem{rows}", split_fingerprint=f"mem{rows}")


class PeakPSS:
    """Samples the summed PSS of this process and of every process started with RAY_TMPDIR=tmpdir."""

    def __init__(self, tmpdir: str) -> None:
        self.tmpdir, self.peak, self._stop = tmpdir, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            total = 0
            for p in psutil.process_iter():
                try:
                    if p.pid == me or p.environ().get("RAY_TMPDIR") == self.tmpdir:
                        total += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> PeakPSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def peak_of_job(data: PreparedData, tmpdir: str, store: str, name: str) -> int:
    from search_spaces import load_scenario, scenario_space
    from tuner.job.plan import TuneJob
    from tuner.job.run import run_job
    from tuner.job.spec import JobSpec

    space = scenario_space(load_scenario("baseline"), fixed={"optim.max_epochs": 1, "optim.batch_size": 4096})
    spec = JobSpec.from_options(data=str(data.source), scenario="baseline", num_trials=2, scheduler="fifo",
                                concurrency=2, max_failures=0, baseline_trials=0, confirm_top=0)
    job = TuneJob(experiment=name, storage_path=store, spec=spec, data_fingerprint=data.fingerprint,
                  split_fingerprint=data.split_fingerprint, scenario="baseline", detection=None,
                  base_config=space.base.to_dict(), search_space=space.describe(), searched=space.searched_keys(),
                  space_spec=space.to_dict())
    with PeakPSS(tmpdir) as meter:
        run_job(job, data, space, None, address=None, verbose=0)
    return meter.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=120)
    args = ap.parse_args()
    tmpdir = tempfile.mkdtemp(prefix="ltmem-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmpdir  # the runtime's processes inherit it: that is how they are found
    store = tempfile.mkdtemp(prefix="bench-mem-")
    big = synthetic_arrays(args.rows, args.features)
    size = sum(t.numel() * t.element_size() for s in (big.train, big.val, big.test) for t in (s.x, s.y))
    small = synthetic_arrays(2000, args.features)
    base = peak_of_job(small, tmpdir, store, "small")
    peak = peak_of_job(big, tmpdir, store, "big")
    cost = peak - base
    print(f"dataset: {args.rows} x {args.features} float32 = {size / 2**20:.0f} MiB (one copy)")
    print(f"peak PSS, driver + Ray runtime, 2 concurrent trials: {peak / 2**20:.0f} MiB on it, "
          f"{base / 2**20:.0f} MiB on a tiny dataset of the same shape (driver holding the big one both times)")
    print(f"what handing it to 2 concurrent trials costs: {cost / 2**20:.0f} MiB = {cost / size:.2f}x one copy "
          "(goal <= 1.3)")


if __name__ == "__main__":
    main()
