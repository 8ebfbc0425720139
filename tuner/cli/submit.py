"""`losstune submit` and `losstune jobs`: a tuning job sent to a Ray cluster through the Ray Jobs API
(``tuner.job.submit`` checks and stages it; ``tuner.cluster.ray_jobs`` talks to the dashboard).

Exit status of ``--follow`` and ``jobs logs --follow``: the job's, 0 SUCCEEDED, 1 FAILED, 130 STOPPED.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from tuner.cluster.ray_jobs import EXIT_CODES, TERMINAL, connect_jobs, follow_job, job_status, jobs_api, public_text
from tuner.cluster.runtime import redact

if TYPE_CHECKING:
    from tuner.job.spec import OptionValue

__all__ = ["build_submit_command", "jobs_group"]


def _finish(status: str, job_id: str, url: str) -> None:
    click.echo(f"job {job_id}: {status}")
    raise click.exceptions.Exit(EXIT_CODES.get(status, 1))


# ---------------------------------------------------------------------------------------- commands
_ADDRESS_HELP = "Ray dashboard URL, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, else an http(s) RAY_ADDRESS)."
_NOT_SUBMITTED = ("address", "resume", "top", "dry_run")


def build_submit_command(tune_command: click.Command) -> click.Command:
    """``losstune submit``: the options of ``tune`` (but --address, --resume, --top, --dry-run)
    plus ``--address URL`` and ``--follow``."""

    @click.command("submit")
    @click.option("--address", default=None, metavar="URL", help=_ADDRESS_HELP)
    @click.option("--follow", is_flag=True, help="Stream the job's logs and exit with its status "
                                                  "(0 SUCCEEDED, 1 FAILED, 130 STOPPED).")
    @click.pass_context
    def submit_command(ctx: click.Context, *, address: str | None, follow: bool, job_file: str | None,
                       tracking_uri: str | None, no_tracking: bool, storage_path: str, demo: bool,
                       demo_images: bool, **options: OptionValue) -> None:
        """Check a tuning job here, then run it on a Ray cluster with the Ray Jobs API.

        The driver runs on the head (`losstune tune --job job.yaml`); losstune must be installed
        there. Local data up to 100 MiB travels with the job; larger data needs a URI or a path
        the cluster reads. MLflow credentials belong in the cluster's environment.

        \b
        Examples:
          losstune submit --data patients.csv --label-col outcome --address http://head:8265 --follow
          losstune submit --demo --address http://127.0.0.1:8265 --follow
          losstune submit --job job.yaml --tracking-uri http://mlflow:5000 --storage-path /mnt/shared/losstune
        """
        from click.core import ParameterSource

        from tuner.job.spec import OPTION_FIELDS, JobSpec
        from tuner.job.submit import submit_spec

        # tune's options that are not part of the spec (e.g. --shared-storage) go to the entrypoint as given
        extra = _forwarded(ctx, {k: options.pop(k) for k in list(options) if k not in OPTION_FIELDS})
        given = {k: v for k, v in options.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
        spec = JobSpec.from_command_line(options, given, job_file=job_file, demo=demo, demo_images=demo_images)
        storage_given = ctx.get_parameter_source("storage_path") is not ParameterSource.DEFAULT
        sub = submit_spec(spec, address=address, storage_path=storage_path if storage_given else None,
                          tracking_uri=tracking_uri, no_tracking=no_tracking, plan_storage=storage_path, extra=extra,
                          echo=click.echo)
        client, url, job_id = sub.client, sub.url, sub.job_id
        click.echo(f"submitted job {job_id} (losstune job {sub.name})")
        if not no_tracking and not tracking_uri:
            click.echo("note: the job records to the cluster's MLFLOW_TRACKING_URI (else sqlite in its working "
                       "folder); pass --tracking-uri or --no-tracking to choose")
        if not storage_given:
            click.echo("note: without --storage-path the results stay in the job's working folder on the head; "
                       "pass a shared path or an s3:// URI to keep them")
        if not follow:
            click.echo(f"follow it with: losstune jobs logs {job_id} --follow --address {redact(url)}")
            return
        try:
            status = follow_job(client, url, job_id, write=lambda s: click.echo(s, nl=False))
        except KeyboardInterrupt:
            click.echo(f"losstune: stopped following; job {job_id} goes on (stop it with: losstune jobs stop "
                       f"{job_id} --address {redact(url)})", err=True)
            raise click.exceptions.Exit(130) from None
        _finish(status, job_id, url)

    for p in tune_command.params:
        if p.name not in _NOT_SUBMITTED:
            submit_command.params.append(p)
    return submit_command


def _forwarded(ctx: click.Context, values: dict[str, Any]) -> list[str]:
    """Command-line arguments that repeat the given (non-default) values of these options."""
    from click.core import ParameterSource

    params = {p.name: p for p in ctx.command.params}
    out: list[str] = []
    for name, value in values.items():
        p = params[name]
        if ctx.get_parameter_source(name) is ParameterSource.DEFAULT or not isinstance(p, click.Option):
            continue
        flag = max(p.opts, key=len)
        if p.is_flag:
            if value:
                out.append(flag)
            elif p.secondary_opts:
                out.append(max(p.secondary_opts, key=len))
        else:
            for v in (value if p.multiple else [value]):
                out += [flag, str(v)]
    return out


def _address_option(f):
    return click.option("--address", default=None, metavar="URL", help=_ADDRESS_HELP)(f)


@click.group("jobs")
def jobs_group() -> None:
    """Jobs on a Ray cluster (submitted with `losstune submit`): list, status, logs, stop."""


@jobs_group.command("list")
@_address_option
def jobs_list(address: str | None) -> None:
    """The cluster's jobs, newest last: id, status, entrypoint."""
    client, url, _ = connect_jobs(address)
    with jobs_api(url):
        jobs = client.list_jobs()
    jobs = sorted(jobs, key=lambda j: j.start_time or 0)
    if not jobs:
        click.echo("no jobs")
    for j in jobs:
        jid = j.submission_id or j.job_id
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        status = str(getattr(j.status, "value", j.status))
        click.echo(f"{jid}  {status:<9}  {started}  {public_text(j.entrypoint)}")


