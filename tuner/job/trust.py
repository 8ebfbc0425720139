"""`losstune trust JOB`: sign a job folder whose state you have checked yourself (``tuner.core.seal``).

``--resume``, ``sync``, ``ablate`` and ``predict --job`` read only what losstune signed with this
machine's key. A folder they refuse is one that someone else wrote or changed, one written with
another key, one of a losstune from before signatures, or one whose driver was killed between a
state save and its signature. When you know who wrote it, ``trust`` signs it as it is: every file
those commands read, and every line of its MLflow spool. It unpickles nothing itself.
"""

from __future__ import annotations

import click

from tuner.core.seal import key_id, sign_file, sign_tune_state, state_key, tune_runs
from tuner.job.plan import ARMS_FILE, JOB_FILE, SPEC_FILE, find_job_folder, read_job
from tuner.record.spool import SPOOL_FILE, reseal

__all__ = ["trust_job"]


def trust_job(job: str, *, storage_path: str) -> tuple[str, list[str], int]:
    """Sign the job's files; returns (the job's location, the files signed, spool lines signed)."""

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


