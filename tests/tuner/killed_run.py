"""A one-trial Tune run built the way losstune builds its runs (``make_tuner``, ``fit_run``), whose
driver can be made to die right after its Nth checkpoint deletion (SIGKILL of its process group):
``python -m tests.tuner.killed_run FOLDER N`` (0: no kill). Prints the trial's outcome as JSON, last.
The storage is the local disk behind an fsspec filesystem that counts the deletions; the trial's
workers import this module to unpickle it."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

EPOCHS = 10
_DIE_AT = "KILLED_RUN_DIE_AT"  # "PID:N": that process dies right after its Nth checkpoint deletion


class DyingLocalFS(LocalFileSystem):
    deletions = 0

    def rm(self, path, recursive=False, maxdepth=None):
        super().rm(path, recursive=recursive, maxdepth=maxdepth)
        pid, _, n = os.environ.get(_DIE_AT, "").partition(":")
        if pid == str(os.getpid()) and Path(str(path)).name.startswith("checkpoint_"):
            DyingLocalFS.deletions += 1
            if DyingLocalFS.deletions == int(n):
                os.killpg(0, signal.SIGKILL)


def count_epochs(config):
    from ray import tune

    checkpoint = tune.get_checkpoint()
    start = 0
    if checkpoint:
        with checkpoint.as_directory() as d:
            start = int(Path(d, "epoch").read_text())
    for epoch in range(start + 1, EPOCHS + 1):
        time.sleep(0.05)
        with tempfile.TemporaryDirectory() as d:
            Path(d, "epoch").write_text(str(epoch))
            tune.report({"objective": float(epoch), "epoch": epoch, "resumed_from": start},
                        checkpoint=tune.Checkpoint.from_directory(d))


def main(folder: str, die_at: int) -> None:
    import ray
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from tuner.cluster.storage import Storage
    from tuner.job.launch import RunSpec, fit_run, make_tuner

    if die_at:
        os.environ[_DIE_AT] = f"{os.getpid()}:{die_at}"
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    storage = Storage(given=folder, root=folder, fs=PyFileSystem(FSSpecHandler(DyingLocalFS())))
    spec = RunSpec(parts=("killed",), num_samples=1, points=[{"x": 1}])
    result = fit_run(make_tuner(count_epochs, storage, spec), storage, spec)[0]
    print(json.dumps({"error": str(result.error)[-500:] if result.error else None,
                      "epoch": result.metrics.get("epoch"), "resumed_from": result.metrics.get("resumed_from"),
                      "checkpoints": sorted(p.name for p in Path(result.path).glob("checkpoint_*"))}))


if __name__ == "__main__":  # by the module's name, so that Ray's workers unpickle its classes by reference
    from tests.tuner import killed_run

    killed_run.main(sys.argv[1], int(sys.argv[2]))
