"""One way to build a Tune run of a job: the stack's search, the baseline arm, the confirmations and
the ablation all start (or, when their folder holds a run, restore) here.

Restoring unpickles the run's state, so it is checked first (``tuner.seal``): a file that is not
signed with this machine's key is refused in one line, before Ray reads it. A new run's search
algorithm signs the state Tune saves (``tuner.sealed_search``), and ``tuner.pkl`` is signed as soon
as Tune has written it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuner.seal import check_tune_state, sign_tune_state
from tuner.storage import Storage

__all__ = ["RunSpec", "make_tuner", "CHECKPOINTS_KEPT"]

CHECKPOINTS_KEPT = 2  # per trial: the latest and the one before it (Tune deletes older ones)


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
    verbose: int = 1
    callbacks: Sequence[Any] = field(default_factory=list)
    checkpoints_kept: int = CHECKPOINTS_KEPT


def _search_alg(spec: RunSpec) -> Any:
    from ray.tune.search import ConcurrencyLimiter

    from tuner.sealed_search import SealedSearch, SealedVariants

    if spec.searcher is not None:
        inner = ConcurrencyLimiter(spec.searcher, max_concurrent=spec.concurrency) if spec.concurrency \
            else spec.searcher
        return SealedSearch(inner)
    return SealedVariants(points_to_evaluate=[dict(p) for p in spec.points or ()], max_concurrent=spec.concurrency or 0)


def make_tuner(trainable: Callable | Any, storage: Storage, spec: RunSpec, *,
               before_restore: Callable[[], Any] | None = None) -> Any:
    """A ``tune.Tuner`` for the run: restored when its folder holds one (after its state verified),
    else new (its ``tuner.pkl`` signed). ``before_restore`` wraps ``Tuner.restore`` (a context
    manager factory, e.g. a log filter)."""
    from contextlib import nullcontext

    from ray import tune

    path = storage.ray_path(*spec.parts)
    if tune.Tuner.can_restore(path, storage_filesystem=storage.fs):
        check_tune_state(path, fs=storage.fs, shown=storage.shown(*spec.parts))
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
            failure_config=tune.FailureConfig(max_failures=spec.max_failures), callbacks=list(spec.callbacks)))
    sign_tune_state(path, fs=storage.fs, names=["tuner.pkl"])  # Tune wrote it while building the Tuner
    return tuner
