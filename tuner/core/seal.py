"""The trust boundary of a job folder: every file in it that losstune or Ray would deserialise in a
way that can run code, or that decides what a later command does, is signed with a key that never
lives in a job folder, and checked before it is read.

Why: ``losstune tune --resume`` hands a job folder (or a bucket prefix) to Ray Tune, which unpickles
``tuner.pkl``, the searcher's state and the experiment state (whose JSON embeds cloudpickle blobs).
Whoever can write that folder could otherwise run code as whoever resumes it. Checkpoints
(``torch.load(weights_only=True)``) and YAML (``safe_load``) are safe to read; pickles are not.

- **The key**: ``LOSSTUNE_STATE_KEY`` (a secret of at least 32 characters), else the file
  ``$XDG_CONFIG_HOME/losstune/state.key`` (``~/.config/losstune/state.key``), created on first use
  with 32 random bytes, readable by its owner only. A job resumed on another machine needs the
  same key there (share it as a secret; README, "Security").
- **What is signed**: Ray Tune's state files of every Tune run in a job (``tuner.pkl``,
  ``experiment_state-*.json``, ``searcher-state-*.pkl``, ``search_gen_state-*.json``,
  ``basic-variant-state-*.json``, ``callback-states-*.pkl``), losstune's own job files (``job.yaml``,
  ``losstune_job.json``, ``arms.json``, the winner's files), each beside its signature
  ``NAME.sig``; and every line of the MLflow spool (a ``mac`` field; ``tuner.record.spool``).
- **When**: losstune signs ``tuner.pkl`` when the run is created, Ray's other state files each time
  Tune saves them (``tuner.job.sealed_search`` signs inside Tune's own save, before the
  files are copied to the experiment folder), and its own files as it writes them.
- **The signature**: HMAC-SHA256 over the file's name and its SHA-256, so a signed file cannot be
  renamed into another role. A file that changed after it was signed, a missing signature, or a
  signature made with another key is refused with one line naming the file, before anything is
  unpickled. ``losstune trust JOB`` signs a folder whose state you have checked yourself (a job of an
  older losstune, or a driver killed between a state save and its signature).

What this does not cover: a folder that someone rewrites *while* you resume it (the files are
checked, then Ray reads them again), and the trial folders' own ``params.pkl`` and ``error.pkl``,
which a resume never unpickles (a test plants them to show it).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from trainables.errors import UserError
from tuner.core.outputs import atomic_write

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

__all__ = ["KEY_ENV", "SIG_SUFFIX", "RAY_STATE_PATTERNS", "state_key", "key_id", "signature", "check",
           "sign_file", "check_file", "sealed_write", "line_mac", "is_ray_state", "sign_tune_state",
           "check_tune_state", "tune_runs", "UnsignedState"]

KEY_ENV = "LOSSTUNE_STATE_KEY"
SIG_SUFFIX = ".sig"
_FORMAT = "losstune-sig-v1"
_MIN_KEY_CHARS = 32
# Ray Tune 2.60's state files at the top of a Tune run's folder; each is a pickle or a JSON document
# with embedded cloudpickle blobs (``search_gen_state-*.json`` and ``basic-variant-state-*.json`` are
# pickles despite their names).
RAY_STATE_PATTERNS = ("tuner.pkl", "experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json",
                      "basic-variant-state-*.json", "callback-states-*.pkl", "*.pkl")
# Ray's own temporary files, ``.<uuid4>-tmp-NAME`` (``Searcher.save_to_dir``, ``_atomic_save``), renamed
# over NAME once written. Tune copies its staging folder up in a thread while the next save may be
# writing one, so a finished job's folder can hold a stray copy (a clean-clone CI run found
# ``baseline/.0ca6…-tmp-searcher-state-….pkl``). Ray never reads one: every state file is found with
# ``glob`` on a pattern starting with the state's name (``searcher-state-*.pkl``), and ``glob`` skips
# dot-files. They are neither signed nor checked; any other dot-file that looks like state still is.
_RAY_TEMPORARY = re.compile(r"\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-tmp-")
_HOW_TO = ("README, 'Security': resume where the job ran or share its key (LOSSTUNE_STATE_KEY); "
           "`losstune trust JOB` signs a folder you have checked yourself")


class UnsignedState(UserError):
    """A file of a job folder that does not verify; nothing was read from it."""


# --------------------------------------------------------------------------- the key
def _key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "losstune" / "state.key"


def state_key(*, create: bool = True) -> bytes:
    """The signing key: ``LOSSTUNE_STATE_KEY``, else the key file (created on first use)."""
    given = os.environ.get(KEY_ENV)
    if given is not None:
        given = given.strip()
        if len(given) < _MIN_KEY_CHARS:
            raise UserError(f"{KEY_ENV} must be a secret of at least {_MIN_KEY_CHARS} characters, got "
                            f"{len(given)}; generate one with: python -c 'import secrets; "
                            "print(secrets.token_hex(32))'")
        return given.encode("utf-8")
    path = _key_file()
    if not path.exists():
        if not create:
            raise UserError(f"no losstune state key on this machine ({path} does not exist, {KEY_ENV} is not set): "
                            f"this job was signed elsewhere; {_HOW_TO}")
        _create_key(path)
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
            raise UserError(f"the losstune state key '{path}' can be written by others (or is not yours): anyone "
                            f"who can change it can forge job state; fix it with `chmod 600 {path}` as its owner")
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(f"cannot read the losstune state key '{path}' ({exc.strerror or exc})") from None
    if len(text) < _MIN_KEY_CHARS:
        raise UserError(f"the losstune state key '{path}' is damaged (shorter than {_MIN_KEY_CHARS} characters); "
                        "move it away to make a new one (jobs signed with it then need `losstune trust`)")
    return text.encode("utf-8")


def _create_key(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another losstune process made it first: use theirs
    except OSError as exc:
        raise UserError(f"cannot create the losstune state key '{path}' ({exc.strerror or exc}); set {KEY_ENV} "
                        "to a secret of at least 32 characters instead") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_hex(32) + "\n")


def key_id(key: bytes) -> str:
    """A short public name of a key, so that a message can say that a folder was signed with another."""
    return hashlib.sha256(b"losstune-key-id\0" + key).hexdigest()[:12]


# --------------------------------------------------------------------------- one file
def _mac(key: bytes, name: str, digest: str) -> str:
    return hmac.new(key, f"{_FORMAT}\0{name}\0{digest}".encode(), hashlib.sha256).hexdigest()


def signature(name: str, data: bytes, *, key: bytes | None = None) -> str:
    """The signature document of a file called ``name`` holding ``data``."""
    key = key or state_key()
    digest = hashlib.sha256(data).hexdigest()
    return json.dumps({"format": _FORMAT, "name": name, "sha256": digest, "key_id": key_id(key),
                       "mac": _mac(key, name, digest)}, indent=1) + "\n"


def check(name: str, data: bytes, sig: bytes | None, *, shown: str, key: bytes | None = None) -> None:
    """Refuse (``UnsignedState``) a file whose signature is missing, damaged, made with another key,
    or does not match its content."""
    if sig is None:
        raise UnsignedState(f"'{shown}' is not signed ({name}{SIG_SUFFIX} is missing): losstune did not write it with "
                            f"your key, so it is not read; {_HOW_TO}")
    key = key or state_key(create=False)
    try:
        doc = json.loads(sig)
        mac, their_key = str(doc["mac"]), str(doc.get("key_id", "?"))
    except (ValueError, KeyError, TypeError):
        raise UnsignedState(f"'{shown}' has a damaged signature ({name}{SIG_SUFFIX}), so it is not read; "
                            f"{_HOW_TO}") from None
    digest = hashlib.sha256(data).hexdigest()
    if hmac.compare_digest(mac, _mac(key, name, digest)):
        return
    if their_key != key_id(key):
        raise UnsignedState(f"'{shown}' was signed with another losstune key (id {their_key}; this machine's is "
                            f"{key_id(key)}), so it is not read; {_HOW_TO}")
    raise UnsignedState(f"'{shown}' changed after losstune signed it (its content does not match {name}{SIG_SUFFIX}), "
                        f"so it is not read; {_HOW_TO}")


def sign_file(path: Path, *, key: bytes | None = None) -> None:
    """Write ``path``'s signature beside it (``path.sig``): its SHA-256, HMAC'd with this machine's key."""
    atomic_write(path.with_name(path.name + SIG_SUFFIX), signature(path.name, path.read_bytes(), key=key))


