"""`losstune train`: a real run writes its folder; every user mistake is one line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tests.tuner.conftest import run_cli
from trainables.model import DualHeadModel


class Payload:
    pass


def _csv(tmp_path, n=600, **cols):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.7, size=n) > 1.0).astype(int)
    df = pd.DataFrame(x, columns=["a", "b", "c", "d"]).assign(site=rng.choice(["n", "s"], n), outcome=y)
    df.loc[rng.random(n) < 0.1, "c"] = np.nan
    for k, v in cols.items():
        df[k] = v
    p = tmp_path / "data.csv"
    df.to_csv(p, index=False)
    return p


_run = run_cli


FAST = ["--set", "optim.max_epochs=3", "--quiet"]


def test_train_writes_config_metrics_preprocessor_and_weights(tmp_path, capsys):
    data = _csv(tmp_path)
    out = tmp_path / "run"
    rc, stdout, err = _run(["train", "--data", str(data), "--label-col", "outcome", "--out", str(out),
                            "--baseline", "--target-auroc", "0.99", *FAST], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == [".losstune-run.json", "config.yaml", "metrics.json", "model.pt",
                                                     "preprocessor.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test/auroc", "test/auprc", "test/ece", "test/ece_scaled"} <= set(metrics["holdout"])
    assert "baseline" in metrics and metrics["targets"]["auroc"] == 0.99
    assert "AUROC" in stdout and "baseline test" in stdout and "does NOT meet the target 0.99" in stdout
    assert not list(tmp_path.glob(".run.tmp-*"))
    # the saved weights are a pretrained checkpoint for the next run
    rc, _, err = _run(["train", "--data", str(data), "--label-col", "outcome", "--out", str(tmp_path / "r2"),
                       "--pretrained-ckpt", str(out / "model.pt"), *FAST], capsys)
    assert rc == 0, err


def test_same_command_twice_gives_identical_metrics(tmp_path, capsys):
    data = _csv(tmp_path)
    for name in ("a", "b"):
        assert _run(["train", "--data", str(data), "--label-col", "outcome", "--out", str(tmp_path / name), *FAST],
                    capsys)[0] == 0
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b"))
    assert a["holdout"] == b["holdout"] and a["history"] == b["history"]


def _bad_cases(tmp_path):
    good = _csv(tmp_path)
    base = ["--data", str(good), "--label-col", "outcome"]
    (tmp_path / "data.xlsx").write_text("x")
    (tmp_path / "bad.yaml").write_text("main_loss: {gamma: [1,\n")
    (tmp_path / "unknown.yaml").write_text("main_loss:\n  gama: 3\n")
    torch.save(DualHeadModel(in_features=3, n_labels=1).state_dict(), tmp_path / "wrong.pt")
    torch.save({"backbone": Payload()}, tmp_path / "evil.pt")
    three = tmp_path / "three"
    three.mkdir()
    one = tmp_path / "one"
    one.mkdir()
    few = tmp_path / "few"
    few.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    return [
        (["--data", str(tmp_path / "nope.csv"), "--label-col", "outcome"], r"data file '.*nope\.csv' does not exist"),
        (["--data", str(tmp_path / "data.xlsx"), "--label-col", "outcome"], r"unsupported format '\.xlsx'"),
        (["--data", str(good), "--label-col", "death"], r"label column 'death' is not in"),
        (["--data", str(_csv(three, outcome=np.arange(600) % 3)), "--label-col", "outcome"], r"3 distinct values"),
        (["--data", str(_csv(one, outcome=0)), "--label-col", "outcome"], r"only one class"),
        (["--data", str(_csv(few, outcome=(np.arange(600) < 8).astype(int))), "--label-col", "outcome"],
         r"split '\w+' would hold \d positives"),
        (["--data", str(_csv(empty, lab=np.nan)), "--label-col", "outcome"], r"feature column 'lab' .*all missing"),
        ([*base, "--config", str(tmp_path / "bad.yaml")], r"bad\.yaml: malformed YAML at line"),
        ([*base, "--config", str(tmp_path / "unknown.yaml")], r"unknown config key 'main_loss\.gama'"),
        ([*base, "--set", "main_loss.gama=3"], r"unknown config key 'main_loss\.gama'"),
        ([*base, "--set", "main_loss.alpha=1.5"], r"main_loss\.alpha: must be a number in \[0, 1\]"),
        ([*base, "--set", "main_loss.gamma=-1"], r"main_loss\.gamma: must be in \[0, 10\]; got -1"),
        ([*base, "--set", "teacher.ema_decay=1.0"], r"teacher\.ema_decay: must be in \(0, 1\); got 1\.0"),
        ([*base, "--set", "distill.temperature=0"], r"distill\.temperature: must be in \(0, 100\]; got 0"),
        ([*base, "--pretrained-ckpt", str(tmp_path / "wrong.pt")],
         r"does not fit the backbone \(shape mismatch: net\.0\.weight"),
        ([*base, "--pretrained-ckpt", str(tmp_path / "evil.pt")], r"weights_only=True refuses"),
        ([*base, "--target-auroc", "1.5"], r"--target-auroc must be in \(0, 1\]"),
        (["--label-col", "outcome"], r"--data is required"),
    ]


def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    for args, pattern in _bad_cases(tmp_path):
        out = tmp_path / "out"
        rc, stdout, err = _run(["train", *args, "--out", str(out), *FAST], capsys)
        assert rc == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("losstune: error: "), err
        assert "Traceback" not in err + stdout
        import re

        assert re.search(pattern, lines[0]), (pattern, lines[0])
        assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_existing_out_folder_is_not_overwritten_without_flag(tmp_path, capsys):
    data = _csv(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = _run(["train", "--data", str(data), "--label-col", "outcome", "--out", str(out), *FAST], capsys)
    assert rc == 2 and "already exists and is not empty" in err
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_console_script_demo(tmp_path):
    """`make demo`: the installed console script trains on synthetic:rare and prints the table (on a
    smaller table, for 3 epochs: what is given beside --demo overrides it)."""
    exe = [sys.executable, "-m", "tuner.cli"]
    out = subprocess.run([*exe, "train", "--demo", "--data", "synthetic:rare?n=8000", "--set", "optim.max_epochs=3",
                          "--quiet", "--out", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for word in ("AUROC", "AUPRC", "ECE", "baseline test", "val", "test"):
        assert word in out.stdout
    bad = subprocess.run([*exe, "train", "--data", "nope.csv", "--label-col", "y"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_the_plain_config_is_the_baseline_presets_losses_on_the_users_network():
    """`train --baseline`: BCE, one head, no teacher, no distillation or consistency, static weights,
    with the user's own network, schedule and seed (the job's baseline arm starts from the same preset)."""
    from search_spaces import load_scenario
    from tuner.job.plan import baseline_config

    cfg = load_scenario("rare_disease_detection").config.with_overrides(
        {"optim.lr": 0.003, "model.hidden": [32], "seed": 7}, source="test")
    plain = baseline_config(cfg).flat()
    assert {k: plain[k] for k in ("main_loss.type", "aux_loss.type", "teacher.enabled", "distill.weight",
                                  "consistency.weight", "weighting.strategy")} == {
        "main_loss.type": "bce", "aux_loss.type": "none", "teacher.enabled": False, "distill.weight": 0.0,
        "consistency.weight": 0.0, "weighting.strategy": "static"}
    mine = cfg.flat()
    assert {k: v for k, v in plain.items() if k.startswith(("model.", "optim.", "seed"))} == \
        {k: v for k, v in mine.items() if k.startswith(("model.", "optim.", "seed"))}
