"""What losstune writes for a user, and the rules that keep the user's own files safe.

- A command writes only inside what it creates. ``--overwrite`` replaces only an output that
  losstune itself wrote: a run folder is recognised by its marker file (which lists every file
  losstune put there), an exported YAML by its ``provenance.losstune_version``.
- Never the current folder, the home folder, the file system root, or a folder that holds one of
  the command's inputs (the data, a config, a checkpoint).
- Replacement is atomic: the new output is written beside the old one, then swapped in; a failure
  at any point leaves the old output as it was.
- Whether the output can be created at all is checked before any compute (a probe folder is created
  and removed), so a training run never ends in "cannot write".
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import yaml

from trainables.errors import UserError

__all__ = ["RUN_MARKER", "probe_writable", "check_out_dir", "write_run_dir", "check_out_file", "write_file",
           "atomic_write"]

RUN_MARKER = ".losstune-run.json"
_MARKER_FORMAT = "losstune-run-v1"


def _nearest_existing(path: Path) -> Path:
    return next(p for p in [path, *path.parents] if p.exists())


def probe_writable(path: Path, option: str, shown: str) -> None:
    """Create and remove a probe folder where the output will go: /proc, a read-only mount or a
    file in the way fail now, not after an hour of training."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise UserError(f"{option} '{shown}' cannot be created: '{base}' is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".losstune-probe-", dir=base)
        os.rmdir(probe)
    except OSError as exc:
        raise UserError(f"{option} '{shown}' cannot be created: '{base}' is not writable "
                        f"({exc.strerror or exc})") from None


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _protected(out: Path, inputs: Iterable[str | Path | None]) -> str | None:
    """Why ``out`` must never be replaced, or None."""
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if _is_within(cwd, out):
        return "is the current folder or one of its parents"
    if _is_within(home, out):
        return "is the home folder or one of its parents"
    for given in inputs:
        if given and Path(given).exists() and _is_within(Path(given).resolve(), out):
            return f"holds an input of this command ('{given}')"
    return None


def _marker_files(out: Path) -> set[str] | None:
    try:
        doc = json.loads((out / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != _MARKER_FORMAT or not isinstance(doc.get("files"), list):
        return None
    return {str(f) for f in doc["files"]}


def _foreign_entries(out: Path) -> list[str]:
    """Entries of ``out`` that losstune did not write (everything, if there is no marker)."""
    ours = _marker_files(out)
    present = sorted(p.name for p in out.iterdir())
    if ours is None:
        return present
    return [n for n in present if n != RUN_MARKER and n not in ours]


def check_out_dir(out: Path, *, overwrite: bool, inputs: Iterable[str | Path | None] = (),
                  option: str = "--out") -> None:
    """Everything about an output folder that can be checked before training."""
    resolved = out.resolve()
    why = _protected(resolved, inputs)
    if why:
        raise UserError(f"{option} '{out}' {why}; losstune writes a run into a folder of its own, "
                        f"e.g. {option} runs/first")
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} '{out}' is a file; name a folder (losstune never replaces a file it did not write)")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{option} '{out}' already exists and is not empty; choose another folder "
                            "or pass --overwrite (which replaces only a folder losstune wrote)")
        foreign = _foreign_entries(out)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UserError(f"{option} '{out}' holds files losstune did not write ({shown}); --overwrite replaces only "
                            "a folder losstune wrote, so choose another folder")
    probe_writable(out, option, str(out))


def write_run_dir(out: Path, files: dict[str, bytes | str], *, overwrite: bool,
                  inputs: Iterable[str | Path | None] = ()) -> None:
    """Write every file (and the marker) into a new folder beside ``out``, then swap it in:
    all or nothing, and an old output survives any failure."""
    check_out_dir(out, overwrite=overwrite, inputs=inputs)  # again: the folder may have changed meanwhile
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    old: Path | None = None
    try:
        for name, content in files.items():
            target = tmp / name
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        marker = {"format": _MARKER_FORMAT, "files": sorted(files), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / RUN_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        if out.exists():
            if any(out.iterdir()):  # checked above: only losstune's own files
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old)  # onto the empty folder just made: an atomic rename
            else:
                out.rmdir()
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- single files
def _written_by_losstune(path: Path) -> bool:
    """An exported config: a YAML mapping whose provenance names the losstune version that wrote it."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("provenance"), dict) and "losstune_version" in doc["provenance"]


def check_out_file(path: Path, *, overwrite: bool, option: str = "--out") -> None:
    """Refuse, before any compute, an output file that cannot be written or that exists (unless
    ``overwrite``): one line naming it and what to do."""
    if path.is_dir():
        raise UserError(f"{option} '{path}' cannot be written: it is a folder; name a file, e.g. {option} winner.yaml")
    if not path.parent.is_dir():
        raise UserError(f"{option} '{path}' cannot be written: its folder '{path.parent}' does not exist")
    if path.exists():
        if not overwrite:
            raise UserError(f"{option} '{path}' already exists; choose another file or pass --overwrite "
                            "(which replaces only a file losstune exported)")
        if not _written_by_losstune(path):
            raise UserError(f"{option} '{path}' was not written by losstune; --overwrite replaces only a config "
                            "losstune exported, so choose another file")
    probe_writable(path, option, str(path))


def write_file(path: Path, text: str, *, overwrite: bool) -> None:
    """A user's output file (``export --out``): checked, then written atomically."""
    check_out_file(path, overwrite=overwrite)
    atomic_write(path, text)


def atomic_write(path: Path, content: str | bytes, *, tmp_dir: Path | None = None) -> None:
    """The one way losstune writes a file: beside it, then renamed over it, so that a reader (or a
    crash) never sees half a file and an old version stays whole if anything fails. ``tmp_dir`` (on
    the same filesystem) keeps the half-written file out of a folder that another thread lists and
    copies meanwhile (Tune's sync of its staging folder)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.new-", dir=tmp_dir or path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
