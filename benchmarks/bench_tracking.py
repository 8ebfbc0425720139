"""What MLflow tracking costs a job: the same `losstune tune` job with and without it.

    python benchmarks/bench_tracking.py [--trials 16] [--epochs 10] [--rows 40000] [--repeats 2]

Starts a local `mlflow server` (sqlite backend, 127.0.0.1, one worker), then runs the same job
(16 trials, 2 at a time, FIFO) through the CLI with `--tracking-uri` and with `--no-tracking`,
alternating, and prints the median wall times and their ratio (goal <= 1.10).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import checkout  # noqa: F401  (first: this checkout's code, not the one installed in the venv)


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
                             "--workers", "1", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)
    sys.exit("mlflow server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rows", type=int, default=40000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    proc, url = start_server(root)
    try:
        times: dict[str, list[float]] = {"tracking": [], "no tracking": []}
        for i in range(args.repeats):
            for arm in ("no tracking", "tracking"):
                extra = ["--tracking-uri", url] if arm == "tracking" else ["--no-tracking"]
                cmd = [sys.executable, "-m", "tuner.cli", "tune", "--data", f"synthetic:rare?n={args.rows}",
                       "--scenario", "rare_disease_detection", "--num-trials", str(args.trials), "--max-epochs",
                       str(args.epochs), "--scheduler", "fifo", "--concurrency", "2", "--experiment",
                       f"{arm.replace(' ', '-')}-{i}", "--storage-path", str(root / "results"), *extra]
                t0 = time.perf_counter()
                out = subprocess.run(cmd, capture_output=True, text=True)
                times[arm].append(time.perf_counter() - t0)
                if out.returncode != 0:
                    sys.exit(f"{arm} failed:\n{out.stderr[-2000:]}")
        a, b = statistics.median(times["tracking"]), statistics.median(times["no tracking"])
        print(f"{args.trials} trials x {args.epochs} epochs, 2 at a time; median of {args.repeats} runs each")
        runs = {k: ", ".join(f"{t:.1f}" for t in v) for k, v in times.items()}
        print(f"with MLflow tracking (local server): {a:6.1f} s   ({runs['tracking']})")
        print(f"without tracking:                    {b:6.1f} s   ({runs['no tracking']})")
        print(f"ratio: {a / b:.3f} (goal <= 1.10)")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
