"""`losstune tune`: plan a job (``tuner.plan``: every check, no Ray), run or resume it on Ray Tune
(``tuner.run``), and report it (``tuner.report``). This module gathers their public names."""

from __future__ import annotations

from tuner.plan import JOB_FILE, SPEC_FILE, TuneJob, load_job, plan_job
from tuner.report import RESULTS_FILE, TrialRow, TuneOutcome, format_summary, write_results_csv
from tuner.run import Tracking, provenance, run_job

__all__ = ["TuneJob", "TrialRow", "TuneOutcome", "Tracking", "plan_job", "load_job", "run_job", "format_summary",
           "write_results_csv", "provenance", "JOB_FILE", "SPEC_FILE", "RESULTS_FILE"]
