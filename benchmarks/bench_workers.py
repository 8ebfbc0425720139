"""What one Ray Tune worker costs to start, and so what each Tune run of a job costs before it trains.

    python benchmarks/bench_workers.py [--starts 6]

Every Tune run starts workers of its own (Ray actors; ``reuse_actors`` reuses them between the run's
trials, never across runs), and a job is several runs: the stack's search, the baseline arm's, the
confirmation. This starts, one at a time on a local 2-CPU runtime and interleaved, a bare Ray actor
and an actor that imports what a trial's worker imports (Ray Tune's function trainable and
losstune's ``trainables.tune_trainable``, which import torch), each until it answers, and prints the
medians of its wall time and of the CPU-seconds the whole machine spent meanwhile (``/proc/stat``, the
idle machine's rate subtracted), and the trial worker ÷ the bare actor last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import checkout  # noqa: F401  (first: this checkout's code, not the one installed in the venv)


def busy_seconds() -> float:
    """The machine's non-idle CPU time so far, in seconds (every core, from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=6, help="starts of each kind of actor")
    args = ap.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})

    @ray.remote(num_cpus=1)
    class Bare:
        def ready(self) -> int:
            return os.getpid()

    @ray.remote(num_cpus=1)
    class TrialWorker:
        def __init__(self) -> None:
            import ray.tune.trainable.function_trainable  # noqa: F401  (the class Tune's actor runs)

            import trainables.tune_trainable  # noqa: F401  (what unpickling losstune's trainable imports)

        def ready(self) -> int:
            return os.getpid()

    time.sleep(3.0)  # Ray's own start settles
    c0, t0 = busy_seconds(), time.perf_counter()
    time.sleep(3.0)
    idle_rate = (busy_seconds() - c0) / (time.perf_counter() - t0)  # Ray's services at rest

    kinds = {"bare Ray actor": Bare, "trial worker (Tune + torch + losstune)": TrialWorker}
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for i in range(args.starts):
        for name, cls in kinds.items():
            c0, t0 = busy_seconds(), time.perf_counter()
            actor = cls.remote()
            ray.get(actor.ready.remote())
            wall = time.perf_counter() - t0
            cpu = busy_seconds() - c0 - idle_rate * wall
            got[name].append((wall, cpu))
            ray.kill(actor)
            time.sleep(1.0)  # its process gone before the next start
        print(f"start {i + 1}: " + ", ".join(f"{n} {w:.2f} s wall {c:.2f} CPU-s" for n, v in got.items()
                                             for w, c in v[-1:]), flush=True)
    ray.shutdown()

    med = {n: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for n, v in got.items()}
    print(f"\nidle machine: {idle_rate:.2f} CPU-s per second (subtracted)")
    for name, (wall, cpu) in med.items():
        print(f"  {name:42s} median {wall:.2f} s wall, {cpu:.2f} CPU-s")
    (bw, bc), (tw, tc) = med.values()
    print(f"\nratios:\n  trial worker ÷ bare actor: wall {tw / bw:.2f}, CPU {tc / bc:.2f}; a trial worker costs "
          f"{tc:.2f} CPU-s to start, so each Tune run of a job spends about {tc:.1f} CPU-s per worker it starts")


if __name__ == "__main__":
    main()
