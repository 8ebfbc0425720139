"""One way to build a Tune run of a job: the stack's search, the baseline arm, the confirmations and
the ablation all start (or, when their folder holds a run, restore) here, with the job's sampler,
scheduler, live table, trial numbering and target stopper.

Restoring unpickles the run's state, so it is checked first (``tuner.core.seal``): a file that is not
signed with this machine's key is refused in one line, before Ray reads it. A new run's search
algorithm signs the state Tune saves (``tuner.job.sealed_search``), and ``tuner.pkl`` is signed as soon
as Tune has written it.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.vocab import ALL_MET, EPOCH_REACHED
from tuner.cluster.storage import Storage
from tuner.core.outputs import atomic_write
from tuner.core.seal import check_tune_state, sign_tune_state
from tuner.core.settings import temporarily
from tuner.job import kept_checkpoints
from tuner.job.interrupts import interrupt_forwarder, stoppable_in_threads
from tuner.job.outcome import TRIAL_NUMBERS_FILE, read_trial_numbers
from tuner.job.sealed_search import SealedSearch, SealedVariants
from tuner.job.slots import UNLIMITED, SharedLimiter
from tuner.present.progress import current

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from optuna.samplers import BaseSampler
    from ray.tune import Callback, CLIReporter, ResultGrid, Tuner
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import SearchAlgorithm, Searcher
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import SearchSpace
    from tuner.job.plan import TuneJob

__all__ = ["RunSpec", "make_tuner", "fit_run", "pending_trials", "runs_at_once", "CHECKPOINTS_KEPT",
           "staging_race_in_one_line", "TargetStopper", "target_stopper", "trial_numbers_callback", "sampler",
           "searcher", "nsga2_population", "scheduler", "reporter", "no_tensorboard"]

CHECKPOINTS_KEPT = 2  # per trial: the latest and the one before it (older ones go: kept_checkpoints says when)


@dataclass
class RunSpec:
    """A Tune run inside a job's experiment folder: ``parts`` locate it under the storage root
    (``(job,)`` for the stack's search, ``(job, "baseline")`` for an arm)."""

    parts: tuple[str, ...]
    num_samples: int
    searcher: Any = None  # a Tune Searcher (Optuna); None with ``points`` or ``param_space``
    points: list[dict[str, Any]] | None = None  # given configs, each one trial
    param_space: dict[str, Any] | None = None
    scheduler: Any = None
    concurrency: int | None = None
    time_budget_s: float | None = None
    max_failures: int = 2
    stop: Any = None
    reporter: Any = None
    verbose: int = 0  # Tune's own output: 0 (losstune's live line), 1 its tables (--verbose)
    callbacks: Sequence[Any] = field(default_factory=list)
    checkpoints_kept: int = CHECKPOINTS_KEPT
    share: tuple[str, str] | None = None  # (key, arm): its searcher shares the slots with another arm (slots.py)


def _search_alg(spec: RunSpec) -> Searcher | SearchAlgorithm | None:
    from ray.tune.search import ConcurrencyLimiter

    if spec.searcher is not None:
        if spec.share is not None:
            key, arm = spec.share
            inner = SharedLimiter(spec.searcher, max_concurrent=spec.concurrency or UNLIMITED, key=key, arm=arm,
                                  trials=spec.num_samples)
        elif spec.concurrency:
            inner = ConcurrencyLimiter(spec.searcher, max_concurrent=spec.concurrency)
        else:
            inner = spec.searcher
        return SealedSearch(inner)
    return SealedVariants(points_to_evaluate=[dict(p) for p in spec.points or ()], max_concurrent=spec.concurrency or 0)


def make_tuner(trainable: Callable[..., object], storage: Storage, spec: RunSpec, *,
               before_restore: Callable[[], AbstractContextManager[object]] | None = None) -> Tuner:
    """A ``tune.Tuner`` for the run: restored when its folder holds one (after its state verified),
    else new (its ``tuner.pkl`` signed). ``before_restore`` wraps ``Tuner.restore`` (a context
    manager factory, e.g. a log filter)."""
    from contextlib import nullcontext

    from ray import tune

    kept_checkpoints.install()
    path = storage.ray_path(*spec.parts)
    if tune.Tuner.can_restore(path, storage_filesystem=storage.fs):
        check_tune_state(path, fs=storage.fs, shown=storage.shown(*spec.parts))
        kept_checkpoints.restoring(path)
        with (before_restore or nullcontext)():
            return tune.Tuner.restore(path, trainable=trainable, resume_errored=True, storage_filesystem=storage.fs)
    param_space = spec.param_space
    if param_space is None and spec.points:  # given points set every key; Tune still wants them declared
        param_space = {key: tune.choice([p[key] for p in spec.points]) for key in spec.points[0]}
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric="objective", mode="max", search_alg=_search_alg(spec),
                                    scheduler=spec.scheduler, num_samples=spec.num_samples,
                                    time_budget_s=spec.time_budget_s, reuse_actors=True),
        run_config=tune.RunConfig(
            name=spec.parts[-1], storage_path=storage.ray_path(*spec.parts[:-1]), storage_filesystem=storage.fs,
            verbose=spec.verbose, progress_reporter=spec.reporter, stop=spec.stop,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.checkpoints_kept),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[results_at_checkpoint(), *spec.callbacks, progress_callback(part_of(spec.parts), spec.parts[-1]),
                       interrupt_forwarder(), no_tensorboard()]))
    sign_tune_state(path, fs=storage.fs, names=["tuner.pkl"])  # Tune wrote it while building the Tuner
    return tuner


