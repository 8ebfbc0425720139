"""`losstune sync`: the command line; ``tuner.job.sync`` delivers the records."""

from __future__ import annotations

import click

__all__ = ["sync_command"]


@click.command("sync")
@click.argument("job", metavar="JOB")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking store (default: the one the job was recorded in, else MLFLOW_TRACKING_URI).")
@click.option("--storage-path", default="losstune_results", show_default=True,
              help="Folder (or s3://, gs:// URI) of the experiments, where JOB is looked up by name.")
def sync_command(job: str, tracking_uri: str | None, storage_path: str) -> None:
    """Deliver the MLflow records a job kept while its tracking store did not answer.

    JOB is the job's name (under --storage-path), the path of its folder or its URI. Records already in
    MLflow are not written twice. Exit status 1 when some remain undelivered (run it again) or lines of
    the spool cannot be read; 2 for a mistake (no such job, a URI that is no MLflow store).

    \b
    Examples:
      losstune sync losstune-rare_disease_detection-20261128-101500
      losstune sync ./losstune_results/sepsis --tracking-uri http://mlflow.internal:5000
    """
    from tuner.job.sync import RecordsRemain, sync_job

    report = sync_job(job, storage_path=storage_path, tracking_uri=tracking_uri)
    click.echo(report.text())
    if report.problem:
        raise RecordsRemain(report.problem)
