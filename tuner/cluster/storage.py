"""Where a job's experiment lives: a local folder, a folder mounted on every node (NFS), or object
storage that ``pyarrow.fs`` opens (``s3://bucket/prefix``, ``gs://…``; an S3-compatible endpoint such
as MinIO through ``AWS_ENDPOINT_URL_S3``).

Ray Tune writes the trials' results and checkpoints there from whichever node runs them
(``RunConfig(storage_path=..., storage_filesystem=...)``). losstune's own files of a job — the spec
(``job.yaml``), what planning resolved (``losstune_job.json``), ``results.csv``, the trial numbers and
the MLflow spool — are written by the driver into a local folder first (``losstune_results/<job>``
where the job runs) and mirrored into the experiment folder, so that a job in object storage can be
resumed, synced or exported from any machine that reaches the bucket.

Credentials never appear here: pyarrow resolves them on each node from its environment (AWS_*,
GOOGLE_*, an instance role), and a URI that carries them is refused.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trainables.errors import UserError
from trainables.sources import object_store

__all__ = ["LOCAL_ROOT", "Storage", "is_uri"]

LOCAL_ROOT = "losstune_results"  # the default --storage-path, and the driver's folder of a job in object storage
SCHEMES = ("s3", "gs", "gcs")


def is_uri(path: str) -> bool:
    """Whether ``path`` names object storage (``s3://``, ``gs://``, …) rather than a folder."""
    return "://" in str(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


@dataclass(frozen=True)
class Storage:
    """A parsed ``--storage-path``. ``root`` is the path Ray and pyarrow use inside ``fs`` (for a URI:
    ``bucket/prefix`` without the scheme; for a folder: its absolute path, and ``fs`` is None)."""

    given: str
    root: str
    fs: Any = None

    @classmethod
    def parse(cls, storage_path: str) -> Storage:
        if not is_uri(storage_path):
            return cls(given=str(Path(storage_path).resolve()), root=str(Path(storage_path).resolve()))
        parts = urlsplit(storage_path)
        if parts.scheme not in SCHEMES:
            raise UserError(f"--storage-path '{storage_path}': unsupported scheme '{parts.scheme}://'; use a folder, "
                            "s3://bucket/prefix or gs://bucket/prefix")
        if "@" in parts.netloc or parts.query:
            raise UserError("--storage-path must not carry credentials or a query; set them in the environment "
                            "of every node instead (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                            "GOOGLE_APPLICATION_CREDENTIALS, or an instance role)")
        if not parts.netloc:
            raise UserError(f"--storage-path '{storage_path}' names no bucket; write it as "
                            f"{parts.scheme}://bucket/prefix")

        uri = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        try:
            fs, root = object_store(uri)
        except Exception as exc:  # pyarrow without S3/GCS support, a malformed endpoint
            raise UserError(f"cannot open --storage-path '{uri}': {_first_line(exc)}") from None
        return cls(given=uri, root=root.rstrip("/"), fs=fs)

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def ray_path(self, *parts: str) -> str:
        """A path as Ray (with ``storage_filesystem=self.fs``) and pyarrow name it."""
        return "/".join([self.root, *parts])

    def shown(self, *parts: str) -> str:
        """The same path as the user writes it: a URI, or a local path."""
        return "/".join([self.given, *parts])

    def local_folder(self, experiment: str, *, local_root: str | Path = LOCAL_ROOT) -> Path:
        """Where the driver keeps the job's own files: in the experiment folder itself when it is a
        local one, else in ``local_root/<experiment>`` on the driver."""
        if not self.remote:
            return Path(self.root) / experiment
        return Path(local_root).resolve() / experiment

    def ray_kwargs(self) -> dict[str, Any]:
        return {"storage_path": self.root, "storage_filesystem": self.fs}

    # ---- object storage (every method below is for ``remote`` storage)
    def _fail(self, what: str, exc: BaseException) -> UserError:
        return UserError(f"cannot {what} in --storage-path '{self.given}' ({type(exc).__name__}: "
                         f"{_first_line(exc)}); check the bucket, the credentials in the environment "
                         "(AWS_*/GOOGLE_*) and, for an S3-compatible store, AWS_ENDPOINT_URL_S3")

    def exists(self, *parts: str) -> bool:
        from pyarrow.fs import FileType

        try:
            return self.fs.get_file_info(self.ray_path(*parts)).type != FileType.NotFound
        except Exception as exc:
            raise self._fail("look up '" + "/".join(parts) + "'", exc) from None

    def check_writable(self) -> None:
        """Write and remove a probe before any compute is spent: a missing bucket, wrong credentials,
        an unreachable endpoint, a read-only folder or a file in the way is one line now, not a
        traceback after Ray started."""
        if not self.remote:
            from tuner.core.outputs import probe_writable

            probe_writable(Path(self.root) / ".losstune-probe", "--storage-path", self.given)
            return
        probe = self.ray_path(f".losstune-probe-{os.getpid()}")
        try:
            with self.fs.open_output_stream(probe) as f:
                f.write(b"losstune storage probe\n")
            self.fs.delete_file(probe)
        except Exception as exc:
            raise self._fail("write", exc) from None

    def mirror(self, folder: Path, experiment: str) -> None:
        """Copy the driver's files of a job (every file under ``folder``) into its experiment folder."""
        from pyarrow.fs import LocalFileSystem, copy_files

        try:
            copy_files(str(folder.resolve()), self.ray_path(experiment), source_filesystem=LocalFileSystem(),
                       destination_filesystem=self.fs)
        except Exception as exc:
            raise self._fail(f"copy job '{experiment}'", exc) from None

    def fetch(self, experiment: str, names: list[str], folder: Path, *, folders: list[str] = ()) -> None:
        """The driver's files of a job (``names``, and every file under ``folders``), from its
        experiment folder into a local one, for ``--resume`` or ``sync`` on a machine that did not run
        the job. Ray's own files stay where they are."""
        from pyarrow.fs import FileSelector, FileType

        base = self.ray_path(experiment)
        try:
            wanted = [self.ray_path(experiment, n) for n in names]
            for sub in folders:
                if self.fs.get_file_info(self.ray_path(experiment, sub)).type == FileType.Directory:
                    selector = FileSelector(self.ray_path(experiment, sub), recursive=True)
                    wanted += [i.path for i in self.fs.get_file_info(selector) if i.type == FileType.File]
            for src in wanted:
                if self.fs.get_file_info(src).type != FileType.File:
                    continue
                target = folder / src[len(base) + 1:]
                target.parent.mkdir(parents=True, exist_ok=True)
                with self.fs.open_input_stream(src) as r:
                    target.write_bytes(r.read())
        except Exception as exc:
            raise self._fail(f"read job '{experiment}'", exc) from None

    def local_checkpoint(self, checkpoint: str) -> tuple[str, Any]:
        """A checkpoint folder Ray wrote (a path inside ``fs``) as a local folder, and the temporary
        folder to remove afterwards (None for local storage, where it already is one)."""
        if not self.remote:
            return checkpoint, None
        from pyarrow.fs import LocalFileSystem, copy_files

        tmp = tempfile.TemporaryDirectory(prefix="losstune-winner-")
        try:
            copy_files(checkpoint, tmp.name, source_filesystem=self.fs, destination_filesystem=LocalFileSystem())
        except Exception as exc:
            tmp.cleanup()
            raise self._fail(f"read the winner's checkpoint '{checkpoint}'", exc) from None
        return tmp.name, tmp
