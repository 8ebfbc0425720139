"""The MLflow spool of a job: every record goes to a file in the job folder before it is sent, and
is marked there when MLflow acknowledged it, so that a tracking server that dies mid-job loses
nothing. What was not acknowledged is sent again when the server answers, at the end of the job,
on ``--resume`` and by ``losstune sync JOB``.

The file, ``<job folder>/mlflow_spool.jsonl``, is append-only JSON lines:

- a record: ``{"seq": 7, "kind": "trial_metrics", "trial": "…", …}``, written (and fsynced)
  before it is sent. Records are logical and keyed by the Tune trial id, never by a run id: while
  the server is down the trial's run may not exist yet. Kinds: ``job_params``, ``job_inputs`` (the
  data as MLflow datasets: metadata only, never rows), ``job_status``, ``job_close`` (the job's parent
  run) and ``trial_start``, ``trial_metrics``, ``trial_end``;
- ``{"ack": [7, 8]}``: delivered; ``{"refused": 9, "error": "…"}``: the server answered and will
  never take it (a param changed value, a run deleted), so it does not block the records after it;
- ``{"run": TRIAL_ID, "run_id": …}`` once a trial's run exists, and ``{"creating": TRIAL_ID}``
  just before it is created: a creation whose answer was lost is then looked up, not repeated.

Every line carries a ``mac`` (``tuner.core.seal.line_mac``, keyed with the user's losstune key, which is
never in the job folder): a line that someone else wrote or changed is not a record, because a
record can name any file to upload and any run to write. A crash mid-write leaves a torn last line.
Neither is ever delivered or deleted: both are reported by line number (``Spool.unreadable``), and
the next line starts on a new one.

Replay is idempotent: metrics keep the timestamp they were recorded with, and MLflow's SQL store
skips a metric whose (key, timestamp, step, value) it already holds; params and tags are re-sent
with the same values; a trial's run is looked up by its tags before one is created.

Delivery is serialised across processes by an exclusive ``flock`` on the spool file (the job's
deliverer thread, ``tuner.record.deliverer``; the driver at the end of the job; ``losstune sync``), and
each deliverer first reads what others appended. Nothing here holds a tracking URI: credentials never reach the file.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tuner.cluster.runtime import redact
from tuner.core.layout import CONFIG_TAG, SPOOL_FILE, SPOOL_FILES_DIR, TRIAL_TAG
from tuner.core.seal import line_mac
from tuner.record.stores import client_for

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, Metric

_T = TypeVar("_T")

__all__ = ["SPOOL_FILE", "SPOOL_FILES_DIR", "BEST_TRIAL_RUN_ID", "Spool", "SpoolBusy", "Courier", "Delivery",
           "metric_rows", "reseal"]

# Stands in, in a job_close record's texts, for the best trial's run id, which may not exist while
# the server is down; the courier puts the real id in when it delivers the record.
BEST_TRIAL_RUN_ID = "{losstune:best_trial_run_id}"
TRIAL_KINDS = frozenset({"trial_start", "trial_metrics", "trial_end"})
JOB_KINDS = frozenset({"job_params", "job_inputs", "job_status", "job_close"})
# The datasets a trial's run shows: what it trained on and was selected on; never the held-out test split.
TRIAL_CONTEXTS = ("train", "validation")
# MLflow error codes that a retry cannot fix; anything else (connection refused, timeouts, 5xx) is
# taken for a server that is down.
_PERMANENT = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
                        "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE"})
_STRIKES = 3  # a record that fails this often while the server answers other requests is refused


_APPEND_LOCKS: dict[Path, threading.Lock] = {}
_APPEND_LOCKS_GUARD = threading.Lock()


def _append_lock(path: Path) -> threading.Lock:
    """The lock this process's writers of one spool file take to number a record and write it."""
    with _APPEND_LOCKS_GUARD:
        return _APPEND_LOCKS.setdefault(path.resolve(), threading.Lock())


class SpoolBusy(Exception):
    """Another process (or thread) is delivering this spool right now."""


