"""The job run's deliverer: a thread that sends what the job's spool holds to MLflow while the job runs.

Tune's callback (``tuner.record.callback``) only writes the spool; this thread, started and stopped by
the driver around the job's Tune runs, owns the tracking URI. It reads what was appended every
``poll_s``, sends a trial's start and end at once and its epochs every ``flush_every_s`` (a few
``log_batch`` calls per trial), and while the store does not answer it keeps waiting with a growing
pause (at most ``max_backoff_s``), so a server that comes back mid-job receives everything. What is
pending when it stops is delivered by the driver as the job closes, on ``--resume`` or by
``losstune sync``.

While it runs, the deliverer is the process's active one (:func:`active_spool`): Tune's callbacks,
which Tune pickles with the job and hands back on ``--resume``, write into the spool of the job run
that is delivering, which is where the job is now (a job resumed from another folder or machine has
its spool there), not where it was when the callback was pickled.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from tuner.cluster.runtime import redact
from tuner.record.spool import JOB_KINDS, Spool

if TYPE_CHECKING:
    from tuner.record.records import JobRecords

__all__ = ["Deliverer", "active_spool"]

_log = logging.getLogger(__name__)
_ACTIVE: list[Deliverer] = []  # the job runs delivering in this process, the latest last
_URGENT = frozenset({"trial_start", "trial_end"}) | JOB_KINDS


def active_spool() -> Path | None:
    """The spool of the job run delivering in this process, if any."""
    return _ACTIVE[-1].records.spool_path if _ACTIVE else None


class Deliverer:
    """Delivers a job's spool in the background while it runs (the module says when).

    Args:
        records: the job's records (its tracking URI, experiment and job run).
        lookup_first: trials may have runs already (a resumed job): look a run up before creating one.
        flush_every_s: the longest an epoch's metrics wait to be sent.
        max_backoff_s: the longest pause between tries while the store does not answer.
        poll_s: how often the spool is read for new records.
    """

    def __init__(self, records: JobRecords, *, lookup_first: bool, flush_every_s: float = 5.0,
                 max_backoff_s: float = 8.0, poll_s: float = 0.5) -> None:
        self.records, self.lookup_first = records, lookup_first
        self.flush_every_s, self.max_backoff_s, self.poll_s = flush_every_s, max_backoff_s, poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Deliverer:
        self._thread = threading.Thread(target=self._work, name="losstune-deliver", daemon=True)
        self._thread.start()
        _ACTIVE.append(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop after the delivery under way (what is left stays pending for the driver)."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def _work(self) -> None:
        spool = Spool(self.records.spool_path)
        courier = self.records.courier(spool, lookup_first=self.lookup_first)
        last_try, retry_at, backoff = time.monotonic(), 0.0, 1.0
        tried_up_to = 0  # the highest record seq a delivery has been tried for
        try:
            while not self._stop.wait(self.poll_s):
                spool.refresh()
                pending = spool.pending()
                if not pending:
                    continue
                now = time.monotonic()
                newest = max(int(r.get("seq", 0)) for r in pending)
                urgent = any(int(r.get("seq", 0)) > tried_up_to and r.get("kind") in _URGENT for r in pending)
                due = urgent or now - last_try >= self.flush_every_s or 0 < retry_at <= now
                if not due or now < retry_at:
                    continue
                last_try, tried_up_to = now, newest
                try:
                    failed = bool(courier.deliver().error)
                except Exception as exc:  # the spool itself (a full disk): the job goes on, the spool keeps it
                    _log.warning("losstune: cannot deliver MLflow records: %s", redact(str(exc))[:300])
                    failed = True
                if failed:  # the store does not answer: try again later, the spool keeps everything
                    retry_at, backoff = now + backoff, min(backoff * 2, self.max_backoff_s)
                else:
                    retry_at, backoff = 0.0, 1.0
        finally:
            spool.close()
