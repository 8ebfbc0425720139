"""Bad input to `losstune predict` (and the split options of train, tune and scenarios detect),
through the real CLI: exit status 2, exactly one line `losstune: error: ...` that names what is
wrong, no traceback, nothing written, and the check made before any compute."""

from __future__ import annotations

import io
import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.tuner.conftest import run_cli

ROWS = "counted from 0 after the header"


def _table(n: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (1.5 * x[:, 0] + x[:, 1] + rng.normal(scale=0.8, size=n) > 1.5).astype(int)
    df = pd.DataFrame(x, columns=["a", "b", "c"]).assign(site=rng.choice(["north", "south"], n),
                                                         smoker=rng.choice(["t", "f"], n), outcome=y)
    df.loc[rng.random(n) < 0.1, "b"] = np.nan
    return df


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model folder whose preprocessor knows a, b, c as numeric, site as categorical, smoker as yes/no."""
    d = tmp_path_factory.mktemp("predict_bad")
    _table().to_csv(d / "train.csv", index=False)
    from tuner.cli import main

    rc = main(["train", "--data", str(d / "train.csv"), "--label-col", "outcome", "--out", str(d / "model"),
               "--set", "optim.max_epochs=2", "--quiet"])
    assert rc == 0
    kinds = {c["name"]: c["kind"] for c in json.loads((d / "model" / "preprocessor.json").read_text())["columns"]}
    assert kinds == {"a": "numeric", "b": "numeric", "c": "numeric", "site": "categorical", "smoker": "boolean"}
    return d


def _one_error_line(rc: int, out: str, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("losstune: error:"), err
    assert "Traceback" not in err + out and out == "", out  # no predictions on stdout either
    return lines[0]


# --------------------------------------------------------------------------- 1. --split-seed
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
@pytest.mark.parametrize("command", ["train", "tune", "scenarios detect"])
def test_a_split_seed_outside_the_range_is_one_line(command, seed, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a command might leave behind would land here
    _table().to_csv(tmp_path / "d.csv", index=False)
    before = sorted(os.listdir(tmp_path))
    extra = {"train": ["--out", str(tmp_path / "run"), "--quiet"],
             "tune": ["--storage-path", str(tmp_path / "results"), "--no-tracking"],
             "scenarios detect": []}[command]
    rc, out, err = run_cli([*command.split(), "--data", str(tmp_path / "d.csv"), "--label-col", "outcome",
                            "--split-seed", seed, *extra], capsys)
    line = _one_error_line(rc, out, err)
    assert line.endswith(f"--split-seed must be an integer in [0, {2**32 - 1}], got {seed}"), line
    assert sorted(os.listdir(tmp_path)) == before


def test_the_largest_split_seed_is_accepted(tmp_path, capsys):
    _table().to_csv(tmp_path / "d.csv", index=False)
    rc, out, err = run_cli(["scenarios", "detect", "--data", str(tmp_path / "d.csv"), "--label-col", "outcome",
                            "--split-seed", str(2**32 - 1)], capsys)
    assert rc == 0, err


# --------------------------------------------------------------------------- 2. a damaged preprocessor.json
def _without(key: str, column: int):
    def edit(doc: dict) -> str:
        del doc["columns"][column][key]
        return json.dumps(doc)

    return edit


NO_COLUMNS = r"'columns' is missing, empty or not a list"
DAMAGED = [  # (case, what the file holds or how it is edited, why it is damaged)
    ("not-json", "{'columns': [", r"JSONDecodeError"),
    ("empty-file", "", r"JSONDecodeError"),
    ("not-utf8", b"\xff\xfe\x00garbage", r"UnicodeDecodeError"),
    ("a-list", "[1, 2, 3]", r"not a losstune-preprocessor-v1 document"),
    ("no-columns", json.dumps({"format": "losstune-preprocessor-v1"}), NO_COLUMNS),
    ("empty-columns", lambda doc: json.dumps({**doc, "columns": []}), NO_COLUMNS),
    ("columns-not-a-list", lambda doc: json.dumps({**doc, "columns": {"a": 1}}), NO_COLUMNS),
    ("column-not-a-mapping", lambda doc: json.dumps({**doc, "columns": ["a"]}), r"column 0: a str, not a mapping"),
    ("no-kind", _without("kind", 0), r"column 0: needs a 'name' and a 'kind'"),
    ("unknown-kind", lambda doc: json.dumps({**doc, "columns": [{**doc["columns"][0], "kind": "date"}]}),
     r"column 0: needs a 'name' and a 'kind' \(numeric, boolean, categorical\)"),
    ("no-median", _without("median", 1), r"column 1: needs finite numbers 'median', 'mean' and 'std'"),
    ("no-indicator", _without("indicator", 2), r"column 2: needs 'indicator'"),
    ("no-categories", _without("categories", 3), r"column 3: needs 'categories'"),
]


@pytest.mark.parametrize("case,content,reason", DAMAGED, ids=[c[0] for c in DAMAGED])
def test_a_damaged_preprocessor_file_is_named(case, content, reason, trained, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    path = model / "preprocessor.json"
    if callable(content):
        content = content(json.loads(path.read_text()))
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc, out, err = run_cli(["predict", "--model", str(model), "--data", str(trained / "train.csv")], capsys)
    line = _one_error_line(rc, out, err)
    assert f"'{path}' is damaged" in line and re.search(reason, line), line


def test_a_model_trained_on_feature_arrays_still_says_so(trained, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    (model / "preprocessor.json").write_text("{}")  # what `train` writes for .npz/.pt data
    rc, out, err = run_cli(["predict", "--model", str(model), "--data", str(trained / "train.csv")], capsys)
    assert "was trained on feature arrays, not on a table" in _one_error_line(rc, out, err)


# --------------------------------------------------------------------------- 3. --out that cannot be written
def _damaged_model(trained, tmp_path):
    """A model folder that fails as soon as it is read: an --out error must come first."""
    model = tmp_path / "damaged"
    shutil.copytree(trained / "model", model)
    (model / "preprocessor.json").write_text("not json")
    return model


def test_out_under_proc_is_refused_before_the_model_or_the_data_is_read(trained, tmp_path, capsys):
    model = _damaged_model(trained, tmp_path)
    rc, out, err = run_cli(["predict", "--model", str(model), "--data", str(tmp_path / "not-there.csv"),
                            "--out", "/proc/preds.csv"], capsys)
    line = _one_error_line(rc, out, err)
    assert "--out '/proc/preds.csv' cannot be created: '/proc' is not writable" in line, line
    assert not os.path.exists("/proc/preds.csv")


def test_out_under_a_file_is_refused(trained, tmp_path, capsys):
    (tmp_path / "afile").write_text("mine\n")
    rc, out, err = run_cli(["predict", "--model", str(trained / "model"), "--data", str(trained / "train.csv"),
                            "--out", str(tmp_path / "afile" / "p.csv")], capsys)
    line = _one_error_line(rc, out, err)
    assert f"'{tmp_path / 'afile'}' is a file, not a folder" in line, line
    assert (tmp_path / "afile").read_text() == "mine\n"


# --------------------------------------------------------------------------- 4. cells the model cannot read
def _with(rows, column, value, frame=None):
    df = (_table(n=50, seed=3) if frame is None else frame).astype({column: object})
    df.loc[rows, column] = value
    return df


CELLS = [  # (case, table, what the line says)
    ("text-in-numeric", _with([3, 9], "a", "abc"),
     rf"feature column 'a' in data file '.*bad\.csv' has 2 value\(s\) that are not numbers \(rows 3, 9, {ROWS}\); "
     r"the model reads 'a' as numeric"),
    ("inf", _with([7], "c", np.inf), rf"feature column 'c' .* 1 infinite value\(s\) \(rows 7, {ROWS}\)"),
    ("minus-inf-text", _with([0, 2], "a", "-inf"),
     rf"feature column 'a' .* 2 infinite value\(s\) \(rows 0, 2, {ROWS}\)"),
    ("many-rows", _with(list(range(10, 20)), "b", "n/a?"),
     rf"feature column 'b' .* 10 value\(s\) that are not numbers \(rows 10, 11, 12, 13, 14, \.\.\., {ROWS}\)"),
    ("unknown-word-in-yes-no", _with([5], "smoker", "maybe"),
     rf"feature column 'smoker' .* 1 value\(s\) that are not yes/no \(rows 5, {ROWS}\); the model reads 'smoker' as "
     r"yes/no \(1/0, true/false, t/f, yes/no or y/n"),
    ("number-in-yes-no", _with([1], "smoker", 2, frame=_table(n=50, seed=3).assign(
        smoker=lambda d: (d["smoker"] == "t").astype(int))),
     rf"feature column 'smoker' .* 1 value\(s\) that are not yes/no \(rows 1, {ROWS}\)"),
]


@pytest.mark.parametrize("case,frame,pattern", CELLS, ids=[c[0] for c in CELLS])
def test_a_cell_the_model_cannot_read_is_named_with_its_rows(case, frame, pattern, trained, tmp_path, capsys):
    frame.to_csv(tmp_path / "bad.csv", index=False)
    rc, out, err = run_cli(["predict", "--model", str(trained / "model"), "--data", str(tmp_path / "bad.csv"),
                            "--out", str(tmp_path / "p.csv")], capsys)
    line = _one_error_line(rc, out, err)
    assert re.search(pattern, line), line
    assert sorted(os.listdir(tmp_path)) == ["bad.csv"]  # no predictions, no temporary file


def test_text_in_a_parquet_numeric_column_is_named_too(trained, tmp_path, capsys):
    df = _table(n=50, seed=3).astype({"a": str})  # a text column of numbers, as some exports write them
    df.loc[4, "a"] = "12,5"
    df.to_parquet(tmp_path / "bad.parquet")
    rc, out, err = run_cli(["predict", "--model", str(trained / "model"), "--data", str(tmp_path / "bad.parquet")],
                           capsys)
    assert re.search(rf"feature column 'a' .* not numbers \(rows 4, {ROWS}\)", _one_error_line(rc, out, err))


def test_missing_values_and_unseen_levels_are_still_predicted(trained, tmp_path, capsys):
    df = _table(n=50, seed=4).astype({"a": object})
    df.loc[[1, 2], "a"] = np.nan
    df.loc[3, "a"] = "  "  # a blank cell is an empty one
    df.loc[[4, 5], "smoker"] = None
    df.loc[6, "site"] = "east"  # never seen in training: all zeros, not an error
    df.loc[7, "smoker"] = " YES "
    df.to_csv(tmp_path / "ok.csv", index=False)
    rc, out, err = run_cli(["predict", "--model", str(trained / "model"), "--data", str(tmp_path / "ok.csv")], capsys)
    assert rc == 0, err
    p = pd.read_csv(io.StringIO(out))["p_outcome"]
    assert len(p) == 50 and p.between(0, 1).all()


# --------------------------------------------------------------------------- 5. what --data predict reads
NOT_TABLES = [  # (--data, what the line says)
    ("x.npz", r"--data '.*x\.npz': predict reads tables \(\.csv, \.tsv, \.parquet, \.pq\) or an \.npz of images "
              r"\(key 'images'\); '\.npz' feature arrays are not supported by predict"),
    ("x.pt", r"'\.pt' feature arrays are not supported by predict"),
    ("x.xlsx", r"data file '.*x\.xlsx' has an unsupported format '\.xlsx'; predict reads tables: \.csv, \.tsv, "
               r"\.parquet, \.pq$"),
    ("synthetic:rare", r"--data 'synthetic:rare' is a synthetic task; predict reads a table file"),
    ("s3://bucket/t.csv?X-Amz-Signature=secret", r"--data 's3://\.\.\.' is an address; predict reads a local table"),
    ("missing.csv", r"data file '.*missing\.csv' does not exist; predict reads a table file \(\.csv"),
]


@pytest.mark.parametrize("name,pattern", NOT_TABLES, ids=[n.partition('?')[0] for n, _ in NOT_TABLES])
def test_predict_says_it_reads_tables(name, pattern, trained, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", X=np.zeros((4, 5)), y=np.zeros(4))  # arrays `train` would read
    (tmp_path / "x.pt").write_bytes(b"arrays")
    (tmp_path / "x.xlsx").write_bytes(b"a spreadsheet")
    data = name if ":" in name else str(tmp_path / name)
    rc, out, err = run_cli(["predict", "--model", str(trained / "model"), "--data", data], capsys)
    line = _one_error_line(rc, out, err)
    assert re.search(pattern, line), line
    assert "secret" not in line and ".npz, .pt" not in line


def test_train_still_offers_feature_arrays(tmp_path, capsys):
    (tmp_path / "x.xlsx").write_text("not a table")
    rc, out, err = run_cli(["train", "--data", str(tmp_path / "x.xlsx"), "--label-col", "outcome",
                            "--out", str(tmp_path / "run"), "--quiet"], capsys)
    line = _one_error_line(rc, out, err)
    assert re.search(r"unsupported format '\.xlsx'; supported: .*\.npz, \.pt", line), line
