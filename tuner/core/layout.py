"""The names a job is known by: the files of its folder and its runs in MLflow. Every layer reads
and writes them, so they live here, below all of them."""

from __future__ import annotations

__all__ = ["SPEC_FILE", "JOB_FILE", "ARMS_FILE", "RESULTS_FILE", "TRIAL_NUMBERS_FILE", "REPORT_FILE", "ABLATION_FILE",
           "SPOOL_FILE", "SPOOL_FILES_DIR", "ROLE_TAG", "TRIAL_TAG", "CONFIG_TAG", "SEARCH_SPACE_TAG",
           "NOTE_TAG", "PARETO_TAG", "job_run_name", "trial_run_name"]

SPEC_FILE = "job.yaml"  # the job spec as given: `losstune tune --job` runs it again
JOB_FILE = "losstune_job.json"  # the planned job: what `--resume`, `predict --job` and `ablate` read
ARMS_FILE = "arms.json"  # each arm's confirmed winner (Confirmed.to_dict), in the job folder and on MLflow
RESULTS_FILE = "results.csv"
TRIAL_NUMBERS_FILE = "trial_numbers.json"  # trial id → creation order, written as Tune adds trials
REPORT_FILE = "report.html"
ABLATION_FILE = "ablation.json"
SPOOL_FILE = "mlflow_spool.jsonl"
SPOOL_FILES_DIR = "mlflow_spool_files"  # artifact files of a job_close record, copied here before it is written

ROLE_TAG = "losstune.role"  # "job" on a job's run
TRIAL_TAG = "losstune.trial_id"
CONFIG_TAG = "losstune.config"  # the trial's full config as JSON: what `losstune export` writes out
SEARCH_SPACE_TAG = "losstune.search_space"  # the job's search space, structured (SearchSpace.to_dict)
NOTE_TAG = "mlflow.note.content"  # a run's description in MLflow's UI (Markdown)
PARETO_TAG = "losstune.pareto"  # several objectives: "true" on the runs of the stack's front, "false" on the others


def job_run_name(job_name: str) -> str:
    """``job NAME``: the name of a job's MLflow run."""
    return f"job {job_name}"


def trial_run_name(trial_id: str, number: int, *, arm: str = "stack", phase: str = "search") -> str:
    """``trial 3 (ab12cd34)``: what a trial's run is, numbered as the job's summary numbers it; the
    baseline arm's and the confirmations' runs say which they are (``baseline trial 2 (…)``,
    ``stack confirmation 1 (…)``)."""
    what = "trial" if phase == "search" else "confirmation"
    prefix = "" if arm == "stack" and phase == "search" else f"{arm} "
    return f"{prefix}{what}{'' if number < 0 else f' {number}'} ({trial_id})"