@jobs_group.command("status")
@click.argument("job_id")
@_address_option
def jobs_status(job_id: str, address: str | None) -> None:
    """A job's status (and its message when it failed or stopped)."""
    client, url, _ = connect_jobs(address)
    with jobs_api(url, job_id):
        info = client.get_job_info(job_id)
    status = str(getattr(info.status, "value", info.status))
    msg = f" ({public_text(' '.join(str(info.message).split()))})" if info.message and status != "SUCCEEDED" else ""
    click.echo(f"{job_id}: {status}{msg}")


@jobs_group.command("logs")
@click.argument("job_id")
@_address_option
@click.option("--follow", is_flag=True, help="Stream until the job ends; exit with its status.")
def jobs_logs(job_id: str, address: str | None, follow: bool) -> None:
    """A job's output so far, or (--follow) until it ends."""
    client, url, _ = connect_jobs(address)
    if not follow:
        with jobs_api(url, job_id):
            click.echo(client.get_job_logs(job_id), nl=False)
        return
    try:
        status = follow_job(client, url, job_id, write=lambda s: click.echo(s, nl=False))
    except KeyboardInterrupt:
        click.echo(f"losstune: stopped following; job {job_id} goes on", err=True)
        raise click.exceptions.Exit(130) from None
    _finish(status, job_id, url)


@jobs_group.command("stop")
@click.argument("job_id")
@_address_option
def jobs_stop(job_id: str, address: str | None) -> None:
    """Ask the cluster to stop a job (its trials end; the status becomes STOPPED)."""
    client, url, _ = connect_jobs(address)
    status = job_status(client, url, job_id)  # an unknown id is one line
    if status in TERMINAL:
        click.echo(f"job {job_id} already ended: {status}")
        return
    with jobs_api(url, job_id):
        client.stop_job(job_id)
    click.echo(f"stopping job {job_id}; see it end with: losstune jobs logs {job_id} --follow")
