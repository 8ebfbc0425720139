"""How fast the CLI answers: the median wall time of 10 fresh processes per command.

    python benchmarks/bench_cli.py [--runs 10]

Goals (issue 12): `losstune --help` and `losstune tune --help` <= 0.5 s, `losstune scenarios list`
<= 1 s. Each command's modules (torch, torchmetrics, pandas, Ray, Optuna, MLflow) are imported when
it runs, not when the CLI starts; printed beside the times: which of them each command loaded.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import checkout  # noqa: F401  (first: this checkout's code, not the one installed in the venv)

COMMANDS = (["--help"], ["tune", "--help"], ["submit", "--help"], ["scenarios", "list"])
HEAVY = ("torch", "torchmetrics", "pandas", "ray", "optuna", "mlflow")
GOALS = {"--help": 0.5, "tune --help": 0.5, "submit --help": 0.5, "scenarios list": 1.0}

_PROBE = """
import sys
sys.argv = ["losstune", *sys.argv[1:]]
try:
    from tuner.cli import main
    main(sys.argv[1:])
except SystemExit:
    pass
print("LOADED", ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    print(f"{'command':18} {'median s':>9} {'min s':>7} {'goal s':>7}  heavy modules loaded")
    for argv in COMMANDS:
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tuner.cli", *argv], capture_output=True, check=False)
            times.append(time.perf_counter() - t0)
        probe = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *argv], capture_output=True,
                               text=True)
        loaded = next((ln.split(" ", 1)[1] if " " in ln else "" for ln in probe.stderr.splitlines()
                       if ln.startswith("LOADED")), "?")
        name = " ".join(argv)
        print(f"{name:18} {statistics.median(times):9.2f} {min(times):7.2f} {GOALS[name]:7.1f}  {loaded or 'none'}")


if __name__ == "__main__":
    main()
