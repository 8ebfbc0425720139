"""A trial's checkpoint is deleted only once no state that a resume could read still names it.

Ray 2.60's Tune deletes a trial's checkpoints beyond ``CheckpointConfig(num_to_keep)`` the moment the
trial registers a newer one (``_CheckpointManager.register_checkpoint``), while the experiment state
that a resume reads — which names each trial's latest checkpoint — is saved, and copied into the
experiment folder, later. Its forced save ("every ``num_to_keep`` checkpoints of a trial") comes in
the very step that deleted the checkpoint the last copied state names, so a driver killed between the
two leaves a state whose checkpoint is gone: the resumed trial fails its restores ("Could not recover
from checkpoint as it does not exist on storage anymore") and loses its epochs (first seen in a
clean-clone run; test_tracking's SIGKILL/resume test then failed 3 runs in 8).

Tune still decides which checkpoints go; their deletion waits. Each deletion Tune asks for is queued;
each state save of a run (``sealed_search``'s hook inside Tune's save) notes the SHA-256 of the state
it wrote, and a queued checkpoint is deleted once the experiment folder holds a state saved after Tune
gave the checkpoint up — a state that cannot name it. That is usually one forced save later, so a
trial keeps up to about three times ``num_to_keep`` checkpoints while it trains. When a run's
``fit`` returns, its last state is in the folder (Tune waits for that copy): what is still queued
goes, and in a run that continues an earlier driver's, any other checkpoint of its trials than those
Tune kept (one a killed driver had queued and not deleted yet, or written and not recorded).
"""

from __future__ import annotations

import hashlib
import itertools
import posixpath
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.tune import ResultGrid

__all__ = ["install", "restoring", "on_save", "settle"]

_CHECKPOINT = re.compile(r"checkpoint_\d+")
_STATE_FILE = "experiment_state-{}.json"  # Tune's TuneController.CKPT_FILE_TMPL


@dataclass(frozen=True)
class _Queued:
    fs: Any  # the pyarrow filesystem Tune named the checkpoint in
    path: str
    seq: int


@dataclass(frozen=True)
class _Save:
    name: str  # the state file, experiment_state-SESSION.json
    digest: str
    seq: int  # every deletion queued before this save has a smaller seq


_lock = threading.Lock()
_seq = itertools.count()
_queued: dict[str, list[_Queued]] = {}  # by the run's experiment folder, as pyarrow names it
_saves: dict[str, list[_Save]] = {}  # by the experiment folder's name (Tune's staging folder knows no more)
_tune_delete: Any = None  # Ray's own deletion (a folder or a file; an error logged, not raised), set by install
_restored: set[str] = set()  # runs restored from an earlier driver's state, swept at their end


def _experiment_of(path: str) -> str:
    return posixpath.dirname(posixpath.dirname(posixpath.normpath(path)))  # EXPERIMENT/TRIAL/checkpoint_N


def _queue(fs: Any, fs_path: str) -> None:
    with _lock:
        _queued.setdefault(_experiment_of(fs_path), []).append(_Queued(fs, fs_path, next(_seq)))


def install() -> None:
    """Routes Tune's checkpoint deletions in this process through the queue (idempotent)."""
    global _tune_delete
    from ray.train._internal import checkpoint_manager

    with _lock:
        if _tune_delete is None:
            _tune_delete = checkpoint_manager._delete_fs_path
            checkpoint_manager._delete_fs_path = _queue


def restoring(experiment: str) -> None:
    """The run in ``experiment`` continues an earlier driver's: its end sweeps its trials' folders
    for checkpoints that driver left (a fresh run's deletions all went through the queue)."""
    with _lock:
        _restored.add(posixpath.normpath(experiment))


def on_save(staging_dir: str, session_str: str) -> None:
    """Called inside Tune's save of a run's state, once the state file is in ``staging_dir`` (Tune's
    ``.../EXPERIMENT/driver_artifacts``) and before it is copied to the experiment folder."""
    experiment_name = Path(staging_dir).parent.name
    name = _STATE_FILE.format(session_str)
    try:
        digest = hashlib.sha256((Path(staging_dir) / name).read_bytes()).hexdigest()
    except OSError:
        return
    with _lock:
        experiments = [e for e, q in _queued.items() if q and posixpath.basename(e) == experiment_name]
        saves = _saves.setdefault(experiment_name, [])
        if not experiments:
            saves.clear()  # a deletion queued from now on needs a later save than these
    for experiment in experiments:
        _release(experiment)
    with _lock:
        _saves[experiment_name].append(_Save(name, digest, next(_seq)))


def settle(experiment: str, grid: ResultGrid | None = None) -> None:
    """After a run's ``fit``: deletes what the state now in ``experiment`` allows; for a restored run,
    with its ``grid`` and once the folder holds the run's last saved state, also every other
    checkpoint folder of its trials than those Tune kept (what a killed driver had queued, or written
    and not yet recorded: the state names none of them). One listing per trial, so only there."""
    experiment = posixpath.normpath(experiment)
    _release(experiment)
    with _lock:
        saves = list(_saves.get(posixpath.basename(experiment), ()))
        restored = experiment in _restored
        _restored.discard(experiment)
    results = [r for r in grid or () if r.filesystem is not None]
    if not restored or not results or not saves:
        return
    if _state_digest(results[0].filesystem, posixpath.join(experiment, saves[-1].name)) != saves[-1].digest:
        return  # Tune's last copy did not land: an older state may name other checkpoints
    for result in results:
        kept = {posixpath.basename(c.path) for c, _ in (result.best_checkpoints or [])}
        if result.checkpoint is not None:
            kept.add(posixpath.basename(result.checkpoint.path))
        if kept:  # a trial with no checkpoint has nothing to compare with
            _sweep(result.filesystem, result.path, keep=kept)


def _sweep(fs: Any, trial_path: str, *, keep: set[str]) -> None:
    from pyarrow.fs import FileSelector, FileType

    try:
        infos = fs.get_file_info(FileSelector(trial_path))
    except OSError:
        return
    for info in infos:
        name = posixpath.basename(info.path)
        if info.type == FileType.Directory and _CHECKPOINT.fullmatch(name) and name not in keep:
            _tune_delete(fs=fs, fs_path=info.path)


def _state_digest(fs: Any, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:  # not copied yet (pyarrow's FileNotFoundError is one)
        return None


def _release(experiment: str) -> None:
    with _lock:
        queued = list(_queued.get(experiment, ()))
        saves = list(_saves.get(posixpath.basename(experiment), ()))
    if not queued or not saves:
        return
    fs = queued[0].fs
    in_folder = {n: _state_digest(fs, posixpath.join(experiment, n)) for n in {s.name for s in saves}}
    durable = [s.seq for s in saves if in_folder[s.name] == s.digest]
    if not durable:
        return  # the folder still holds an older state (or a copy is under way): it may name them
    upto = max(durable)
    with _lock:
        gone = [q for q in _queued.get(experiment, ()) if q.seq < upto]
        _queued[experiment] = [q for q in _queued.get(experiment, ()) if q.seq >= upto]
        name = posixpath.basename(experiment)
        _saves[name] = [s for s in _saves.get(name, ()) if s.seq >= upto]  # the last stays, for settle
    for q in gone:
        _tune_delete(fs=q.fs, fs_path=q.path)