def metric_rows(values: dict[str, Any], step: int, timestamp_ms: int | None = None) -> list[list[Any]]:
    """[key, value, timestamp_ms, step] rows of the numeric, non-NaN values: the timestamp is fixed
    here, once, so that sending a row again is recognised by MLflow as the same metric."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return [[k, float(v), ts, int(step)] for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]


class Spool:
    """The append-only record file of one job, with what is pending read back into memory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._offset = 0  # bytes of the file already read
        self._next_seq = 1
        self._pending: dict[int, dict[str, Any]] = {}
        self._refused: dict[int, str] = {}
        self._runs: dict[str, str] = {}
        self._creating: set[str] = set()
        self._last_step: dict[str, int] = {}
        self._state: dict[str, str] = {}  # trial id → "started" | "ended", by its latest record
        self._datasets: list[dict[str, Any]] = []  # of the latest job_inputs record, delivered or not
        self._closed = ""  # the status of the latest job_close record, delivered or not
        self._line = 0  # complete lines read
        self._unreadable: dict[int, str] = {}  # line number (from 1) → why it is not a record
        self._key: bytes | None = None
        self._writers = _append_lock(self.path)
        self.refresh()

    @property
    def key(self) -> bytes:
        if self._key is None:
            from tuner.core.seal import state_key

            self._key = state_key()
        return self._key

    # ---- reading
    def refresh(self) -> None:
        """Read what was appended since the last read (by this object or another process)."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return  # nothing complete yet: a line being written, or a torn one
        for raw in data[:end + 1].split(b"\n")[:-1]:
            self._line += 1
            line, why = self._parse(raw)
            if line is None:
                self._unreadable[self._line] = why
            else:
                self._apply(line)
        self._offset += end + 1

    def _parse(self, raw: bytes) -> tuple[dict[str, Any] | None, str]:
        """A verified line, or None and why it is not one."""

        try:
            line = json.loads(raw)
        except ValueError:
            return None, "not a JSON line (cut off mid-write, or not losstune's)"
        if not isinstance(line, dict) or not isinstance(line.get("mac"), str):
            return None, "not signed by losstune"
        mac = line.pop("mac")
        if not hmac.compare_digest(mac, line_mac(json.dumps(line, separators=(",", ":")), key=self.key)):
            return None, "its signature does not match (changed after it was written, or written with another key)"
        return line, ""

    def unreadable(self) -> dict[int, str]:
        """Lines that are not records (line number → why), and a last line cut off mid-write."""
        self.refresh()
        out = dict(self._unreadable)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return out
        if size > self._offset:  # bytes after the last newline: a line being written, or a torn one
            out[self._line + 1] = "incomplete (cut off mid-write)"
        return out

    def _apply(self, line: dict[str, Any]) -> None:
        # Applied to memory on write and again when read back: every step must be idempotent.
        if "seq" in line:
            seq = int(line["seq"])
            self._next_seq = max(self._next_seq, seq + 1)
            if seq not in self._refused:
                self._pending[seq] = line
            tid, kind = line.get("trial"), line.get("kind")
            if kind == "trial_start":
                self._state[tid] = "started"
            elif kind == "trial_end":
                self._state[tid] = "ended"
            elif kind == "trial_metrics" and line.get("metrics"):
                self._last_step[tid] = max(self._last_step.get(tid, 0), *(int(m[3]) for m in line["metrics"]))
            elif kind == "job_inputs" and isinstance(line.get("datasets"), list):
                self._datasets = list(line["datasets"])
            elif kind == "job_close":
                self._closed = str(line.get("status", ""))
        elif "ack" in line:
            for seq in line["ack"]:
                self._pending.pop(int(seq), None)
        elif "refused" in line:
            self._pending.pop(int(line["refused"]), None)
            self._refused[int(line["refused"])] = str(line.get("error", ""))
        elif "run" in line:
            self._runs[str(line["run"])] = str(line["run_id"])
        elif "creating" in line:
            self._creating.add(str(line["creating"]))

    def pending(self) -> list[dict[str, Any]]:
        """The records not yet acknowledged (nor refused), in the order they were written."""
        return [self._pending[s] for s in sorted(self._pending)]

    def refused(self) -> dict[int, str]:
        return dict(self._refused)

    def run_of(self, trial_id: str) -> str | None:
        return self._runs.get(trial_id)

    def was_creating(self, trial_id: str) -> bool:
        return trial_id in self._creating

    def last_step(self, trial_id: str) -> int:
        """The last epoch recorded for a trial: Tune reports epochs again after a restore."""
        return self._last_step.get(trial_id, 0)

    def trial_state(self, trial_id: str) -> str | None:
        return self._state.get(trial_id)

    def closed(self) -> str:
        """How the job's run was last closed in this spool (``FINISHED``, ``KILLED``…), or ''."""
        return self._closed

    def datasets(self) -> list[dict[str, Any]]:
        """The job's datasets (``job_inputs``), which every trial's run shows too (train, validation)."""
        return list(self._datasets)

    # ---- writing
    def _open(self) -> int:
        if self._fd is None:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            if new:  # the file's name must survive a crash too, not only its content
                _fsync_dir(self.path.parent)
        return self._fd

    def _write(self, line: dict[str, Any], *, sync: bool) -> None:
        text = json.dumps(line, separators=(",", ":"))
        data = f'{text[:-1]},"mac":"{line_mac(text, key=self.key)}"}}\n'.encode()
        fd = self._open()
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # after a torn line: start a new one, the torn one stays unreadable
        # One write per line: O_APPEND keeps lines of two processes from interleaving.
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
        self._apply(line)

    def append(self, record: dict[str, Any], *, sync: bool = True) -> int:
        """Write one record before it is sent; returns its sequence number. ``sync=False`` leaves
        the fsync to a later :meth:`sync` (one for a burst of records). Two writers of one spool in
        this process (the callbacks of two Tune runs at once: the stack's search and the baseline
        arm's) each take the next number after what the other wrote: the file is read up first."""
        with self._writers:
            self.refresh()
            seq = self._next_seq
            self._write({"seq": seq, **record}, sync=sync)
        return seq

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def ack(self, seqs: Iterable[int]) -> None:
        seqs = sorted(set(seqs))
        if seqs:
            self._write({"ack": seqs}, sync=True)

    def refuse(self, seq: int, error: str) -> None:
        self._write({"refused": seq, "error": redact(error)[:500]}, sync=True)

    def note_run(self, trial_id: str, run_id: str) -> None:
        self._write({"run": trial_id, "run_id": run_id}, sync=False)

    def note_creating(self, trial_id: str) -> None:
        # Before the create call: if its answer is lost, the next delivery looks the run up.
        self._write({"creating": trial_id}, sync=False)

    @contextmanager
    def delivering(self, wait_s: float = 0.0) -> Iterator[None]:
        """Exclusive right to deliver (within ``wait_s``, else SpoolBusy); reads others' lines first."""
        fd = self._open()
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SpoolBusy(str(self.path)) from None
                time.sleep(0.1)
        try:
            self.refresh()
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def reseal(path: Path) -> int:
    """Sign every JSON line of a spool with this machine's key (``losstune trust``): a spool from an
    older losstune, or from a machine with another key, becomes deliverable. Lines that are not JSON
    objects stay as they are (and unreadable). Returns the number of lines signed."""

    spool = Spool(path)
    signed = 0
    try:
        with spool.delivering(wait_s=5.0):
            raw = path.read_bytes()
            out = []
            for line in raw.split(b"\n"):
                try:
                    doc = json.loads(line) if line.strip() else None
                except ValueError:
                    doc = None
                if isinstance(doc, dict):
                    doc.pop("mac", None)
                    text = json.dumps(doc, separators=(",", ":"))
                    line = f'{text[:-1]},"mac":"{line_mac(text, key=spool.key)}"}}'.encode()
                    signed += 1
                out.append(line)
            from tuner.core.outputs import atomic_write

            atomic_write(path, b"\n".join(out))
    finally:
        spool.close()
    return signed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- delivery
