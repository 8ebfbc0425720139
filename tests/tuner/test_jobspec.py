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
    # several objectives
    ({"data": {"source": "a.csv"}, "objectives": ["val/auroc:max"]}, r"--objectives takes 2 or 3 objectives, got 1"),
    ({"data": {"source": "a.csv"}, "objectives": ["val/auroc:max", "val/brier:min"]},
     r"objective 'val/brier:min': val/brier is not one of val/auroc, val/auprc, val/ece"),
    ({"data": {"source": "a.csv"}, "objectives": ["val/auroc:up", "val/ece:min"]},
     r"objective 'val/auroc:up' must be METRIC:max or METRIC:min"),
    ({"data": {"source": "a.csv"}, "objectives": ["val/ece:min", "val/auroc:max"]},
     r"the first of --objectives is what picks each trial's epoch: .* got 'val/ece:min'"),
    ({"data": {"source": "a.csv"}, "objectives": ["val/auroc:max", "val/ece:min"], "metric": "val/score"},
     r"--metric val/score and --objectives starting with val/auroc disagree"),
    ({"data": {"source": "a.csv"}, "objectives": ["val/auroc:max", "val/ece:min"], "select": "val/auprc>=0.3"},
     r"--select names val/auprc, which is not one of the objectives \(val/auroc, val/ece\)"),
    ({"data": {"source": "a.csv"}, "objectives": ["val/auroc:max", "val/ece:min"], "select": "auroc high"},
     r"--select part 'auroc high' is neither a constraint"),
    ({"data": {"source": "a.csv"}, "sampler": "nsga2"}, r"--sampler nsga2 searches several objectives"),
    ({"data": {"source": "a.csv"}, "select": "min val/ece"}, r"--select chooses a model from the front"),
    ({"data": {"source": "a.csv"}, "objectives": ["val/auroc:max", "val/ece:min"], "sampler": "gp"},
     r"--sampler gp searches one objective"),
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


def test_several_objectives_make_the_first_the_metric_and_fifo_the_default_scheduler(tmp_path):
    from tuner.job.plan import plan_job

    spec = JobSpec.from_options(data="synthetic:rare?n=3000", objectives="val/auprc:max, val/ece:min",
                                select="val/auprc>=0.2, min val/ece")
    assert spec.objectives == ["val/auprc:max", "val/ece:min"]
    job, *_ = plan_job(spec, str(tmp_path / "a"))
    assert job.spec.metric == "val/auprc" and job.spec.scheduler.name == "fifo"  # resolved into the saved spec
    assert JobSpec.from_dict(yaml.safe_load(job.spec.to_yaml()), source="x") == job.spec
    job, *_ = plan_job(spec.with_options(scheduler="asha"), str(tmp_path / "b"))
    assert job.spec.scheduler.name == "asha"  # asked for: ASHA on the first objective
    job, *_ = plan_job(JobSpec.from_options(data="synthetic:rare?n=3000"), str(tmp_path / "c"))
    assert job.spec.scheduler.name == "asha" and job.spec.objectives == []