def fit_run(tuner: Tuner, storage: Storage, spec: RunSpec) -> ResultGrid:
    """``tuner.fit()``, then the checkpoints its trials gave up deleted once the state in the experiment
    folder no longer names them (``kept_checkpoints``)."""
    path = storage.ray_path(*spec.parts)
    try:
        grid = tuner.fit()
    except BaseException:
        kept_checkpoints.settle(path)
        raise
    kept_checkpoints.settle(path, grid)
    return grid


def pending_trials(n: int) -> AbstractContextManager[None]:
    """Lets each Tune run of the block create ``n`` trials ahead of the workers free to take them.
    Ray 2.60 lets a run with a searcher (Optuna, the seed race) hold one pending trial unless a
    concurrency limit is set: a run's second worker then starts only while its first trains, and
    with trials shorter than a worker's start (a second or two) the first worker, reused, takes every
    trial. A job trained one trial at a time on 2 slots (a 20,000-row job's confirmation: 12 trials
    on one worker, 16 s; with 2 ahead, on two, 10 s). ``TUNE_MAX_PENDING_TRIALS_PG`` set by the user
    wins; Tune reads it when each run starts (``Tuner.fit``)."""
    return temporarily(env_defaults={"TUNE_MAX_PENDING_TRIALS_PG": str(max(1, n))})


def runs_at_once() -> bool:
    """Makes Ray 2.60's Tune safe for two runs at once in one process (the baseline arm's search in a
    thread beside the stack's): a Ctrl-C reaches a run outside the main thread
    (``interrupts.stoppable_in_threads``), and registering a run's trainable is serialised — Ray's
    registry flushes a dict that another thread's registration changes ("dictionary changed size
    during iteration", seen in a clean-clone run when both runs started in the same instant).
    Idempotent; False where this Ray lacks either (then the runs go one after the other)."""
    import threading

    from ray.tune import registry

    target = getattr(registry, "_global_registry", None)
    register = getattr(target, "register", None)
    if target is None or not callable(register) or not stoppable_in_threads():
        return False
    if not getattr(register, "losstune", False):
        lock = threading.Lock()

        def serialised(category: str, key: str, value: object) -> None:
            with lock:
                register(category, key, value)

        serialised.losstune = True  # type: ignore[attr-defined]
        target.register = serialised
    return True


