"""The README's numbers are the demo's own: each count it states is read back from what `tune --dry-run`
prints for the same command, and the five commands for a user's own CSV start on such a CSV."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner

from tuner.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"
COST = r"trains up to (\d+) models(?: \(\d+ at a time\))?: stack search (\d+), baseline arm (\d+), confirmation (\d+)"


def _words(text: str) -> str:
    return " ".join(text.split())


def _dry_run_cost(args: list[str]) -> tuple[int, ...]:
    result = CliRunner().invoke(cli, [*args, "--dry-run", "--no-tracking"])
    assert result.exit_code == 0, result.output
    said = re.search(COST, _words(result.output.replace("#", " ")))
    assert said, result.output
    return tuple(int(g) for g in said.groups())


def test_the_demos_count_in_the_readme_is_what_the_demo_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = _words(README.read_text())
    claim = re.search(r"`losstune tune --demo` trains up to (\d+) models: (\d+) in the stack's search, (\d+) in the "
                      r"baseline arm, (\d+) in the confirmation", text)
    assert claim, "the README no longer says what the demo trains"
    assert tuple(int(g) for g in claim.groups()) == _dry_run_cost(["tune", "--demo"])


def test_the_five_commands_for_your_own_csv(tmp_path, monkeypatch):
    """The section's first command, on a CSV like a hospital's (an ID column, missing values, a yes/no
    outcome), checks out and costs what the README says; its ID column is dropped as advised."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    n = 1200
    x = rng.normal(size=(n, 3))
    outcome = np.where(x[:, 0] + rng.normal(size=n) > 1.9, "yes", "no")
    df = pd.DataFrame({"patient_id": [f"P{i:05d}" for i in range(n)], "age": 60 + 10 * x[:, 1],
                       "lactate": np.where(rng.random(n) < 0.1, np.nan, 2 + x[:, 0]), "ward": rng.choice(["A", "B"], n),
                       "outcome": outcome})
    df.to_csv("patients.csv", index=False)
    section = README.read_text().split("## Your own CSV in five commands", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    commands = [shlex.split(line.split("  #")[0]) for line in lines if line.strip()]  # comments off
    assert [c[:2] for c in commands] == [["losstune", "tune"], ["losstune", "best"], ["losstune", "export"],
                                         ["losstune", "predict"], ["losstune", "ui"]]
    stated = re.search(r"this one trains up to (\d+) models — (\d+) in the stack's search, (\d+) in the baseline "
                       r"arm it must beat, (\d+) in the confirmation", _words(section))
    assert stated, "the section no longer says what its job trains"
    assert tuple(int(g) for g in stated.groups()) == _dry_run_cost(commands[0][1:])
    result = CliRunner().invoke(cli, [*commands[0][1:], "--dry-run", "--no-tracking"])
    assert "patient_id" in result.output and "drop_cols:\n  - patient_id" in result.output
