"""trainables.optim: torch's optimisers without the compiler's import, computing what torch's do."""

from __future__ import annotations

import json
import subprocess
import sys

_FITS = r"""
import json, sys
import numpy as np, torch
import trainables.calibration as C
if sys.argv[1] == "torch":
    C._LBFGS = torch.optim.LBFGS  # torch's own, before any fit
rng = np.random.default_rng(0)
y = (rng.random((3000, 3)) < [0.05, 0.2, 0.5]).astype(np.float64)
z = rng.normal(size=(3000, 3)) * 2 + 3 * y - 2
t, p = C.fit_temperature(z, y), C.fit_platt(z, y)
print(json.dumps({"compiler": "torch._dynamo" in sys.modules, "lbfgs": C._LBFGS.__name__,
                  "values": [float(v).hex() for v in (*t, *p.a, *p.b)], "t": list(t), "a": list(p.a)}))
"""


def _fits(which: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _FITS, which], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_calibration_fits_never_import_the_compiler_and_match_torchs_lbfgs():
    """A job's driver fits temperatures and Platt's (a, b) with L-BFGS after its last trial; torch's own
    L-BFGS imported ``torch._dynamo`` at the first fit (1.1 s of every job). In fresh processes: the fits
    leave it unimported, and torch's L-BFGS with the same settings gives the same numbers bit for bit."""
    mine, torchs = _fits("mine"), _fits("torch")
    assert mine["lbfgs"] == "_LBFGS" and not mine["compiler"]
    assert torchs["lbfgs"] == "LBFGS" and torchs["compiler"]  # torch's own does import it: the check can fail
    assert mine["values"] == torchs["values"]
    assert all(0.05 < t < 20 for t in mine["t"]) and all(a > 0 for a in mine["a"])  # real fits, not the bounds