class TargetStopper:
    """Ends the whole job as soon as one trial reaches every target (``--stop-on-target``)."""

    def __init__(self) -> None:
        self.met_by: tuple[str, int] | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.met_by is None and result.get(ALL_MET) == 1:
            self.met_by = (trial_id, int(result.get(EPOCH_REACHED, result.get("epoch", 0))))
        return self.met_by is not None and self.met_by[0] == trial_id

    def stop_all(self) -> bool:
        return self.met_by is not None


def trial_numbers_callback(folder: str | Path) -> Callback:
    """A Tune callback that writes each trial's creation number (0 = the preset) as soon as Tune has
    created the trial: the number is a fact of the search, not something to read back out of folder
    names. Tune keeps its trials in the order it created them, and a trial may be created before an
    interruption but start only after the job is resumed, so every trial is numbered at the end of
    the step that created it. Tune pickles the callback with the experiment."""
    from ray.tune import Callback

    class TrialNumbers(Callback):
        def __init__(self, folder: str) -> None:
            self.folder = folder
            self._known = 0

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)
            self._known = 0  # a restored job: read the file again

        def on_step_end(self, iteration: int, trials: list[Trial], **info: object) -> None:
            if len(trials) <= self._known:  # most steps create no trial
                return
            path = Path(self.folder)
            numbers = read_trial_numbers(path)
            new = {t.trial_id: i for i, t in enumerate(trials) if t.trial_id not in numbers}
            if new:
                atomic_write(path / TRIAL_NUMBERS_FILE, json.dumps({**numbers, **new}))
            self._known = len(trials)

    return TrialNumbers(str(folder))


def results_at_checkpoint() -> Callback:
    """A Tune callback that, when a trial restarts from a checkpoint (``--resume`` after the driver
    died, a retried trial), drops the epochs its ``result.json`` and ``progress.csv`` hold beyond
    that checkpoint, in the run's storage, before Tune's loggers copy them back and append to them.
    Tune writes an epoch's result before its experiment state records the epoch's checkpoint; a
    driver killed in between left the trial to train that epoch again from the checkpoint before
    it, and its results held the epoch twice (with two trials at once, make test-long's SIGKILL test
    saw it every time). Holds nothing; Tune pickles it with the experiment."""
    from ray.tune import Callback

    class ResultsAtCheckpoint(Callback):
        def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
            checkpoint = trial.checkpoint
            if checkpoint is not None:
                _cut_results_after(trial, Path(checkpoint.path).name)

    return ResultsAtCheckpoint()


def no_tensorboard() -> Callback:
    """Stands in for the TensorBoard logger that Tune adds to every run lacking one (Tune adds its
    own only where no callback is a ``TBXLoggerCallback``). Nothing of losstune reads its event
    files — the records are in MLflow, the epochs in ``result.json`` and ``progress.csv`` — and it
    cost the driver's Tune loop ~9 ms a trial (py-spy over 300 one-epoch trials: 2.8 s of the loop's
    14 s). Runs made before it keep Tune's logger when they resume (their callbacks are pickled)."""
    from ray.tune.logger import TBXLoggerCallback

    class NoTensorBoard(TBXLoggerCallback):
        def __init__(self) -> None:  # the parent imports tensorboardX and keeps a writer per trial
            pass

        def log_trial_start(self, trial: Trial) -> None:
            pass

        def log_trial_restore(self, trial: Trial) -> None:
            pass

        def log_trial_save(self, trial: Trial) -> None:
            pass

        def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
            pass

        def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
            pass

    return NoTensorBoard()


