"""No command deletes or overwrites a file it did not write itself.

Unrelated files are planted in every folder a command writes to — the current folder, the parent
of --out, the storage path, the folder of the sqlite store — and must survive every command, with
and without --overwrite. --overwrite replaces only what losstune wrote, atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.tuner.conftest import SEARCH_ONLY, SMALL
from tuner.cli import main
from tuner.core.outputs import RUN_MARKER, write_run_dir


def _plant(folder: Path) -> dict[Path, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    planted = {folder / "notes.txt": b"the user's notes", folder / "patients.csv": b"id,age\n1,50\n",
               folder / "sub" / "keep.bin": os.urandom(64)}
    for p, content in planted.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    return planted


def _survived(planted: dict[Path, bytes]) -> None:
    for p, content in planted.items():
        assert p.is_file() and p.read_bytes() == content, f"{p} was changed or removed"


def _data(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    y = (x[:, 0] + rng.normal(scale=0.7, size=500) > 1.0).astype(int)
    p = folder / "data.csv"
    pd.DataFrame(x, columns=["a", "b", "c"]).assign(outcome=y).to_csv(p, index=False)
    return p


def test_train_and_overwrite_touch_only_their_own_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    planted = _plant(tmp_path) | _plant(tmp_path / "runs")
    data = _data(tmp_path)
    args = ["train", "--data", str(data), "--label-col", "outcome", "--set", "optim.max_epochs=2", "--quiet",
            "--out", "runs/first"]
    assert main(args) == 0
    first = (tmp_path / "runs/first/metrics.json").read_bytes()
    assert main([*args, "--set", "seed=1"]) == 2  # exists: refused without --overwrite
    assert main([*args, "--set", "seed=1", "--overwrite"]) == 0  # its own folder: replaced
    assert (tmp_path / "runs/first/metrics.json").read_bytes() != first
    _survived(planted)
    # a file planted inside losstune's own folder makes it the user's: --overwrite refuses it from then on
    (tmp_path / "runs/first/my_analysis.ipynb").write_text("{}")
    assert main([*args, "--overwrite"]) == 2
    assert "holds files losstune did not write (my_analysis.ipynb)" in capsys.readouterr().err
    assert (tmp_path / "runs/first/my_analysis.ipynb").read_text() == "{}"
    assert not list((tmp_path / "runs").glob(".first.*"))  # no temporary folder left behind


def test_a_failed_replacement_leaves_the_old_output_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    write_run_dir(out, {"config.yaml": "a: 1\n", "model.pt": b"old weights"}, overwrite=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class Unwritable:  # fails halfway through writing the new output
        pass

    with pytest.raises(TypeError):
        write_run_dir(out, {"config.yaml": "a: 2\n", "model.pt": Unwritable()}, overwrite=True)  # type: ignore[dict-item]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing half-written beside it
    assert json.loads((out / RUN_MARKER).read_text())["files"] == ["config.yaml", "model.pt"]


@pytest.mark.slow
def test_tune_best_and_export_leave_planted_files_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # The store beside the planted files (mlflow.db and mlruns/ next to them). Absolute: MLflow caches
    # a store per URI for the life of the process, and relative URIs of other tests would collide.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    planted = _plant(tmp_path) | _plant(tmp_path / "results") | _plant(tmp_path / "exports")
    base = ["tune", "--data", SMALL, "--num-trials", "2", "--max-epochs", "2", "--storage-path", "results",
            *SEARCH_ONLY]
    assert main([*base, "--experiment", "first"]) == 0
    assert main([*base, "--experiment", "first"]) == 2  # an existing job is never started over
    assert main(["best", "--experiment", "first"]) == 0
    out = tmp_path / "exports" / "winner.yaml"
    assert main(["export", "--experiment", "first", "--out", str(out)]) == 0
    exported = out.read_text()
    assert main(["export", "--experiment", "first", "--out", str(out)]) == 2  # exists
    assert main(["export", "--experiment", "first", "--out", str(out), "--overwrite"]) == 0  # its own export
    assert yaml.safe_load(out.read_text())["provenance"] == yaml.safe_load(exported)["provenance"]
    assert main(["export", "--experiment", "first", "--out", str(tmp_path / "exports" / "notes.txt"),
                 "--overwrite"]) == 2
    capsys.readouterr()
    _survived(planted)
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "results" / "first").is_dir()
