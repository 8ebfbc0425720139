"""`losstune predict`: calibrated probabilities per label from a model folder or a finished job,
with its preprocessing; bad input is one line and exit status 2, and nothing is overwritten."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.tuner.conftest import SEARCH_ONLY, run_cli


def _table(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (1.5 * x[:, 0] + x[:, 1] + rng.normal(scale=0.8, size=n) > 1.8).astype(int)  # about 1:6
    df = pd.DataFrame(x, columns=["a", "b", "c"]).assign(site=rng.choice(["north", "south"], n), outcome=y)
    df.loc[rng.random(n) < 0.1, "b"] = np.nan
    return df


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    _table().to_csv(d / "train.csv", index=False)
    from tuner.cli import main

    rc = main(["train", "--data", str(d / "train.csv"), "--label-col", "outcome", "--out", str(d / "model"),
               "--set", "optim.max_epochs=8", "--set", "main_loss.alpha=0.75", "--quiet"])
    assert rc == 0
    return d


def test_probabilities_for_new_rows_are_calibrated_and_rank_well(trained, tmp_path, capsys):
    new = _table(n=3000, seed=1)
    new.to_csv(tmp_path / "new.csv", index=False)
    rc, out, err = run_cli(["predict", "--model", str(trained / "model"), "--data", str(tmp_path / "new.csv")], capsys)
    assert rc == 0, err
    preds = pd.read_csv(io.StringIO(out))
    assert list(preds.columns) == ["p_outcome", "decision_outcome"] and len(preds) == len(new)
    p = preds["p_outcome"].to_numpy()
    assert ((p >= 0) & (p <= 1)).all() and p.std() > 0.05
    assert roc_auc_score(new["outcome"], p) > 0.85  # unseen rows from the same process
    # focal loss with alpha shifts the base rate; the calibration fit on validation moves it back
    assert abs(p.mean() - new["outcome"].mean()) < 0.03

    # each row on its own: shuffled rows give the same probabilities, shuffled
    order = np.random.default_rng(2).permutation(len(new))
    new.iloc[order].to_csv(tmp_path / "shuffled.csv", index=False)
    rc, out2, _ = run_cli(["predict", "--model", str(trained / "model"), "--data", str(tmp_path / "shuffled.csv"),
                           "--out", str(tmp_path / "p.csv")], capsys)
    assert rc == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv")["p_outcome"].to_numpy(), p[order], rtol=1e-5, atol=1e-9)


def test_decisions_at_the_thresholds_the_model_keeps_and_unseen_levels_said(trained, tmp_path, capsys):
    """decision_LABEL flags a row at the threshold chosen on validation (kept in model.pt), or at a given
    probability; a category level training never saw is one warning line per column, with its counts."""
    import torch

    saved = torch.load(trained / "model" / "model.pt", weights_only=True)
    kept = saved["thresholds"]["outcome"]
    assert set(kept) == {"youden", "sensitivity_0.80", "sensitivity_0.90"}
    assert kept["sensitivity_0.90"] <= kept["sensitivity_0.80"]  # finding more positives takes a lower threshold
    new = _table(n=800, seed=3)
    new.loc[:4, "site"] = "east"  # five rows from a site the model never saw
    new.loc[5:6, "site"] = "west"
    new.to_csv(tmp_path / "new.csv", index=False)
    for rule, expected in (("youden", kept["youden"]), ("sensitivity_0.90", kept["sensitivity_0.90"]), ("0.3", 0.3)):
        rc, out, err = run_cli(["predict", "--model", str(trained / "model"), "--data", str(tmp_path / "new.csv"),
                                "--decide-at", rule], capsys)
        assert rc == 0, err
        preds = pd.read_csv(io.StringIO(out))
        assert (preds["decision_outcome"] == (preds["p_outcome"] >= expected).astype(int)).all()
        warnings = [line for line in err.splitlines() if "never seen in training" in line]
        assert len(warnings) == 1 and "column 'site'" in warnings[0]
        assert "'east' (5 rows)" in warnings[0] and "'west' (2 rows)" in warnings[0]
    rc, out, err = run_cli(["predict", "--model", str(trained / "model"), "--data", str(tmp_path / "new.csv"),
                            "--decide-at", "1.5"], capsys)
    assert rc == 2 and "--decide-at must be one of youden" in err


@pytest.mark.parametrize("case,pattern", [
    ("missing-column", r"feature column 'site' is missing"),
    ("not-a-model", r"is not a losstune model folder: config\.yaml, model\.pt, preprocessor\.json missing"),
    ("out-exists", r"--out '.*taken\.csv' already exists"),
    ("no-source", r"pass one of --model DIR .* or --job JOB"),
    ("no-data", r"data file '.*nope\.csv' does not exist"),
])
def test_bad_input_is_one_line_and_nothing_is_overwritten(case, pattern, trained, tmp_path, capsys):
    _table(n=50).drop(columns=["site"]).to_csv(tmp_path / "nosite.csv", index=False)
    _table(n=50).to_csv(tmp_path / "ok.csv", index=False)
    (tmp_path / "taken.csv").write_text("mine\n")
    model = ["--model", str(trained / "model")]
    args = {"missing-column": [*model, "--data", str(tmp_path / "nosite.csv")],
            "not-a-model": ["--model", str(tmp_path), "--data", str(tmp_path / "ok.csv")],
            "out-exists": [*model, "--data", str(tmp_path / "ok.csv"), "--out", str(tmp_path / "taken.csv")],
            "no-source": ["--data", str(tmp_path / "ok.csv")],
            "no-data": [*model, "--data", str(tmp_path / "nope.csv")]}[case]
    rc, out, err = run_cli(["predict", *args], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("losstune: error:"), err
    assert re.search(pattern, lines[0]), lines[0]
    assert (tmp_path / "taken.csv").read_text() == "mine\n"


@pytest.mark.slow
def test_a_finished_job_predicts_with_its_winner(tmp_path, capsys, shared_ray):
    _table().to_csv(tmp_path / "train.csv", index=False)
    rc, out, err = run_cli(["tune", "--data", str(tmp_path / "train.csv"), "--label-col", "outcome",
                            "--num-trials", "2", "--max-epochs", "3", "--storage-path", str(tmp_path / "r"),
                            "--experiment", "pj", "--no-tracking", *SEARCH_ONLY], capsys)
    assert rc == 0, err
    rc, by_job, err = run_cli(["predict", "--job", "pj", "--storage-path", str(tmp_path / "r"), "--data",
                               str(tmp_path / "train.csv")], capsys)
    assert rc == 0, err
    rc, by_model, _ = run_cli(["predict", "--model", str(tmp_path / "r" / "pj" / "winner"), "--data",
                               str(tmp_path / "train.csv")], capsys)
    assert by_job == by_model and len(pd.read_csv(io.StringIO(by_job))) == 1500