def check_file(path: Path, *, key: bytes | None = None) -> None:
    """Refuse (one line naming the file) a file whose signature is missing or does not verify with this
    machine's key, before anything reads it."""
    sig = path.with_name(path.name + SIG_SUFFIX)
    check(path.name, path.read_bytes(), sig.read_bytes() if sig.is_file() else None, shown=str(path), key=key)


def sealed_write(path: Path, content: str | bytes) -> None:
    """``atomic_write`` and the file's signature beside it."""

    data = content.encode("utf-8") if isinstance(content, str) else content
    atomic_write(path, data)
    atomic_write(path.with_name(path.name + SIG_SUFFIX), signature(path.name, data))


def line_mac(text: str, *, key: bytes | None = None) -> str:
    """The MAC of one spool line (its JSON text without the mac field)."""
    return hmac.new(key or state_key(), b"losstune-spool-line\0" + text.encode("utf-8"), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- Ray Tune's state
def is_ray_state(name: str) -> bool:
    """Whether a file in a Tune run's folder is state that Ray unpickles on restore (and so is signed)."""
    if _RAY_TEMPORARY.match(name):
        return False
    return any(fnmatch.fnmatchcase(name, p) for p in RAY_STATE_PATTERNS)


class _Files:
    """The top-level files of a folder, local (``fs`` None) or inside a pyarrow filesystem."""

    def __init__(self, fs: FileSystem | None, path: str) -> None:
        self.fs, self.path = fs, str(path).rstrip("/")

    def names(self) -> list[str]:
        return self._entries(directories=False)

    def dirs(self) -> list[str]:
        return self._entries(directories=True)

    def _entries(self, *, directories: bool) -> list[str]:
        if self.fs is None:
            p = Path(self.path)
            return sorted(c.name for c in p.iterdir() if c.is_dir() == directories) if p.is_dir() else []
        from pyarrow.fs import FileSelector, FileType

        kind = FileType.Directory if directories else FileType.File
        return sorted(i.base_name for i in self.fs.get_file_info(FileSelector(self.path, allow_not_found=True))
                      if i.type == kind)

    def read(self, name: str) -> bytes | None:
        target = f"{self.path}/{name}"
        if self.fs is None:
            p = Path(target)
            return p.read_bytes() if p.is_file() else None
        from pyarrow.fs import FileType

        if self.fs.get_file_info(target).type != FileType.File:
            return None
        with self.fs.open_input_stream(target) as f:
            return f.read()

    def write(self, name: str, text: str, *, tmp_dir: Path | None = None) -> None:
        target = f"{self.path}/{name}"
        if self.fs is None:
            from tuner.core.outputs import atomic_write

            atomic_write(Path(target), text, tmp_dir=tmp_dir)
            return
        with self.fs.open_output_stream(target) as f:
            f.write(text.encode("utf-8"))


def sign_tune_state(path: str | Path, *, fs: FileSystem | None = None, names: Iterable[str] | None = None,
                    tmp_dir: Path | None = None) -> list[str]:
    """Sign Ray's state files at the top of the Tune run folder ``path`` (only ``names`` when given);
    returns the names signed. ``tmp_dir``: where a signature is written before it is renamed into
    ``path`` (a local folder on the same filesystem; default ``path`` itself)."""
    files, key = _Files(fs, str(path)), state_key()
    signed = []
    for name in (list(names) if names is not None else files.names()):
        if not is_ray_state(name):
            continue
        data = files.read(name)
        if data is not None:
            files.write(name + SIG_SUFFIX, signature(name, data, key=key), tmp_dir=tmp_dir)
            signed.append(name)
    return signed


def check_tune_state(path: str | Path, *, fs: FileSystem | None = None, shown: str | None = None) -> int:
    """Verify every Ray state file at the top of a Tune run folder; returns how many were checked."""
    files, key = _Files(fs, str(path)), None
    count = 0
    for name in files.names():
        if not is_ray_state(name):
            continue
        key = key or state_key(create=False)
        check(name, files.read(name) or b"", files.read(name + SIG_SUFFIX),
              shown=f"{(shown or str(path)).rstrip('/')}/{name}", key=key)
        count += 1
    return count


def tune_runs(path: str | Path, *, fs: FileSystem | None = None) -> list[str]:
    """The Tune run folders of a job: the job's own (its stack search) and every sub-folder holding a
    ``tuner.pkl`` (the baseline arm, the confirmations, the ablation), as paths inside ``fs``."""
    root = _Files(fs, str(path))
    runs = [root.path] if "tuner.pkl" in root.names() else []
    for sub in root.dirs():
        if "tuner.pkl" in _Files(fs, f"{root.path}/{sub}").names():
            runs.append(f"{root.path}/{sub}")
    return runs
