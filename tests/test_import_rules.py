"""trainables (but tune_trainable) and search_spaces import with Ray and MLflow unimportable."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import importlib, pkgutil, sys
sys.modules["ray"] = None      # any `import ray` now raises ImportError
sys.modules["mlflow"] = None
import trainables, search_spaces
names = []
for pkg in (trainables, search_spaces):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if info.name == "trainables.tune_trainable":
            continue
        importlib.import_module(info.name)
        names.append(info.name)
assert not any(m == "ray" or m.startswith(("ray.", "mlflow")) for m in sys.modules if sys.modules[m] is not None)
print(len(names), " ".join(sorted(names)))
"""


def test_trainables_and_search_spaces_import_without_ray_or_mlflow():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "trainables.trainer" in out.stdout and "trainables.losses" in out.stdout
