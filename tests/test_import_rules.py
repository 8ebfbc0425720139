"""The architecture as a test. trainables (but tune_trainable) and search_spaces import with Ray and
MLflow unimportable, and never import tuner/. tuner/ (tests/import_rules.py has the rules): its
sub-packages are layers whose arrows point one way, no import cycle (function-level imports included),
no private name of another module. The rules are shown to catch each kind of break on a small package
written for the purpose."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.import_rules import LAYERS, arrows, problems

ROOT = Path(__file__).resolve().parents[1]

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


def test_tuner_keeps_its_layers():
    assert problems(ROOT, "tuner") == []


def test_every_module_of_tuner_is_in_a_layer():
    assert {p.name for p in (ROOT / "tuner").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS)
    assert sorted(p.name for p in (ROOT / "tuner").glob("*.py")) == ["__init__.py"]


@pytest.mark.parametrize("package", ["trainables", "search_spaces"])
def test_the_trainer_and_the_spaces_never_import_tuner(package):
    import ast

    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "tuner" or n.startswith("tuner.") for n in names), (path, node.lineno)


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for folder in {p.parent for p in (root / "pkg").rglob("*.py")}:
        (folder / "__init__.py").touch()
    return root


GOOD = {
    "core/files.py": "NAME = 'x'\n",
    "cluster/run.py": "from pkg.core.files import NAME\n",
    "record/spool.py": "from pkg.cluster import run\n",
    "present/text.py": "from pkg.core import files\n",
    "job/plan.py": "from pkg.record.spool import run\nfrom pkg.present.text import files\n",
    "cli/main.py": "def main():\n    from pkg.job import plan\n",
}


def test_a_package_that_keeps_the_rules_has_no_problem(tmp_path):
    assert problems(_package(tmp_path, GOOD), "pkg") == []


def test_a_cycle_hidden_in_a_function_is_caught(tmp_path):
    root = _package(tmp_path, {**GOOD, "job/arms.py": "from pkg.job import plan\n",
                               "job/plan.py": "def later():\n    from pkg.job.arms import x\n"})
    assert problems(root, "pkg") == ["import cycle: pkg.job.arms → pkg.job.plan → pkg.job.arms"]


def test_a_longer_cycle_is_shown_as_the_path_round_it(tmp_path):
    root = _package(tmp_path, {**GOOD, "job/a.py": "import pkg.job.b\n", "job/b.py": "from pkg.job import c\n",
                               "job/c.py": "def f():\n    import pkg.job.a\n"})
    assert problems(root, "pkg") == ["import cycle: pkg.job.a → pkg.job.b → pkg.job.c → pkg.job.a"]


@pytest.mark.parametrize("code", ["from pkg.core.files import _secret\n",
                                  "from pkg.core import files\nx = files._secret\n",
                                  "import pkg.core.files as f\ndef g():\n    return f._secret\n"])
def test_a_private_name_of_another_module_is_caught(tmp_path, code):
    root = _package(tmp_path, {**GOOD, "cluster/run.py": code})
    found = problems(root, "pkg")
    assert len(found) == 1 and found[0].startswith("pkg.cluster.run (line ") and \
        found[0].endswith("uses private _secret of pkg.core.files"), found


@pytest.mark.parametrize(("module", "code", "words"), [
    ("core/files.py", "from pkg.job import plan\n", "an arrow from core to job, which is above it"),
    ("record/spool.py", "def f():\n    from pkg.present import text\n",
     "an arrow from record to present, which is beside it"),
    ("present/text.py", "import pkg.cli.main\n", "an arrow from present to cli, which is above it"),
])
def test_an_arrow_up_or_sideways_is_caught(tmp_path, module, code, words):
    root = _package(tmp_path, {**GOOD, module: code})
    found = [p for p in problems(root, "pkg") if "arrow" in p]
    assert len(found) == 1 and words in found[0], problems(root, "pkg")


def test_a_module_outside_the_layers_is_caught(tmp_path):
    root = _package(tmp_path, {**GOOD, "helpers.py": "from pkg.core.files import NAME\n"})
    assert problems(root, "pkg") == ["pkg.helpers is in no layer (cli, job, present, record, cluster, core)"]


def test_relative_imports_are_followed(tmp_path):
    root = _package(tmp_path, {**GOOD, "core/files.py": "from ..job import plan\n"})
    assert [(a.source, a.target) for a in arrows(root, "pkg") if a.source == "pkg.core.files"] == \
        [("pkg.core.files", "pkg.job.plan")]
