"""A catalogue of bad inputs, run through the real CLI, each in a process of its own.

Every row is a command and a fragment of the one line it must print. The contract for each: exit
status 2, exactly one line on stderr that starts with ``losstune: error:``, no traceback anywhere,
and nothing left behind — the folder the command ran in and the folder of its inputs hold exactly
what they held before (an input is never touched, nothing half-written remains).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.tuner.conftest import SMALL, free_port
from trainables.model import DualHeadModel, MLPBackbone
from tuner.core.seal import sealed_write, sign_file
from tuner.record.spool import Spool


class Payload:  # a class that weights_only=True must refuse to unpickle
    pass


def _table(n: int = 600, seed: int = 0, **cols) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (x[:, 0] + rng.normal(scale=0.7, size=n) > 1.0).astype(int)
    df = pd.DataFrame(x, columns=["a", "b", "c"]).assign(site=rng.choice(["n", "s"], n), outcome=y,
                                                         other=(x[:, 1] > 0.8).astype(int))
    df.loc[rng.random(n) < 0.1, "c"] = np.nan
    for k, v in cols.items():
        df[k] = v
    return df


def _make_inputs(d: Path) -> None:
    """Every input file the catalogue refers to as {in}/NAME."""
    good = _table()
    good.to_csv(d / "good.csv", index=False)
    good.to_csv(d / "good.tsv", index=False, sep="\t")
    with_inf = good.copy()
    with_inf.loc[[7, 42], "b"] = np.inf
    with_inf.to_csv(d / "inf.csv", index=False)
    neg_inf = good.copy()
    neg_inf.loc[3, "a"] = -np.inf
    neg_inf.to_parquet(d / "neginf.parquet")
    text = (d / "good.csv").read_text().splitlines()
    (d / "dupcols.csv").write_text("\n".join([text[0].replace("b,", "a,", 1)] + text[1:]) + "\n")
    (d / "empty.csv").write_text("")
    (d / "header_only.csv").write_text("a,b,outcome\n")
    (d / "binary.csv").write_bytes(bytes(range(256)) * 40)
    (d / "data.xlsx").write_text("not a table")
    _table(outcome=np.arange(600) % 3).to_csv(d / "three.csv", index=False)
    _table(outcome=0).to_csv(d / "oneclass.csv", index=False)
    _table(outcome=(np.arange(600) < 8).astype(int)).to_csv(d / "few.csv", index=False)
    _table(lab=np.nan).to_csv(d / "allmissing.csv", index=False)
    _table(pid=[f"p{i}" for i in range(600)]).to_csv(d / "ids.csv", index=False)
    missing_label = _table()
    missing_label["outcome"] = missing_label["outcome"].astype(float)
    missing_label.loc[[1, 2], "outcome"] = np.nan
    missing_label.to_csv(d / "missing_label.csv", index=False)
    np.savez(d / "nokeys.npz", a=np.zeros((10, 2)))
    np.savez(d / "shapes.npz", X=np.zeros((10, 2)), y=np.zeros(9))
    torch.save({"X": Payload(), "y": [1]}, d / "evil_arrays.pt")
    (d / "bad.yaml").write_text("main_loss: {gamma: [1,\n")
    (d / "unknown.yaml").write_text("main_loss:\n  gama: 3\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "tag.yaml").write_text("main_loss: !!python/object/apply:os.system ['echo pwned']\n")
    (d / "range.yaml").write_text("main_loss:\n  gamma: 99\n")
    torch.save(DualHeadModel(in_features=3, n_labels=1).state_dict(), d / "wrong_shape.pt")
    torch.save({"backbone": Payload()}, d / "evil.pt")
    (d / "garbage.pt").write_bytes(b"\x00not a torch file" * 10)
    torch.save(torch.zeros(3), d / "tensor.pt")
    # a backbone of the right shape for good.csv (a, b, c, c__missing, site one-hot x2, other) but full of NaN
    nan_backbone = MLPBackbone(in_features=7, hidden=(128, 64)).state_dict()
    nan_backbone["net.0.weight"] = torch.full_like(nan_backbone["net.0.weight"], float("nan"))
    torch.save(nan_backbone, d / "nan.pt")
    (d / "a_file.txt").write_text("a file, not a folder")
    jobs = d / "jobs"
    state = {"experiment": "x", "data_fingerprint": "f", "split_fingerprint": "s", "scenario": "baseline",
             "detection": None, "base_config": {}, "search_space": {}, "searched": [], "space_spec": {},
             "created": "2026-01-01T00:00:00", "tracking": {}, "arms": {}, "finished": "", "pretrained_load": {}}
    for name, content in (("corrupt", '{"experiment": "corrupt", "data": '), ("list", "[1, 2]"),
                          ("wrongkeys", json.dumps({"experiment": "x", "data": {"source": "s"}})),
                          ("wrongtypes", json.dumps({**state, "base_config": "model: {}"})),
                          ("nospec", json.dumps(state)), ("badspec", json.dumps(state))):
        (jobs / name).mkdir(parents=True)
        (jobs / name / "losstune_job.json").write_text(content)
    (jobs / "badspec" / "job.yaml").write_text("data: {source: synthetic:rare}\nnum_trials: [1,\n")
    # signed as losstune signs them (tuner/core/seal.py): the checks behind the signature still hold for a
    # file that losstune signed but cannot read (a later losstune's, a disk error)
    for f in jobs.glob("*/*"):
        sign_file(f)
    synced = jobs / "synced"  # recorded in MLflow, with a record waiting in its spool
    synced.mkdir()
    sealed_write(synced / "losstune_job.json", json.dumps(
        {**state, "experiment": "synced", "tracking": {"experiment": "e", "experiment_id": "1",
                                                       "parent_run_id": "abc", "uri": "sqlite:///nowhere.db"}}))
    spool = Spool(synced / "mlflow_spool.jsonl")
    spool.append({"kind": "job_status", "status": "RUNNING"})
    spool.close()
    (jobs / "taken").mkdir()
    (jobs / "taken" / "losstune_job.json").write_text("{}")
    presets = d / "presets"
    presets.mkdir()
    (presets / "broken.yaml").write_text("main_loss: {gamma: [1,\n")
    (presets / "fine.yaml").write_text("scenario: {name: my_fine, description: mine}\nmain_loss: {gamma: 2.5}\n")
    exported = d / "exported"
    exported.mkdir()
    (exported / "notes.yaml").write_text("my: notes\n")
    (d / "badjob.yaml").write_text("data: {source: synthetic:rare}\nnum_trials: many\n")
    (d / "booljob.yaml").write_text("data: {source: synthetic:rare}\nnum_trials: true\n")
    (d / "secretjob.yaml").write_text("data: {source: synthetic:rare}\ntracking_uri: http://user:hunter2@host/\n")
    (d / "hugecpus.yaml").write_text(f"data: {{source: '{SMALL}'}}\nresources: {{cpus_per_trial: 1.0e+9}}\n")
    (d / "unknownjob.yaml").write_text("data: {source: synthetic:rare}\nnum_trial: 3\n")
    (d / "not_mlflow.db").write_bytes(b"")
    _make_image_inputs(d)
    import sqlite3

    with sqlite3.connect(d / "other.db") as con:
        con.execute("create table patients (id integer)")


def _make_image_inputs(d: Path) -> None:
    """Image tables ({in}/imgs/*.csv, paths relative to the table's folder), a broken MedMNIST archive
    and a checkpoint of another architecture."""
    from PIL import Image

    imgs = d / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", 8), ("b.png", 8), ("big.png", 12)):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(imgs / name)
    (imgs / "trunc.png").write_bytes((imgs / "a.png").read_bytes()[:40])
    for name, paths in (("good", ["a.png", "b.png"]), ("missing", ["a.png", "nope.png"]),
                        ("trunc", ["trunc.png", "a.png"]), ("mixed", ["a.png", "big.png"]),
                        ("escape", ["a.png", "../good.csv.png"])):
        pd.DataFrame({"path": paths, "y": [0, 1]}).to_csv(imgs / f"{name}.csv", index=False)
    np.savez(d / "bad_medmnist.npz", train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.zeros((4, 1)))
    np.savez(d / "short_labels.npz", **{f"{s}_images": np.zeros((20, 8, 8), np.uint8) for s in ("train", "val", "test")},
             **{f"{s}_labels": np.zeros((20 if s != "val" else 19, 1), np.uint8) for s in ("train", "val", "test")})
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), d / "resnet18.pt")


IMAGES = "synthetic-images:rare?n=300&prevalence=0.2"
GOOD = ["--data", "{in}/good.csv", "--label-col", "outcome"]
TRAIN = ["train", *GOOD, "--set", "optim.max_epochs=1", "--quiet"]
TUNE = ["tune", "--data", SMALL, "--storage-path", "{cwd}/results", "--no-tracking"]

# (id, command, fragment of the error line); {in} is the inputs folder, {cwd} the folder it runs in,
# {port} a free (closed) port. Numbers refer to the failures of issue 8.
CATALOGUE = [
    # ---- data
    ("data-missing", ["train", "--data", "{in}/nope.csv", "--label-col", "outcome"], r"data file '.*nope\.csv' does not exist"),
    ("data-folder", ["train", "--data", "{in}/presets", "--label-col", "outcome"], r"unsupported format|does not exist|cannot read"),
    ("data-format", ["train", "--data", "{in}/data.xlsx", "--label-col", "outcome"], r"unsupported format '\.xlsx'"),
    ("data-empty-file", ["train", "--data", "{in}/empty.csv", "--label-col", "outcome"], r"cannot read data file .*empty\.csv|no rows"),
    ("data-header-only", ["train", "--data", "{in}/header_only.csv", "--label-col", "outcome"], r"has no rows"),
    ("data-binary", ["train", "--data", "{in}/binary.csv", "--label-col", "outcome"], r"cannot read data file|label column 'outcome' is not in|duplicate column"),
    ("data-no-label-col", ["train", "--data", "{in}/good.csv"], r"name the label column\(s\) of .* with --label-col; columns are: a, b, c"),
    ("data-unknown-label", ["train", "--data", "{in}/good.csv", "--label-col", "death"], r"label column 'death' is not in"),
    ("data-three-classes", ["train", "--data", "{in}/three.csv", "--label-col", "outcome"], r"3 distinct values"),
    ("data-one-class", ["train", "--data", "{in}/oneclass.csv", "--label-col", "outcome"], r"only one class"),
    ("data-missing-labels", ["train", "--data", "{in}/missing_label.csv", "--label-col", "outcome"], r"has 2 missing values \(rows 1, 2\)"),
    ("data-few-positives", ["train", "--data", "{in}/few.csv", "--label-col", "outcome"], r"split '\w+' would hold \d positives"),
    ("data-all-missing", ["train", "--data", "{in}/allmissing.csv", "--label-col", "outcome"], r"feature column 'lab' .*all missing"),
    ("data-identifier", ["train", "--data", "{in}/ids.csv", "--label-col", "outcome"], r"column 'pid' has \d+ categories .*--drop-col"),
    ("6-data-inf", ["train", "--data", "{in}/inf.csv", "--label-col", "outcome"], r"feature column 'b' in .*inf\.csv has 2 infinite value\(s\) \(rows 7, 42"),
    ("6-data-minus-inf-parquet", ["train", "--data", "{in}/neginf.parquet", "--label-col", "outcome"], r"feature column 'a' .* 1 infinite value\(s\) \(rows 3"),
    ("6-tune-inf", ["tune", "--data", "{in}/inf.csv", "--label-col", "outcome", "--storage-path", "{cwd}/r", "--no-tracking"], r"feature column 'b' .*infinite"),
    ("7-duplicate-columns", ["train", "--data", "{in}/dupcols.csv", "--label-col", "outcome"], r"duplicate column names: 'a' \(2 times\)"),
    ("8-label-twice", ["train", *GOOD, "--label-col", "outcome"], r"--label-col 'outcome' is given more than once"),
    ("8-detect-label-twice", ["scenarios", "detect", *GOOD, "--label-col", "outcome"], r"--label-col 'outcome' is given more than once"),
    ("17-drop-label", ["train", *GOOD, "--drop-col", "outcome"], r"--drop-col 'outcome' is a label column"),
    ("data-drop-unknown", ["train", *GOOD, "--drop-col", "nosuch"], r"--drop-col 'nosuch' is not a column"),
    ("arrays-no-keys", ["train", "--data", "{in}/nokeys.npz"], r"must hold arrays 'X' \(features\) and 'y'"),
    ("arrays-shapes", ["train", "--data", "{in}/shapes.npz"], r"X must be \[N, F\] and y"),
    ("arrays-pickle", ["train", "--data", "{in}/evil_arrays.pt"], r"cannot read feature arrays"),
    ("synthetic-unknown", ["train", "--data", "synthetic:nothing"], r"unknown synthetic task 'nothing'"),
    ("synthetic-option", ["train", "--data", "synthetic:rare?nn=5"], r"unknown option 'nn'"),
    ("synthetic-number", ["train", "--data", "synthetic:rare?n=abc"], r"option 'n' must be a number"),
    ("synthetic-infinite", ["train", "--data", "synthetic:rare?n=inf"], r"option 'n' must be a finite number"),
    ("split-fracs", ["train", *GOOD, "--val-frac", "0.6", "--test-frac", "0.5"], r"--val-frac and --test-frac must be in \(0, 1\)"),
    ("split-min-positives", ["train", *GOOD, "--min-positives", "0"], r"--min-positives must be >= 1"),
    ("no-data", ["train", "--label-col", "outcome"], r"--data is required"),
    # ---- config
    ("config-missing", ["train", *GOOD, "--config", "{in}/nope.yaml"], r"config file '.*nope\.yaml' does not exist"),
    ("config-malformed", ["train", *GOOD, "--config", "{in}/bad.yaml"], r"bad\.yaml: malformed YAML at line"),
    ("config-unknown-key", ["train", *GOOD, "--config", "{in}/unknown.yaml"], r"unknown config key 'main_loss\.gama'"),
    ("config-not-mapping", ["train", *GOOD, "--config", "{in}/list.yaml"], r"must be a mapping"),
    ("config-python-tag", ["train", *GOOD, "--config", "{in}/tag.yaml"], r"tag\.yaml"),
    ("config-out-of-range", ["train", *GOOD, "--config", "{in}/range.yaml"], r"main_loss\.gamma: must be in \[0, 10\]; got 99"),
    ("set-unknown", ["train", *GOOD, "--set", "main_loss.gama=3"], r"unknown config key 'main_loss\.gama'"),
    ("set-alpha", ["train", *GOOD, "--set", "main_loss.alpha=1.5"], r"main_loss\.alpha: must be a number in \[0, 1\]"),
    ("set-decay", ["train", *GOOD, "--set", "teacher.ema_decay=1.0"], r"teacher\.ema_decay: must be in \(0, 1\); got 1\.0"),
    ("set-no-equals", ["train", *GOOD, "--set", "main_loss.gamma"], r"--set expects KEY=VALUE"),
    ("target-range", ["train", *GOOD, "--target-auroc", "1.5"], r"--target-auroc must be in \(0, 1\]"),
    # ---- checkpoints
    ("ckpt-missing", ["train", *GOOD, "--pretrained-ckpt", "{in}/nope.pt"], r"checkpoint '.*nope\.pt' does not exist"),
    ("ckpt-wrong-shape", ["train", *GOOD, "--pretrained-ckpt", "{in}/wrong_shape.pt"], r"does not fit the backbone \(shape mismatch"),
    ("ckpt-pickle", ["train", *GOOD, "--pretrained-ckpt", "{in}/evil.pt"], r"weights_only=True refuses"),
    ("ckpt-garbage", ["train", *GOOD, "--pretrained-ckpt", "{in}/garbage.pt"], r"cannot be read by torch\.load"),
    ("ckpt-tensor", ["train", *GOOD, "--pretrained-ckpt", "{in}/tensor.pt"], r"holds a Tensor, not a state_dict"),
    ("9-ckpt-nan", ["train", *GOOD, "--pretrained-ckpt", "{in}/nan.pt"], r"holds NaN or infinite weights \(net\.0\.weight\)"),
    ("9-tune-ckpt-nan", ["tune", *GOOD, "--pretrained-ckpt", "{in}/nan.pt", "--storage-path", "{cwd}/r", "--no-tracking"], r"NaN or infinite weights"),
    # ---- outputs (1, 2)
    ("1-out-dot-overwrite", ["train", "--data", "{cwd}/mine.csv", "--label-col", "outcome", "--out", ".", "--overwrite"], r"--out '\.' is the current folder"),
    ("1-out-dot", ["train", "--data", "{cwd}/mine.csv", "--label-col", "outcome", "--out", "."], r"--out '\.' is the current folder"),
    ("1-out-parent-of-data", ["train", "--data", "{cwd}/sub/mine.csv", "--label-col", "outcome", "--out", "{cwd}/sub", "--overwrite"], r"holds an input of this command"),
    ("1-out-parent-of-cwd", ["train", *GOOD, "--out", "..", "--overwrite"], r"is the current folder or one of its parents"),
    ("1-out-home", ["train", *GOOD, "--out", "~", "--overwrite"], r"--out '.*/home' is the home folder"),
    ("1-out-foreign", ["train", *GOOD, "--out", "{cwd}/theirs", "--overwrite"], r"holds files losstune did not write \(notes\.txt\)"),
    ("out-not-empty", ["train", *GOOD, "--out", "{cwd}/theirs"], r"already exists and is not empty"),
    ("2-out-proc", ["train", *GOOD, "--out", "/proc/nope"], r"--out '/proc/nope' cannot be created: '/proc' is not writable"),
    ("2-out-under-file", ["train", *GOOD, "--out", "{in}/a_file.txt/sub"], r"cannot be created: '.*a_file\.txt' is a file"),
    ("out-is-file", ["train", *GOOD, "--out", "{in}/a_file.txt"], r"--out '.*a_file\.txt' is a file"),
    # ---- devices (4)
    ("4-device-tpu", ["train", *GOOD, "--device", "tpu:7"], r"--device 'tpu:7' is not a device losstune can train on; allowed: auto, cpu"),
    ("4-device-garbage", ["train", *GOOD, "--device", "gpu please"], r"--device 'gpu please' is not a device"),
    ("4-device-cuda", ["train", *GOOD, "--device", "cuda:3"], r"no CUDA GPU is visible|has \d+ CUDA GPU"),
    # ---- tune: options, addresses (3), resources (16), resume (5)
    ("3-address-spaces", [*TUNE, "--address", "no host here:::"], r"--address 'no host here:::' is not host:port"),
    ("3-address-port-text", [*TUNE, "--address", "localhost:abc"], r"--address 'localhost:abc' is not host:port"),
    ("3-address-port-range", [*TUNE, "--address", "localhost:99999"], r"--address 'localhost:99999' is not host:port"),
    ("3-address-no-port", [*TUNE, "--address", "localhost"], r"--address 'localhost' is not host:port"),
    ("3-address-credentials", [*TUNE, "--address", "ray://u:hunter2@h:x"], r"--address 'ray://\*\*\*@h:x' is not host:port"),
    ("address-closed", [*TUNE, "--address", "127.0.0.1:{port}"], r"Ray runtime at '127\.0\.0\.1:\d+' is unreachable"),
    ("16-gpus-on-cpu", [*TUNE, "--gpus-per-trial", "1"], r"--gpus-per-trial 1 asks for GPUs but the Ray runtime at 'local' has none"),
    ("16-cpus", [*TUNE, "--cpus-per-trial", "999"], r"--cpus-per-trial 999 is more than the \d+ CPUs"),
    ("16-no-resources", [*TUNE, "--cpus-per-trial", "0"], r"both 0"),
    ("tune-trials", [*TUNE, "--num-trials", "0"], r"--num-trials must be at least 1, got 0"),
    ("tune-epochs", [*TUNE, "--max-epochs", "0"], r"--max-epochs must be at least 1"),
    ("tune-concurrency", [*TUNE, "--concurrency", "0"], r"--concurrency must be at least 1"),
    ("tune-failures", [*TUNE, "--max-failures", "-1"], r"--max-failures cannot be negative"),
    ("tune-reduction", [*TUNE, "--reduction-factor", "1"], r"--reduction-factor > 1"),
    ("tune-experiment-name", [*TUNE, "--experiment", "../escape"], r"--experiment '\.\./escape' must be letters"),
    ("tune-experiment-taken", ["tune", "--data", SMALL, "--storage-path", "{in}/jobs", "--experiment", "taken", "--no-tracking"], r"experiment 'taken' already exists"),
    ("tune-scenario", [*TUNE, "--scenario", "sepsis"], r"unknown scenario 'sepsis'"),
    ("tune-scenario-file", [*TUNE, "--scenario", "{in}/nope.yaml"], r"does not exist"),
    ("tune-search-empty", [*TUNE, "--search", "main_loss.gamma=[3, 1]"], r"search\.main_loss\.gamma: low must be below high"),
    ("tune-search-key", [*TUNE, "--search", "main_loss.gama=[1, 3]"], r"main_loss\.gama"),
    ("tune-fix", [*TUNE, "--fix", "optim.lrr=0.1"], r"unknown config key 'optim\.lrr'"),
    ("tune-stop-on-target", [*TUNE, "--stop-on-target"], r"--stop-on-target needs --target-auroc"),
    ("tune-top", [*TUNE, "--top", "0"], r"Invalid value for '--top': 0 is not in the range x>=1"),
    ("tune-no-data", ["tune", "--no-tracking"], r"--data is required"),
    ("tune-storage-scheme", ["tune", "--data", SMALL, "--storage-path", "ftp://host/jobs", "--no-tracking"], r"--storage-path 'ftp://host/jobs': unsupported scheme 'ftp://'"),
    ("tune-storage-credentials", ["tune", "--data", SMALL, "--storage-path", "s3://AKIA:hunter2@bucket/jobs", "--no-tracking"], r"must not carry credentials .*AWS_ACCESS_KEY_ID"),
    ("tune-storage-no-bucket", ["tune", "--data", SMALL, "--storage-path", "s3:///jobs", "--no-tracking"], r"names no bucket; write it as s3://bucket/prefix"),
    ("tune-resume-missing", ["tune", "--resume", "nope", "--storage-path", "{in}/jobs"], r"no losstune job 'nope'"),
    ("5-resume-corrupt", ["tune", "--resume", "corrupt", "--storage-path", "{in}/jobs"], r"job file '.*corrupt/losstune_job\.json' is damaged \(not valid JSON"),
    ("5-resume-list", ["tune", "--resume", "{in}/jobs/list"], r"job file .* is damaged \(a JSON list"),
    ("5-resume-keys", ["tune", "--resume", "{in}/jobs/wrongkeys"], r"job file .* is damaged \(base_config"),
    ("5-resume-types", ["tune", "--resume", "{in}/jobs/wrongtypes"], r"job file .* is damaged \(base_config"),
    ("5-resume-no-spec", ["tune", "--resume", "{in}/jobs/nospec"], r"job folder '.*nospec' has no job\.yaml"),
    ("5-resume-bad-spec", ["tune", "--resume", "{in}/jobs/badspec"], r"badspec/job\.yaml: malformed YAML"),
    ("job-file-missing", ["tune", "--job", "{in}/nope.yaml", "--no-tracking"], r"config file '.*nope\.yaml' does not exist"),
    ("job-file-field", ["tune", "--job", "{in}/badjob.yaml", "--no-tracking"], r"job spec field 'num_trials'"),
    ("job-file-unknown", ["tune", "--job", "{in}/unknownjob.yaml", "--no-tracking"], r"job spec field 'num_trial'.*[Ee]xtra"),
    ("time-budget", [*TUNE, "--time-budget", "0"], r"--time-budget must be positive"),
    # ---- issue 18 (round two)
    ("18-2-sync-garbage-uri", ["sync", "{in}/jobs/synced", "--tracking-uri", "garbage://x"], r"tracking URI 'garbage://x' is not an MLflow tracking store"),
    ("18-6-secret-in-job-file", ["tune", "--job", "{in}/secretjob.yaml", "--no-tracking"], r"job spec field 'tracking_uri'.*http://\*\*\*@host/"),
    ("18-8-storage-is-file", ["tune", "--data", SMALL, "--storage-path", "{in}/a_file.txt", "--no-tracking"], r"--storage-path '.*a_file\.txt' cannot be created: '.*a_file\.txt' is a file"),
    ("18-8-storage-read-only", ["tune", "--data", SMALL, "--storage-path", "/proc/jobs", "--no-tracking"], r"--storage-path '/proc/jobs' cannot be created: '/proc' is not writable"),
    ("18-8-seed-negative", [*TUNE, "--seed", "-1"], r"--seed must be in \[0, 4294967294\].*got -1"),
    ("18-8-seed-huge", [*TUNE, "--seed", "99999999999999999999"], r"--seed must be in \[0, 4294967294\].*got 99999999999999999999"),
    ("18-9-split-seed", ["train", *GOOD, "--split-seed", "-1"], r"--split-seed must be an integer in \[0, 4294967295\], got -1"),
    ("18-11-dry-run-gpus", [*TUNE, "--dry-run", "--gpus-per-trial", "1"], r"--gpus-per-trial 1 asks for GPUs but the Ray runtime at 'local' has none"),
    ("18-11-dry-run-no-cpus", [*TUNE, "--dry-run", "--cpus-per-trial", "0"], r"both 0"),
    ("18-11-dry-run-job-cpus", ["tune", "--job", "{in}/hugecpus.yaml", "--dry-run", "--no-tracking"], r"--cpus-per-trial 1e\+09 is more than the \d+ CPUs"),
    ("18-15-time-budget-nan", [*TUNE, "--time-budget", "nan"], r"--time-budget must be a finite number, got nan"),
    ("18-15-count-bool", ["tune", "--job", "{in}/booljob.yaml", "--no-tracking"], r"job spec field 'num_trials': Input should be a valid integer"),
    ("18-16-predict-arrays", ["predict", "--model", "{in}/presets", "--data", "{in}/shapes.npz"], r"predict reads tables .*'\.npz' feature arrays are not supported by predict"),
    ("18-17-sync-missing-job", ["sync", "nope", "--storage-path", "{in}/jobs"], r"no losstune job 'nope'"),
    ("18-18-store-after-address", ["tune", "--data", SMALL, "--storage-path", "{cwd}/r", "--tracking-uri", "sqlite:///{cwd}/m.db", "--address", "127.0.0.1:{port}"], r"Ray runtime at '127\.0\.0\.1:\d+' is unreachable"),
    ("18-18-store-after-gpus", ["tune", "--data", SMALL, "--storage-path", "{cwd}/r", "--tracking-uri", "sqlite:///{cwd}/m.db", "--gpus-per-trial", "1"], r"--gpus-per-trial 1 asks for GPUs"),
    ("18-18-store-after-cpus", ["tune", "--data", SMALL, "--storage-path", "{cwd}/r", "--tracking-uri", "sqlite:///{cwd}/m.db", "--cpus-per-trial", "999"], r"--cpus-per-trial 999 is more than"),
    ("18-18-store-after-auto", ["tune", "--data", SMALL, "--storage-path", "{cwd}/r", "--tracking-uri", "sqlite:///{cwd}/m.db", "--address", "auto"], r"--address auto: no Ray runtime runs on this machine"),
    # ---- issue 20 (images and the user's own model)
    ("20-image-missing", ["train", "--data", "{in}/imgs/missing.csv", "--image-col", "path", "--label-col", "y"], r"image file '.*nope\.png' named in row 1 of"),
    ("20-image-truncated", ["train", "--data", "{in}/imgs/trunc.csv", "--image-col", "path", "--label-col", "y"], r"cannot decode image 'trunc\.png' \(row 0"),
    ("20-image-sizes", ["train", "--data", "{in}/imgs/mixed.csv", "--image-col", "path", "--label-col", "y"], r"differ in size: .*pass --image-size"),
    ("20-image-escape", ["train", "--data", "{in}/imgs/escape.csv", "--image-col", "path", "--label-col", "y"], r"leads outside --image-root"),
    ("20-image-col", ["train", "--data", "{in}/imgs/good.csv", "--image-col", "file", "--label-col", "y"], r"--image-col 'file' is not a column"),
    ("20-npz-keys", ["train", "--data", "{in}/bad_medmnist.npz"], r"bad_medmnist\.npz.*(missing|expected)"),
    ("20-npz-labels", ["train", "--data", "{in}/short_labels.npz"], r"'val_labels' in '.*short_labels\.npz' has shape \(19, 1\) but 'val_images' holds 20 images"),
    ("20-torchvision-name", ["train", "--data", IMAGES, "--set", "model.backbone=torchvision:resnet19"], r"resnet19.*resnet18"),
    ("20-tune-torchvision-name", ["tune", "--data", IMAGES, "--set", "model.backbone=torchvision:resnet19", "--storage-path", "{cwd}/r", "--no-tracking"], r"resnet19.*resnet18"),
    ("20-timm-name", ["train", "--data", IMAGES, "--set", "model.backbone=timm:resnet19"], r"resnet19.*resnet18"),
    ("20-factory-import", ["train", "--data", IMAGES, "--set", "model.backbone=python:no_such_module:build"], r"no_such_module.*import"),
    ("20-factory-features", ["train", "--data", IMAGES, "--set", "model.backbone=python:tests.tuner.test_image_jobs:no_features"], r"out_features"),
    ("20-pretrained-mismatch", ["train", "--data", IMAGES, "--set", "model.backbone=torchvision:densenet121", "--pretrained-ckpt", "{in}/resnet18.pt"], r"resnet18\.pt.*matches almost nothing"),
    ("20-image-backbone-on-table", ["train", *GOOD, "--set", "model.backbone=cnn"], r"model\.backbone 'cnn' is an image network, but the data are a table"),
    # ---- tracking stores (10, 11, 16)
    ("10-store-under-file", ["tune", "--data", SMALL, "--storage-path", "{cwd}/r", "--tracking-uri", "sqlite:///{in}/a_file.txt/m.db"], r"cannot be created: '.*a_file\.txt' is a file"),
    ("10-store-proc", ["tune", "--data", SMALL, "--storage-path", "{cwd}/r", "--tracking-uri", "sqlite:////proc/m.db"], r"'sqlite:////proc/m\.db' is not writable"),
    ("10-store-no-folder", ["tune", "--data", SMALL, "--storage-path", "{cwd}/r", "--tracking-uri", "sqlite:///{cwd}/nodir/m.db"], r"cannot be created: folder '.*nodir' does not exist"),
    ("10-store-folder", ["tune", "--data", SMALL, "--storage-path", "{cwd}/r", "--tracking-uri", "sqlite:///{in}/presets"], r"is a folder, not a database file"),
    ("10-store-not-sqlite", ["tune", "--data", SMALL, "--storage-path", "{cwd}/r", "--tracking-uri", "sqlite:///{in}/good.csv"], r"is not an SQLite database"),
    ("10-store-other-db", ["tune", "--data", SMALL, "--storage-path", "{cwd}/r", "--tracking-uri", "sqlite:///{in}/other.db"], r"not an MLflow tracking store"),
    ("store-server-closed", ["tune", "--data", SMALL, "--storage-path", "{cwd}/r", "--tracking-uri", "http://127.0.0.1:{port}"], r"'http://127\.0\.0\.1:\d+' is unreachable"),
    ("11-best-no-store", ["best", "--tracking-uri", "sqlite:///nosuch.db"], r"'sqlite:///nosuch\.db' does not exist \(no file 'nosuch\.db'\)"),
    ("11-best-default-store", ["best"], r"'sqlite:///mlflow\.db' does not exist"),
    ("11-export-no-store", ["export", "--out", "w.yaml", "--tracking-uri", "sqlite:///nosuch.db"], r"does not exist"),
    ("11-best-empty-db", ["best", "--tracking-uri", "sqlite:///{in}/not_mlflow.db"], r"is empty \(no MLflow tables"),
    ("11-best-other-db", ["best", "--tracking-uri", "sqlite:///{in}/other.db"], r"not an MLflow tracking store"),
    ("16-best-server-closed", ["best", "--tracking-uri", "http://u:pw123@127.0.0.1:{port}"], r"'http://\*\*\*@127\.0\.0\.1:\d+' is unreachable"),
    ("13-best-top-negative", ["best", "--top", "-1"], r"Invalid value for '--top': -1 is not in the range x>=1"),
    ("13-best-top-zero", ["best", "--top", "0"], r"is not in the range x>=1"),
    ("12-export-existing", ["export", "--out", "{in}/exported/notes.yaml"], r"already exists; choose another file or pass --overwrite"),
    ("12-export-foreign-overwrite", ["export", "--out", "{in}/exported/notes.yaml", "--overwrite"], r"was not written by losstune"),
    ("export-folder", ["export", "--out", "{in}/exported"], r"cannot be written: it is a folder"),
    ("export-no-folder", ["export", "--out", "/nonexistent-dir/w.yaml"], r"--out '/nonexistent-dir/w\.yaml' cannot be written"),
    ("ui-no-store", ["ui", "--tracking-uri", "sqlite:///nosuch.db"], r"'sqlite:///nosuch\.db' does not exist \(no file 'nosuch\.db'\)"),
    ("ui-default-store", ["ui"], r"'sqlite:///mlflow\.db' does not exist"),
    ("ui-empty-db", ["ui", "--tracking-uri", "sqlite:///{in}/not_mlflow.db"], r"is empty \(no MLflow tables"),
    ("ui-server-closed", ["ui", "--tracking-uri", "http://u:pw123@127.0.0.1:{port}"], r"'http://\*\*\*@127\.0\.0\.1:\d+' is unreachable"),
    ("ui-port-range", ["ui", "--port", "0"], r"Invalid value for '--port': 0 is not in the range 1<=x<=65535"),
    ("cli-unknown-option", ["train", "--dat", "x"], r"No such option '--dat'\. \(Did you mean one of: '--data'"),
    ("cli-bad-int", ["tune", "--num-trials", "many"], r"'many' is not a valid integer"),
    ("cli-missing-value", ["export"], r"Missing option '--out'"),
    # ---- scenarios (17)
    ("scenario-unknown", ["scenarios", "show", "sepsis"], r"unknown scenario 'sepsis'"),
    ("presets-missing", ["scenarios", "list", "--presets", "{in}/nope"], r"presets folder '.*nope' does not exist"),
    ("detect-unknown-task", ["scenarios", "detect", "--data", "synthetic:nothing"], r"unknown synthetic task"),
]


