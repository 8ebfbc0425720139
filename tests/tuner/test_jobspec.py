"""JobSpec: built from the CLI's options, saved and read back as YAML, overridden field by field."""

from __future__ import annotations

import pytest
import yaml

from trainables.errors import UserError
from tuner.job.spec import DEMO_OPTIONS, JobSpec


def test_options_round_trip_through_yaml(tmp_path):
    spec = JobSpec.from_options(data="patients.csv", label_cols=("outcome",), num_trials=40, target_auroc=0.85,
                                fix=["teacher.ema_decay=0.999"], search=["main_loss.gamma=[1, 4]"], scheduler="fifo")
    assert spec.data.label_cols == ["outcome"] and spec.targets.auroc == 0.85 and spec.scheduler.name == "fifo"
    assert spec.fix == {"teacher.ema_decay": 0.999} and spec.search == {"main_loss.gamma": [1, 4]}
    (tmp_path / "job.yaml").write_text(spec.to_yaml())
    assert JobSpec.load(tmp_path / "job.yaml") == spec
    flat = spec.flat()
    assert flat["targets.auroc"] == 0.85 and flat["data.source"] == "patients.csv" and flat["num_trials"] == 40


def test_options_given_on_the_command_line_override_a_saved_spec_field_by_field():
    spec = JobSpec.from_options(data="a.csv", num_trials=40, fix=["optim.lr=0.001"], target_auprc=0.3)
    again = spec.with_options(num_trials=5, fix=["main_loss.gamma=2"])
    assert again.num_trials == 5 and again.targets.auprc == 0.3 and again.data.source == "a.csv"
    assert again.fix == {"optim.lr": 0.001, "main_loss.gamma": 2}  # merged, not replaced


def test_demo_fills_in_only_what_was_not_given():
    demo = JobSpec.from_command_line({}, {}, job_file=None, demo=True)
    assert demo.data.source == DEMO_OPTIONS["data"] and demo.num_trials == 8 and demo.targets.auroc == 0.9
    mine = JobSpec.from_command_line({}, {"num_trials": 3}, job_file=None, demo=True)
    assert mine.num_trials == 3 and mine.max_epochs == 15
    with pytest.raises(UserError, match="--data is required"):
        JobSpec.from_command_line({}, {}, job_file=None, demo=False)


@pytest.mark.parametrize("doc,pattern", [
    ({"data": {"source": "a.csv"}, "num_trials": 0}, r"--num-trials must be at least 1, got 0"),
    ({"data": {"source": "a.csv"}, "targets": {"auroc": 1.5}}, r"--target-auroc must be in \(0, 1\]"),
    ({"data": {"source": "a.csv"}, "scheduler": {"name": "hyperband"}}, r"job spec field 'scheduler\.name'"),
    ({"data": {"source": "a.csv"}, "num_trial": 3}, r"job spec field 'num_trial'"),
    ({"num_trials": 3}, r"job spec field 'data'"),
    ({"data": {"source": "a.csv"}, "name": "../x"}, r"--experiment '\.\./x' must be letters"),
])
def test_a_bad_spec_is_one_line_naming_the_field(doc, pattern, tmp_path):
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match=pattern) as err:
        JobSpec.load(tmp_path / "job.yaml")
    assert "\n" not in str(err.value)


def test_the_metric_comes_from_the_spec_else_the_scenario_else_the_score(tmp_path):
    from tuner.job.plan import plan_job

    treatment = "synthetic:treatment?n=2000"
    job, *_ = plan_job(JobSpec.from_options(data=treatment), str(tmp_path / "a"))
    assert job.scenario == "treatment_response_prediction" and job.spec.metric == "val/score_ece"
    job, *_ = plan_job(JobSpec.from_options(data=treatment, metric="val/auroc"), str(tmp_path / "b"))
    assert job.spec.metric == "val/auroc"
    job, *_ = plan_job(JobSpec.from_options(data="synthetic:rare?n=3000"), str(tmp_path / "c"))
    assert job.spec.metric == "val/score"