@dataclass
class Delivery:
    """What one delivery (or a sequence of retries) did."""

    delivered: int = 0
    remaining: int = 0
    refused: list[str] = field(default_factory=list)
    error: str = ""  # why it stopped early: the store stopped answering (redacted)
    busy: bool = False  # another deliverer held the spool

    def add(self, other: Delivery) -> None:
        self.delivered += other.delivered
        self.refused += other.refused
        self.remaining, self.error, self.busy = other.remaining, other.error, other.busy


class _Down(Exception):
    """The store does not answer: stop here, keep the rest for later."""


class _Refused(Exception):
    """The store answered no to this record, for good."""


class Courier:
    """Delivers a spool's pending records to MLflow in order, as few calls as possible.

    Consecutive trial records are grouped per trial (the order within a trial is kept, trials are
    independent), so that a trial's pending epochs go out in one ``log_batch`` (MLflow's client
    splits it at its limits). Job records are barriers: ``job_close`` is sent after every trial
    record written before it. Delivery stops at the first failure that looks like a dead server.
    """

    def __init__(self, spool: Spool, uri: str, *, experiment_id: str, parent_run_id: str, lookup_first: bool) -> None:
        """``lookup_first``: trials may already have runs this process does not know of (a
        resumed job, ``sync``), so a run is looked up by its tags before one is created."""
        self.spool, self.uri = spool, uri
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.lookup_first = lookup_first
        self._client: Any = None
        self._strikes: dict[int, int] = {}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = client_for(self.uri)  # fails fast: the spool is the retry
        return self._client

    # ---- entry points
    def deliver(self, *, wait_s: float = 0.0) -> Delivery:
        out = Delivery()
        if not self.spool.path.exists():
            return out
        try:
            with self.spool.delivering(wait_s):
                self._deliver(out)
        except SpoolBusy:
            out.busy = True
        out.remaining = len(self.spool.pending())
        return out

    def deliver_within(self, seconds: float) -> Delivery:
        """Deliver, retrying with a growing pause while the store does not answer, for at most
        ``seconds``: the end of a job waits a little for a server that is restarting, not forever."""
        total = Delivery()
        deadline = time.monotonic() + seconds
        pause = 0.5
        while True:
            total.add(self.deliver(wait_s=min(5.0, max(0.0, deadline - time.monotonic()))))
            if not total.remaining or time.monotonic() + pause > deadline:
                return total
            time.sleep(pause)
            pause = min(pause * 2, 4.0)

    # ---- one pass
    def _deliver(self, out: Delivery) -> None:
        pending = self.spool.pending()
        done: list[int] = []
        cleanup: list[Path] = []
        try:
            i = 0
            while i < len(pending):
                if pending[i].get("kind") in TRIAL_KINDS:
                    j = i
                    while j < len(pending) and pending[j].get("kind") in TRIAL_KINDS:
                        j += 1
                    by_trial: dict[str, list[dict[str, Any]]] = {}
                    for r in pending[i:j]:
                        by_trial.setdefault(str(r["trial"]), []).append(r)
                    for tid, records in by_trial.items():
                        self._guarded(self._trial, records, done, out, tid, records, done, out)
                    i = j
                else:
                    self._guarded(self._job, [pending[i]], done, out, pending[i], done, out, cleanup)
                    i += 1
        except _Down as exc:
            out.error = str(exc)
        finally:
            self.spool.ack(done)
            out.delivered += len(done)
        for folder in cleanup:  # acknowledged for good: the copies are no longer needed
            shutil.rmtree(folder, ignore_errors=True)

    def _guarded(self, fn: Callable[..., object], records: list[dict[str, Any]], done: list[int], out: Delivery,
                 *args: object) -> None:
        """A malformed record (a bug, or a file another version wrote) is refused, so that it never
        blocks the records after it; a store that does not answer stops the delivery."""
        try:
            fn(*args)
        except _Down:
            raise
        except Exception as exc:
            settled = set(done) | set(self.spool.refused())
            self._refuse([r for r in records if int(r.get("seq", 0)) not in settled],
                         f"cannot send it: {_first_line(exc)}", out)

    def _call(self, what: str, seq: int, fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            msg = redact(f"{what}: {_first_line(exc)}")[:400]
            if getattr(exc, "error_code", "") in _PERMANENT or isinstance(exc, (FileNotFoundError, IsADirectoryError)):
                raise _Refused(msg) from None
            if self._answers():
                # The server is up and still says no: after a few tries it never will.
                self._strikes[seq] = self._strikes.get(seq, 0) + 1
                if self._strikes[seq] >= _STRIKES:
                    raise _Refused(msg) from None
            raise _Down(msg) from None

    def _answers(self) -> bool:
        try:
            self.client.get_experiment(self.experiment_id)
            return True
        except Exception:
            return False

    def _refuse(self, records: list[dict[str, Any]], error: str, out: Delivery) -> None:
        for r in records:
            self.spool.refuse(int(r["seq"]), error)
            where = f" of trial {r['trial']}" if r.get("trial") else ""
            out.refused.append(f"{r.get('kind')}{where}: {error}")

    # ---- trials
    def _trial(self, tid: str, records: list[dict[str, Any]], done: list[int], out: Delivery) -> None:
        rid: str | None = None
        batch: list[dict[str, Any]] = []  # trial_metrics records not yet sent

        def send(end: dict[str, Any] | None) -> None:
            nonlocal rid, batch
            group = batch + ([end] if end else [])
            batch = []
            if not group:
                return
            from mlflow.entities import RunTag

            metrics = [_metric(m) for r in group for m in r.get("metrics", ())]
            tags = [RunTag(k, str(v)[:8000]) for k, v in (end or {}).get("tags", {}).items()]
            steps = sorted({m.step for m in metrics}) or [0]
            try:
                rid = rid or self._existing_run(tid, int(group[0]["seq"]))
                if rid is None:
                    raise _Refused(f"trial {tid} has no MLflow run (its start was refused?)")
                self._call(f"metrics of trial {tid} (epochs {steps[0]}-{steps[-1]})", int(group[0]["seq"]),
                           self.client.log_batch, rid, metrics=metrics, tags=tags)
                if end:
                    self._call(f"end the run of trial {tid}", int(end["seq"]), self.client.set_terminated, rid,
                               end.get("status", "FINISHED"))
            except _Refused as exc:
                self._refuse(group, str(exc), out)
                return
            done.extend(int(r["seq"]) for r in group)

        for r in records:
            kind = r["kind"]
            if kind == "trial_metrics":
                batch.append(r)
                continue
            if kind == "trial_end":
                send(r)
                continue
            send(None)  # trial_start (a retried or resumed trial): what came before goes first
            try:
                rid = self._start(tid, r)
                done.append(int(r["seq"]))
            except _Refused as exc:
                self._refuse([r], str(exc), out)
                rid = None
        send(None)

    def _start(self, tid: str, r: dict[str, Any]) -> str:
        from mlflow.entities import Param


        seq = int(r["seq"])
        rid = self.spool.run_of(tid)
        if rid is None and (self.lookup_first or self.spool.was_creating(tid)):
            rid = self._find(tid, seq)
        if rid is None:
            self.spool.note_creating(tid)
            tags = {**r.get("tags", {}), "mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: tid,
                    CONFIG_TAG: r.get("config_json", "")}
            run = self._call(f"create the run of trial {tid}", seq, self.client.create_run, self.experiment_id,
                             run_name=r.get("name") or f"trial {tid}", tags=tags)
            rid = run.info.run_id
            self.spool.note_run(tid, rid)
        else:  # a retried or resumed trial continues its own run
            self._call(f"reopen the run of trial {tid}", seq, self.client.update_run, rid, status="RUNNING")
        params = [Param(k, str(v)[:6000]) for k, v in r.get("params", {}).items()]
        self._call(f"params of trial {tid}", seq, self.client.log_batch, rid, params=params)
        inputs = [d for d in self.spool.datasets() if d.get("context") in TRIAL_CONTEXTS]
        if inputs:  # MLflow keeps one input per (dataset, run): sent again on a retry, it is not doubled
            try:
                self._call(f"datasets of trial {tid}", seq, self.client.log_inputs, rid,
                           datasets=[_dataset_input(d) for d in inputs])
            except _Refused:
                pass  # they only label the run in the UI: a store that refuses them keeps the trial's records
        return rid

    def _existing_run(self, tid: str, seq: int) -> str | None:
        return self.spool.run_of(tid) or self._find(tid, seq)

    def _find(self, tid: str, seq: int) -> str | None:

        found = self._call(f"find the run of trial {tid}", seq, self.client.search_runs, [self.experiment_id],
                           filter_string=f"tags.`{TRIAL_TAG}` = '{tid}' and tags.mlflow.parentRunId = "
                                         f"'{self.parent_run_id}'",
                           order_by=["attributes.start_time ASC"], max_results=1)
        if not found:
            return None
        rid = found[0].info.run_id
        self.spool.note_run(tid, rid)
        return rid

    # ---- the job's parent run
    def _job(self, r: dict[str, Any], done: list[int], out: Delivery, cleanup: list[Path]) -> None:
        from mlflow.entities import Param, RunTag

        c, rid, seq, kind = self.client, self.parent_run_id, int(r["seq"]), r.get("kind")
        try:
            if kind == "job_params":
                self._call("job params", seq, c.log_batch, rid,
                           params=[Param(k, str(v)[:6000]) for k, v in r.get("params", {}).items()])
            elif kind == "job_inputs":
                self._call("job datasets", seq, c.log_inputs, rid,
                           datasets=[_dataset_input(d) for d in r.get("datasets", ())])
            elif kind == "job_status":
                self._call(f"set the job run {r['status']}", seq, c.update_run, rid, status=r["status"])
            elif kind == "job_close":
                best = ""
                if r.get("best_trial"):
                    best = self._existing_run(str(r["best_trial"]), seq) or ""
                # the description links to the best trial's run, whose id may only exist now
                tags = {k: str(v).replace(BEST_TRIAL_RUN_ID, best) for k, v in r.get("tags", {}).items()}
                if r.get("best_trial"):
                    tags["losstune.best_trial_run_id"] = best
                self._call("job summary", seq, c.log_batch, rid, metrics=[_metric(m) for m in r.get("metrics", ())],
                           tags=[RunTag(k, str(v)[:8000]) for k, v in tags.items()])
                for tid, trial_tags in r.get("trial_tags", {}).items():  # e.g. losstune.pareto on the front's runs
                    trial_run = self._existing_run(str(tid), seq)
                    if trial_run is not None:
                        self._call(f"tags of trial {tid}", seq, c.log_batch, trial_run,
                                   tags=[RunTag(k, str(v)) for k, v in trial_tags.items()])
                for name, text in r.get("texts", {}).items():
                    self._call(f"artifact {name}", seq, c.log_text, rid, text.replace(BEST_TRIAL_RUN_ID, best), name)
                base = self.spool.path.parent
                for dest, rel, *digest in r.get("files", ()):
                    path = _spooled_file(base, rel, digest[0] if digest else None)
                    self._call(f"artifact {dest}/{Path(rel).name}", seq, c.log_artifact, rid, str(path), dest)
                self._call("end the job run", seq, c.set_terminated, rid, r.get("status", "FINISHED"))
                if r.get("files_dir"):
                    cleanup.append(base / r["files_dir"])
            else:
                raise _Refused(f"unknown record kind '{kind}' (a newer losstune wrote it?)")
        except _Refused as exc:
            self._refuse([r], str(exc), out)
            return
        done.append(seq)


def _spooled_file(base: Path, rel: str, sha256: str | None) -> Path:
    """A file a job_close record names: inside the job folder, and as it was when it was spooled."""
    import hashlib

    path = (base / rel).resolve()
    if not path.is_relative_to(base.resolve()):
        raise _Refused(f"artifact '{rel}' is outside the job folder")
    if sha256 is not None and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise _Refused(f"artifact '{rel}' changed after it was spooled")
    return path


def _metric(row: list[Any]) -> Metric:
    from mlflow.entities import Metric

    key, value, ts, step = row
    return Metric(str(key), float(value), int(ts), int(step))


def _dataset_input(d: dict[str, Any]) -> DatasetInput:
    """An MLflow dataset input from a spooled description: name, digest, source, schema and profile
    (JSON strings, as MLflow stores them) and the context tag; a dataset never carries rows here."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=str(d["name"]), digest=str(d["digest"]), source_type=str(d["source_type"]),
                      source=str(d["source"]), schema=d.get("schema"), profile=d.get("profile"))
    return DatasetInput(dataset=dataset, tags=[InputTag(key="mlflow.data.context", value=str(d["context"]))])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
