"""`losstune trust`: the command line; ``tuner.job.trust`` signs the folder."""

from __future__ import annotations

import click

__all__ = ["trust_command"]


@click.command("trust")
@click.argument("job", metavar="JOB")
@click.option("--storage-path", default="losstune_results", show_default=True,
              help="Folder (or s3://, gs:// URI) of the experiments, where JOB is looked up by name.")
def trust_command(job: str, storage_path: str) -> None:
    """Sign a job folder you have checked, so that --resume, sync, ablate and predict --job read it.

    Only for a folder you know nobody else could write: what it holds is unpickled on --resume, and
    can run code as you. Needed for a job of a losstune from before signatures, one whose driver was
    killed between saving its state and signing it, or one that ran with another key (share that key
    instead: LOSSTUNE_STATE_KEY, README 'Security').

    \b
    Example:
      losstune trust losstune-rare_disease_detection-20261128-101500
    """
    from tuner.job.trust import trust_job

    location, signed, lines = trust_job(job, storage_path=storage_path)
    click.echo(f"job {location}: signed {len(signed)} files" + (f" and {lines} spool lines" if lines else ""))
    for name in signed:
        click.echo(f"  {name}")