def _snapshot(*folders: Path) -> dict[str, bytes]:
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            out[str(p)] = p.read_bytes() if p.is_file() else b"<dir>"
    return out


@pytest.fixture(scope="module")
def runner():
    proc = subprocess.Popen([sys.executable, "-m", "tests.tuner.cli_runner"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])

    def run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> dict:
        proc.stdin.write(json.dumps({"args": args, "cwd": str(cwd), "env": env or {}, "unset": list(unset)}) + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    yield run
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    _make_inputs(d)
    return d


def _case_dir(tmp_path: Path, inputs: Path) -> Path:
    cwd = tmp_path / "work"
    (cwd / "sub").mkdir(parents=True)
    (cwd / "theirs").mkdir()
    (cwd / "theirs" / "notes.txt").write_text("the user's own notes")
    data = (inputs / "good.csv").read_bytes()
    (cwd / "mine.csv").write_bytes(data)
    (cwd / "sub" / "mine.csv").write_bytes(data)
    return cwd


@pytest.mark.parametrize("case_id,args,pattern", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input(case_id, args, pattern, runner, inputs, tmp_path):
    cwd = _case_dir(tmp_path, inputs)
    port = str(free_port())
    args = [a.replace("{in}", str(inputs)).replace("{cwd}", str(cwd)).replace("{port}", port) for a in args]
    before = _snapshot(cwd, inputs)
    # RAY_TMPDIR: a folder where no `ray start` left a runtime (--address auto finds none)
    res = runner(args, cwd=cwd, env={"HOME": str(tmp_path / "home"), "RAY_TMPDIR": str(tmp_path / "rt")},
                 unset=("MLFLOW_TRACKING_URI", "LOSSTUNE_PRESETS", "RAY_ADDRESS"))
    assert res["rc"] == 2, res
    lines = res["err"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("losstune: error: "), res["err"]
    assert re.search(pattern, lines[0]), (pattern, lines[0])
    assert "Traceback" not in res["out"] + res["err"] and "hunter2" not in res["err"] and "pw123" not in res["err"]
    assert _snapshot(cwd, inputs) == before, "the command left something behind or changed an input"


def test_the_catalogue_covers_the_bad_input_failures_of_issue_18():
    """Issue 18's failures that are bad input have rows here; the others (1, 3, 4, 5, 7, 10, 12, 13,
    14) are faults or behaviours with tests of their own (test_job_state.py, test_spool.py, test_faults.py,
    test_predict_bad_input.py)."""
    numbered = {int(c[0].split("-")[1]) for c in CATALOGUE if c[0].startswith("18-")}
    assert numbered >= {2, 6, 8, 9, 11, 15, 16, 17, 18}


def test_the_catalogue_covers_every_numbered_failure_of_issue_8():
    numbered = {int(c[0].split("-")[0]) for c in CATALOGUE if c[0].split("-")[0].isdigit() and c[0][:3] != "18-"}
    # 14 (Ctrl-C) and 15 (MLflow outage) are faults, tested in test_faults.py
    assert numbered >= set(range(1, 18)) - {14, 15}


def test_broken_preset_lists_the_good_ones_and_names_the_broken(runner, inputs, tmp_path):
    res = runner(["scenarios", "list", "--presets", str(inputs / "presets")], cwd=tmp_path)
    assert res["rc"] == 2
    assert "my_fine" in res["out"] and "rare_disease_detection" in res["out"]
    lines = res["err"].strip().splitlines()
    assert len(lines) == 1 and "broken.yaml: malformed YAML" in lines[0]
    # a scenario from a good file still loads while another file is broken
    res = runner(["scenarios", "show", "my_fine"], cwd=tmp_path, env={"LOSSTUNE_PRESETS": str(inputs / "presets")})
    assert res["rc"] == 0 and "gamma: 2.5" in res["out"]


def test_an_empty_config_file_is_said_not_silent(runner, inputs, tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    res = runner(["train", "--data", str(inputs / "good.csv"), "--label-col", "outcome", "--config",
                  str(tmp_path / "empty.yaml"), "--set", "optim.max_epochs=1", "--quiet", "--out", str(tmp_path / "o")],
                 cwd=tmp_path)
    assert res["rc"] == 0, res["err"]
    assert "config file '" in res["err"] and "empty.yaml' is empty; using the default config" in res["err"]


def test_the_console_script_exits_2_with_one_line():
    """The entry point itself (not the in-process runner): exit status and one line."""
    bad = subprocess.run([sys.executable, "-m", "tuner.cli", "tune", "--data", SMALL, "--address", "localhost:abc",
                          "--no-tracking"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MLFLOW_TRACKING_URI": "sqlite:////nonexistent/m.db"})
    assert bad.returncode == 2 and bad.stderr.strip().startswith("losstune: error: --address 'localhost:abc'")
    assert len(bad.stderr.strip().splitlines()) == 1