def _cut_results_after(trial: Trial, checkpoint_name: str) -> None:
    fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
    try:
        lines = _read_lines(fs, f"{folder}/result.json")
        rows = [_json_row(line) for line in lines]
        at = next((i for i, r in enumerate(rows) if r.get("checkpoint_dir_name") == checkpoint_name), None)
        if at is None or at == len(rows) - 1:
            return  # nothing beyond the checkpoint (or it is not in the results: leave them as they are)
        last = rows[at].get("training_iteration")
        _replace(fs, f"{folder}/result.json", lines[:at + 1])
        table = _read_lines(fs, f"{folder}/progress.csv")
        header = next(csv.reader(table[:1]), [])
        if not isinstance(last, int) or "training_iteration" not in header:
            return
        column = header.index("training_iteration")
        _replace(fs, f"{folder}/progress.csv",
                 table[:1] + [line for line in table[1:] if (cells := next(csv.reader([line]), []))
                              and len(cells) > column and cells[column].isdigit() and int(cells[column]) <= last])
    except (OSError, ValueError) as exc:  # the results stay as they were; the trial still resumes
        logging.getLogger(__name__).warning("could not trim %s's results to its checkpoint: %s", trial, exc)


def _read_lines(fs: Any, path: str) -> list[str]:
    with fs.open_input_stream(path) as f:
        return f.read().decode().splitlines(keepends=True)


def _json_row(line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError:  # a line cut short by the kill
        return {}
    return row if isinstance(row, dict) else {}


def _replace(fs: Any, path: str, lines: list[str]) -> None:
    """Writes ``lines`` beside ``path`` and moves them over it: a kill mid-write leaves the old file."""
    with fs.open_output_stream(f"{path}.losstune-tmp") as f:
        f.write("".join(lines).encode())
    fs.move(f"{path}.losstune-tmp", path)


def progress_callback(part: str, run: str) -> Callback:
    """A Tune callback that tells the job's live line (``tuner.present.progress``) how the run's
    trials go. It holds only the names of its part and its run: Tune pickles it with the job, and on ``--resume`` the
    one Tune hands back reports to the display of the process that resumed."""
    from ray.tune import Callback

    class ProgressReport(Callback):
        def __init__(self, part: str, run: str) -> None:
            self.part, self.run = part, run

        def on_step_end(self, iteration: int, trials: list[Trial], **info: object) -> None:
            shown = current()
            if shown is not None:
                done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
                shown.trials(self.part, self.run, started=len(trials), done=done)

        def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, object],
                            **info: object) -> None:
            shown = current()
            if shown is not None:
                shown.result(self.part, result)

    return ProgressReport(part, run)


def part_of(parts: tuple[str, ...]) -> str:
    """The name a run's trials have on the live line: stack, baseline, confirm, ablation."""
    return "stack" if len(parts) == 1 else parts[-1].split("-")[0]


@contextmanager
def quiet_tune(*, verbose: int) -> Iterator[None]:
    """While a job runs: Tune's bookkeeping warnings off, and (unless ``verbose``) Ray's lines that are
    not the user's business filtered: the hint to opt out of token authentication (the README advises
    keeping it), the warning that experiment snapshots are frequent (short trials make them so; they
    are cheap on local disk); and Ray's traceback for a copy of the run's state that met a file Ray
    was still writing becomes one line (``staging_race_in_one_line``)."""

    def drop(*texts: str) -> Callable[[logging.LogRecord], bool]:
        return lambda record: not any(t in str(record.msg) for t in texts)

    snapshots = drop("may become a bottleneck", "Adjusting snapshotting period")

    def experiment_state(record: logging.LogRecord) -> bool:
        staging_race_in_one_line(record)  # rewritten in place when it is Ray's staging race
        return snapshots(record)

    filters = [("ray._private.authentication.authentication_token_setup",
                drop("Token authentication is enabled for this Ray cluster")),
               ("ray.tune.execution.experiment_state", experiment_state)]
    with temporarily(env_defaults={"RAY_AIR_NEW_OUTPUT": "0",
                                   "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"},
                     optuna_level=logging.WARNING):
        for name, f in filters:
            logging.getLogger(name).addFilter(f)
        try:
            yield
        finally:
            for name, f in filters:
                logging.getLogger(name).removeFilter(f)


