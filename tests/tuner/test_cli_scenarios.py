"""`losstune scenarios list | show | detect`; bad input is one line and exit status 2."""

from __future__ import annotations

import re

import pytest
import yaml

from search_spaces import load_scenario, scenario_space
from tests.tuner.conftest import run_cli

_run = run_cli


def test_list_names_every_builtin(capsys):
    rc, out, _ = _run(["scenarios", "list"], capsys)
    assert rc == 0
    for name in ("rare_disease_detection", "multi_disease_screening", "treatment_response_prediction", "baseline"):
        assert name in out


def test_show_prints_a_preset_file_that_loads_back_to_the_same_space(tmp_path, capsys):
    rc, out, _ = _run(["scenarios", "show", "rare_disease_detection", "--search", "main_loss.gamma=[1, 4]",
                       "--search", "optim.lr={low: 1e-4, high: 3e-3, scale: log}", "--fix", "teacher.ema_decay=0.999"],
                      capsys)
    assert rc == 0
    doc = yaml.safe_load(out)
    assert doc["search"]["main_loss.gamma"] == {"low": 1.0, "high": 4.0}
    assert doc["search"]["teacher.ema_decay"] == 0.999 and doc["teacher"]["ema_decay"] == 0.999
    (tmp_path / "mine.yaml").write_text(out)
    again = scenario_space(load_scenario(str(tmp_path / "mine.yaml")))
    original = scenario_space(load_scenario("rare_disease_detection"), ranges={"main_loss.gamma": [1, 4],
                              "optim.lr": {"low": 1e-4, "high": 3e-3, "scale": "log"}},
                              fixed={"teacher.ema_decay": 0.999})
    assert again.describe() == original.describe() and again.base == original.base


def test_detect_says_which_and_why(capsys):
    rc, out, _ = _run(["scenarios", "detect", "--data", "synthetic:screening"], capsys)
    assert rc == 0 and "scenario: multi_disease_screening" in out and "5 label columns" in out


@pytest.mark.parametrize("args,pattern", [
    (["scenarios", "show", "sepsis"],
     r"unknown scenario 'sepsis'; known: rare_disease_detection, multi_disease_screening"),
    (["scenarios", "show", "baseline", "--search", "optim.lr=[0.1, 0.001]"],
     r"search\.optim\.lr: low must be below high"),
    (["scenarios", "show", "baseline", "--search", "optim.lr=[1e-4, 2.0]"],
     r"outside what the config allows, \(0, 1\]"),
    (["scenarios", "show", "baseline", "--fix", "optim.lrr=0.1"], r"--fix: unknown config key 'optim\.lrr'"),
    (["scenarios", "show", "baseline", "--fix", "noequals"], r"--fix expects KEY=VALUE"),
    (["scenarios", "detect", "--data", "synthetic:nothing"], r"unknown synthetic task 'nothing'"),
])
def test_bad_input_is_one_line_and_exit_2(args, pattern, capsys):
    rc, out, err = _run(args, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert "Traceback" not in out + err


def test_malformed_preset_file(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("main_loss: {gamma: [1,\n")
    rc, _, err = _run(["scenarios", "show", str(tmp_path / "bad.yaml")], capsys)
    assert rc == 2 and "malformed YAML at line" in err and err.count("\n") == 1
