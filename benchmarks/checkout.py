"""Imported first by every benchmark: the benchmark measures the checkout it sits in.

losstune is installed in the venv in editable mode from one checkout; a benchmark run from another
(an older commit's worktree, for a before/after table) would otherwise import the installed
checkout's code, itself and its child processes (`python -m tuner.cli`, Ray's workers), and
compare one code with itself. Putting this checkout first on ``sys.path`` and ``PYTHONPATH``, on
import, makes "before" mean the old commit's code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)

sys.path.insert(0, ROOT)
_inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *_inherited])