def staging_race_in_one_line(record: logging.LogRecord) -> bool:
    """Ray 2.60 writes a run's state into its staging folder while a copy of that folder may still be
    running (``ExperimentStateManager.sync_up_experiment_state`` saves before it waits), so the copy
    can meet one of Ray's temporary files gone: Ray logs the failure with a traceback, and the next
    copy (at the latest the one at the end of the run, which waits) carries the state up. Such a
    record becomes one warning line; returns whether it was one."""
    exc = record.exc_info[1] if record.exc_info else None
    if not (isinstance(exc, FileNotFoundError) and "driver_artifacts" in str(exc)
            and str(record.msg).startswith("Saving experiment state to storage")):
        return False
    record.msg = ("losstune: one copy of the run's state to its folder failed (a file Ray was still writing: "
                  "Ray 2.60 copies and writes it at once); the next copy carries it")
    record.args, record.exc_info, record.exc_text = (), None, None
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def target_stopper() -> TargetStopper:
    """A ``TargetStopper`` that Tune takes as a ``tune.Stopper`` (Ray imported only when a job runs)."""
    from ray import tune

    return type("TargetStopper", (TargetStopper, tune.Stopper), {})()


def sampler(job: TuneJob, seed: int) -> BaseSampler:
    """The job's Optuna sampler, seeded: TPE, random search, a Gaussian process (Optuna's GPSampler, on
    torch) or, with several objectives, NSGA-II. TPE is multivariate (``group`` for the scenarios'
    conditional spaces), with the constant liar: a running trial counts as a bad result, so workers side
    by side are not handed the same region; with several objectives it is Optuna's multi-objective TPE.
    Spelled out, as Optuna 4's defaults differ from 5's (benchmarks/bench_search.py measures it against
    independent TPE). NSGA-II breeds a generation from the one before: its population is a quarter of
    the trials (4 to 50), so that a job of 20 trials sees four generations."""
    import warnings

    import optuna

    kind = job.spec.sampler
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=nsga2_population(job.spec.num_trials))
    with warnings.catch_warnings():  # multivariate, group and constant_liar are flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def nsga2_population(num_trials: int) -> int:
    """NSGA-II's generation size for a search of ``num_trials``: a quarter of them, 4 to 50."""
    return max(4, min(50, num_trials // 4))


def searcher(job: TuneJob, space: SearchSpace, seed: int) -> OptunaSearch:
    """The search of an arm: Optuna on the arm's space, its first trial the space's warm start (the
    preset). One objective: the trial's ``objective``. Several: each objective's value at the trial's
    best epoch for the first (``best/val/…``), which Optuna's multi-objective samplers take as a vector."""
    from ray.tune.search.optuna import OptunaSearch

    objectives = job.spec.objective_list
    if objectives:
        metric: str | list[str] = [f"best/{o.metric}" for o in objectives]
        mode: str | list[str] = [o.direction for o in objectives]
    else:
        metric, mode = "objective", "max"
    return OptunaSearch(space=space, metric=metric, mode=mode, sampler=sampler(job, seed),
                        points_to_evaluate=[space.warm_start_point()])


def scheduler(job: TuneJob) -> TrialScheduler:
    """The job's Tune scheduler: ASHA on training iterations (epochs), or FIFO. With several objectives
    ASHA (asked for) compares trials on the first objective, the trial's ``objective``."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = job.spec.scheduler
    max_t = int(job.base_config["optim"]["max_epochs"])
    if job.spec.scheduler_name != "asha":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(s.grace_period, max_t),
                         reduction_factor=s.reduction_factor)


def reporter(searched: list[str], metric: str) -> CLIReporter:
    """Ray's live table of trials (``--verbose``): the epoch, the job's metric, AUROC, AUPRC, the targets
    flag and the first six searched keys. Not the trial's own last report of its state: a trial that ASHA
    stopped last reported "running", beside Tune's TERMINATED (losstune's summary says "stopped")."""
    from ray.tune import CLIReporter

    searched = searched[:6]
    return CLIReporter(
        metric_columns={"epoch": "epoch", "objective": metric, "val/auroc": "auroc", "val/auprc": "auprc",
                        ALL_MET: "target"},
        parameter_columns={k: k for k in searched}, max_report_frequency=15, sort_by_metric=True,
        max_progress_rows=12, max_error_rows=5)
