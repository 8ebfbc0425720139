"""The CLI answers at once: a command imports the heavy libraries it needs when it runs, never at
start (the times are benchmarks/bench_cli.py's business; here, which modules got loaded)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "torchmetrics", "pandas", "ray", "optuna", "mlflow")

_PROBE = """
import sys
try:
    from tuner.cli import main
    main(sys.argv[1:])
except SystemExit:
    pass
print("LOADED", ",".join(m for m in HEAVY if m in sys.modules), file=sys.stderr)
""".replace("HEAVY", repr(HEAVY))


@pytest.mark.parametrize("argv,allowed", [
    (["--help"], ()), (["tune", "--help"], ()), (["submit", "--help"], ()), (["predict", "--help"], ()),
    (["scenarios", "list"], ("optuna",)),  # it shows the search spaces, which are Optuna distributions
])
def test_a_command_loads_only_what_it_needs(argv, allowed):
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120)
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("LOADED"))
    loaded = {m for m in line.removeprefix("LOADED").strip().split(",") if m}
    assert loaded <= set(allowed), (argv, loaded)
    assert done.stdout.strip(), argv  # and it answered


def test_the_library_surface_still_imports_by_name():
    import trainables

    assert trainables.Config().optim.max_epochs > 0 and callable(trainables.fit)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        trainables.nope  # noqa: B018


_BLOCKED = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from tuner.cli import main
rc = main(sys.argv[1:])
print("RC", rc)
"""


@pytest.mark.parametrize("argv,expect", [(["--help"], "tune"), (["tune", "--help"], "--num-trials"),
                                         (["scenarios", "list"], "rare_disease_detection")])
def test_the_cli_answers_without_torch(argv, expect):
    done = subprocess.run([sys.executable, "-c", _BLOCKED, *argv], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert expect in done.stdout
    # --help ends in SystemExit(0) inside click; `scenarios list` returns 0
    assert done.returncode == 0 and ("RC 0" in done.stdout or argv[-1] == "--help"), done.stdout[-500:]
