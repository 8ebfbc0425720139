"""`losstune sync JOB`: deliver the MLflow records a job kept in its spool while the tracking store
did not answer (as `wandb sync` does for offline runs).

The records are replayed idempotently (``tuner.record.spool``): syncing twice, or syncing a job whose
records were already delivered, changes nothing. Exit status 0 when nothing remains; 1 when records
remain (the store does not answer, or stopped answering: run it again) or lines of the spool could
not be read (each named by its line number and kept as it is); 2 for a user mistake (no such job, a
URI that is not an MLflow store, a URI with credentials that was never written down, a job folder
that does not verify).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import click

from trainables.errors import UserError
from tuner.cluster.runtime import redact
from tuner.core.seal import check_file
from tuner.job.plan import JOB_FILE, find_job_folder
from tuner.record.spool import SPOOL_FILE, Courier, Spool
from tuner.record.stores import StoreDown, check_store, check_uri_form

__all__ = ["sync_job", "SyncReport", "RecordsRemain"]


class RecordsRemain(click.ClickException):
    """Records are still undelivered (or unreadable): exit status 1 with one line on stderr
    (tuner.cli.main shows ClickExceptions with their own exit code)."""

    exit_code = 1

    def show(self, file: object = None) -> None:
        click.echo(f"losstune: {self.message}", err=True)


@dataclass
class SyncReport:
    """What ``losstune sync`` did: records delivered, still kept, refused for good, unreadable lines."""

    job: str
    folder: Path
    spool: Path
    delivered: int
    remaining: int
    refused: list[str]
    error: str
    uri_shown: str
    unreadable: dict[int, str] = field(default_factory=dict)  # spool line → why it is not a record

    def text(self) -> str:
        lines = [f"job {self.job}: delivered {self.delivered} MLflow records to {self.uri_shown}"]
        if self.refused:
            lines.append(f"the store refused {len(self.refused)} records for good (marked in {self.spool}): "
                         + "; ".join(self.refused[:3])
                         + (f"; and {len(self.refused) - 3} more" if len(self.refused) > 3 else ""))
        if self.unreadable:
            shown = "; ".join(f"line {n}: {why}" for n, why in sorted(self.unreadable.items())[:5])
            more = f"; and {len(self.unreadable) - 5} more" if len(self.unreadable) > 5 else ""
            lines.append(f"{len(self.unreadable)} lines of {self.spool} are not records and were not delivered "
                         f"({shown}{more}); the file is kept as it is")
        if self.remaining:
            lines.append(f"{self.remaining} records remain in {self.spool} (the store stopped answering: {self.error})")
        elif not self.unreadable:
            lines.append("nothing remains to deliver")
        return "\n".join(lines)

    @property
    def problem(self) -> str:
        """Why the exit status is 1 (empty: it is 0)."""
        if self.remaining:
            return (f"{self.remaining} MLflow records of job '{self.job}' remain undelivered in {self.spool}; "
                    "run `losstune sync` again when the server answers")
        if self.unreadable:
            return (f"{len(self.unreadable)} lines of {self.spool} could not be read as records "
                    f"(lines {', '.join(str(n) for n in sorted(self.unreadable)[:10])})")
        return ""


def sync_job(job: str, *, storage_path: str = "losstune_results", tracking_uri: str | None = None) -> SyncReport:
    """Deliver what the job's spool holds; the URI comes from ``tracking_uri``, else the job file,
    else MLFLOW_TRACKING_URI. Never needs the job's data, nor Ray."""

    folder, storage = find_job_folder(job, storage_path)
    check_file(folder / JOB_FILE)  # it names the runs the records go to: only a job file losstune signed
    try:
        doc = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
        tracking = doc.get("tracking") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"job file '{folder / JOB_FILE}' is damaged ({exc})") from None
    if not isinstance(tracking, dict) or not tracking.get("parent_run_id") or not tracking.get("experiment_id"):
        raise UserError(f"job '{folder.name}' was not recorded in MLflow (it ran with --no-tracking, or never "
                        "opened its records): there is nothing to sync")
    uri = tracking_uri or tracking.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UserError(f"job '{folder.name}' was recorded in a tracking store whose URI holds credentials "
                        "(never written down); pass it with --tracking-uri")
    check_uri_form(uri)  # a URI that is no store is a mistake, not a store that refuses records
    spool_path = folder / SPOOL_FILE
    report = SyncReport(job=folder.name, folder=folder, spool=spool_path, delivered=0, remaining=0, refused=[],
                        error="", uri_shown=f"'{redact(uri)}'")
    if not spool_path.exists():
        return report
    spool = Spool(spool_path)
    try:
        report.unreadable = spool.unreadable()
        report.remaining = len(spool.pending())
        if not report.remaining:
            return report
        try:
            check_store(uri, create=False)
        except StoreDown as exc:  # not a mistake: the records wait for the store to answer
            report.error = str(exc)
            return report
        courier = Courier(spool, uri, experiment_id=str(tracking["experiment_id"]),
                          parent_run_id=str(tracking["parent_run_id"]), lookup_first=True)
        result = courier.deliver(wait_s=2.0)
        if result.busy:
            raise UserError(f"the MLflow records of job '{folder.name}' are being delivered by another losstune "
                            "process (the job itself, or another sync); try again when it ends")
        report.delivered, report.remaining, report.refused, report.error = (result.delivered, result.remaining,
                                                                            result.refused, result.error)
        report.unreadable = spool.unreadable()
    finally:
        spool.close()
        from tuner.cluster.storage import Storage

        remote = Storage.parse(storage)
        if remote.remote:  # what was delivered is marked in the experiment folder's copy too
            remote.mirror(folder, folder.name)
    return report


