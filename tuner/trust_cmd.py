"""`losstune trust JOB`: sign a job folder whose state you have checked yourself (``tuner.seal``).

``--resume``, ``sync``, ``ablate`` and ``predict --job`` read only what losstune signed with this
machine's key. A folder they refuse is one that someone else wrote or changed, one written with
another key, one of a losstune from before signatures, or one whose driver was killed between a
state save and its signature. When you know who wrote it, ``trust`` signs it as it is: every file
those commands read, and every line of its MLflow spool. It unpickles nothing itself.
"""

from __future__ import annotations

import click

__all__ = ["trust_command", "trust_job"]


def trust_job(job: str, *, storage_path: str) -> tuple[str, list[str], int]:
    """Sign the job's files; returns (the job's location, the files signed, spool lines signed)."""
    from tuner.plan import ARMS_FILE, JOB_FILE, SPEC_FILE, find_job_folder, read_job
    from tuner.seal import key_id, sign_file, sign_tune_state, state_key, tune_runs
    from tuner.spool import SPOOL_FILE, reseal

    folder, storage_path = find_job_folder(job, storage_path)
    signed: list[str] = []
    for rel in (JOB_FILE, SPEC_FILE, ARMS_FILE, "winner/config.yaml", "winner/model.pt", "winner/preprocessor.json"):
        if (folder / rel).is_file():
            sign_file(folder / rel)
            signed.append(str(folder / rel))
    lines = reseal(folder / SPOOL_FILE) if (folder / SPOOL_FILE).is_file() else 0
    loaded = read_job(folder, storage_path=storage_path)  # now verifiable: where its Tune runs live
    storage = loaded.storage
    root = storage.ray_path(loaded.experiment)
    for run in tune_runs(root, fs=storage.fs):
        shown = storage.shown(loaded.experiment) + run[len(root):]
        signed += [f"{shown}/{name}" for name in sign_tune_state(run, fs=storage.fs)]
    loaded.publish()  # a job in object storage: its own files and their signatures go there too
    click.echo(f"losstune: signed with the key {key_id(state_key())} of this machine", err=True)
    return loaded.location, signed, lines


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
    location, signed, lines = trust_job(job, storage_path=storage_path)
    click.echo(f"job {location}: signed {len(signed)} files" + (f" and {lines} spool lines" if lines else ""))
    for name in signed:
        click.echo(f"  {name}")
