"""Ctrl-C and SIGTERM during a job: the first stops the trials through Ray and lets the job save its
state and print the command that resumes it; a second stops at once. While the job writes its results
(seconds, no trial), a signal lets that finish."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from tuner.cluster.runtime import Runtime
from tuner.core.settings import temporarily

if TYPE_CHECKING:
    from ray.tune import Callback

__all__ = ["Interrupts", "interrupt_forwarder", "stoppable_in_threads"]

_active: list[Interrupts] = []  # the job's Interrupts while its handlers are installed (the innermost last)
_stop_events: dict[int, threading.Event] = {}  # a Tune run stepping in a thread other than the main one: its stop


class Interrupts:
    """Ctrl-C (SIGINT) or SIGTERM during ``Tuner.fit``: remembered, then handed to Ray Tune as the
    SIGUSR1 it listens to, so that Tune stops the trials and saves the experiment state as on its
    own Ctrl-C. Ray's own SIGINT handler (off with TUNE_DISABLE_SIGINT_HANDLER, a documented
    setting) would stop the job the same way but let ``fit`` return as if it had finished. A second
    signal raises KeyboardInterrupt at once. A SIGTERM that stopped the local runtime too ends the
    driver at once (exit 130, the resume command said); one that comes once the trials are done lets
    the job write its results."""

    def __init__(self, *, runtime: Runtime | None = None, resume_command: str = "") -> None:
        self.received = False
        self.pending = False  # received, not yet handed to the Tune run that is stepping
        self.finishing = False  # the trials are done: the job writes its results
        self._old: dict[int, Any] = {}
        self._env: Any = None  # TUNE_DISABLE_SIGINT_HANDLER, set while the handlers are losstune's
        self.runtime, self.resume_command = runtime, resume_command

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = True
        name = signal.Signals(signum).name
        if self.finishing:
            print(f"\nlosstune: {name} received while the job writes its results (a few seconds): finishing that "
                  "(press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            return
        if signum == signal.SIGTERM and self.runtime is not None and self.runtime.went_down():
            # The signal reached Ray's processes too (a service manager that stops every process of the
            # job): nothing can be stopped or saved through them any more (Ray's client would wait a
            # minute for its GCS, then exit 1). The job is as after a kill: Tune's last saved state and
            # the spool resume it.
            print(f"\nlosstune: {name} reached the local Ray runtime too, which stopped with it: the trials "
                  f"stopped where they were and the job is interrupted; continue it with: {self.resume_command}",
                  file=sys.stderr, flush=True)
            os._exit(130)
        print(f"\nlosstune: {name} received: stopping the trials and saving the job state "
              "(press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        # Handed to Tune by the run's next step (``interrupt_forwarder``), not from here: a signal that
        # comes while a run starts, before Tune installed its handler, or between two runs, when the
        # installed handler is the finished run's, would otherwise be lost and the job train to its end.
        self.pending = True
        # A run restored from a job saved before the forwarder existed has none: sent anyway after a
        # second, to whichever handler is installed (a step's forward, if one comes, still follows).
        threading.Timer(1.0, self._unforwarded).start()

    def _unforwarded(self) -> None:
        # only while the job's handlers are installed: a later run in this process must not get it
        if self.pending and self in _active and \
                signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            os.kill(os.getpid(), signal.SIGUSR1)

    def forward(self) -> None:
        """Called by a Tune run's step: a pending signal becomes the SIGUSR1 that run listens to. A run
        stepping in another thread (the baseline arm's search beside the stack's) has no handler: its
        stop event is set, which is what Tune's handler does."""
        if threading.current_thread() is not threading.main_thread():
            event = _stop_events.get(threading.get_ident())
            if self.received and event is not None and not event.is_set():
                event.set()
            return
        if self.pending and signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            self.pending = False
            os.kill(os.getpid(), signal.SIGUSR1)

    @staticmethod
    def stop_threads() -> None:
        """Stops the Tune runs stepping in threads other than the main one, their state saved, as a
        signal would (the run in the main thread raised: the job ends)."""
        for event in list(_stop_events.values()):
            event.set()

    @staticmethod
    def _quiet(record: logging.LogRecord) -> bool:
        """Ray's own stop and ``Tuner.restore(...)`` hints: losstune prints the command that resumes."""
        return not any(m in str(record.msg) for m in ("Stop signal received", "has been interrupted",
                                                      "Failed to fetch metrics"))

    _LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")

    def __enter__(self) -> Interrupts:
        for name in self._LOGGERS:
            logging.getLogger(name).addFilter(self._quiet)
        if threading.current_thread() is threading.main_thread():
            # Tune's own SIGINT handler would stop the search without the job's summary: this one decides
            self._env = temporarily(env={"TUNE_DISABLE_SIGINT_HANDLER": "1"})
            self._env.__enter__()
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
            _active.append(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for name in self._LOGGERS:
            logging.getLogger(name).removeFilter(self._quiet)
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self in _active:
            _active.remove(self)
        if self._env is not None:
            self._env.__exit__(None, None, None)
            self._env = None
        if kind is KeyboardInterrupt:  # a second Ctrl-C, or one that came before Tune listened
            self.received = True


def interrupt_forwarder() -> Callback:
    """A Tune callback that hands a job's pending Ctrl-C or SIGTERM to the run at the start of each of
    its steps, when Tune's own SIGUSR1 handler for that run is installed. It holds nothing: Tune
    pickles it with the experiment, and the one a resumed run gets back serves the new process."""
    from ray.tune import Callback

    class InterruptForwarder(Callback):
        def on_step_begin(self, iteration: int, trials: list[Any], **info: object) -> None:
            forward_pending()

    return InterruptForwarder()


def stoppable_in_threads() -> bool:
    """Lets a Tune run that steps in a thread other than the main one be stopped as a run in the main
    thread is on its SIGUSR1, saving its state for ``--resume``: Ray's ``tune.run`` listens through a
    ``threading.Event`` that only its signal handler sets, and installs no handler outside the main
    thread; the event of such a run is kept here for ``Interrupts.forward``. Idempotent. False when
    this Ray has no such function (then no run may step outside the main thread)."""
    import ray.tune.tune as tune_module

    original = getattr(tune_module, "_setup_signal_catching", None)
    if not callable(original):
        return False
    if getattr(original, "losstune", False):
        return True

    def setup() -> threading.Event:
        event = original()
        if threading.current_thread() is not threading.main_thread():
            _stop_events[threading.get_ident()] = event
        return event

    setup.losstune = True  # type: ignore[attr-defined]
    tune_module._setup_signal_catching = setup
    return True


def forward_pending() -> None:
    """Hands the active job's pending signal to the Tune run now stepping (a module function: the
    callback that calls it is pickled, this is imported)."""
    if _active:
        _active[-1].forward()
