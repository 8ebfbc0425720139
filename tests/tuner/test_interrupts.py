"""A Ctrl-C or SIGTERM reaches the Tune run whenever it comes: Tune listens (its SIGUSR1 handler)
only from the moment a run starts stepping, and between two runs the installed handler is the
finished run's. Before, a signal that came in either gap was remembered and never handed on: the
job trained to its end (a CI run: `timeout -s TERM 25` hit while the trials started on a busy
machine, and the job did not stop within 45 s)."""

from __future__ import annotations

import os
import signal
import time

from tuner.cluster.storage import Storage
from tuner.job.interrupts import Interrupts
from tuner.job.launch import RunSpec, make_tuner

STEPS = 60


def _slow(config):
    from ray import tune

    for i in range(STEPS):
        if i == 1 and config.get("mark"):  # training: a file the test waits for
            open(config["mark"], "w").close()
        time.sleep(0.05)
        tune.report({"objective": float(config["x"]), "step": i + 1})


def _run(storage: Storage, name: str, steps_seen: list[int]):
    grid = make_tuner(_slow, storage, RunSpec(parts=(name,), num_samples=2, points=[{"x": 1}, {"x": 2}])).fit()
    steps_seen.extend(int(r.metrics.get("step", 0)) for r in grid)
    return grid


def test_a_signal_before_a_run_listens_or_between_two_runs_stops_the_next_run(shared_ray, tmp_path):
    storage = Storage.parse(str(tmp_path / "results"))
    first: list[int] = []
    _run(storage, "before", first)  # a whole run: its handler stays installed after it
    assert first == [STEPS, STEPS]
    with Interrupts() as interrupts:
        os.kill(os.getpid(), signal.SIGTERM)  # Tune's installed handler is the finished run's
        assert interrupts.received
        second: list[int] = []
        _run(storage, "after", second)
    assert interrupts.received and not interrupts.pending
    assert max(second) < STEPS // 2, second  # stopped near its start, not trained to the end


def test_a_run_restored_without_the_forwarder_still_stops(shared_ray, tmp_path):
    """A job saved before the forwarder existed is restored with the callbacks it was saved with:
    a signal during its run still reaches Tune (sent a second after it came)."""
    import threading

    from ray import tune

    mark = tmp_path / "training"
    tuner = tune.Tuner(_slow, param_space={"x": tune.grid_search([1, 2]), "mark": str(mark)},
                       run_config=tune.RunConfig(name="old", storage_path=str(tmp_path / "results"), verbose=0))
    def signal_once_training():
        deadline = time.time() + 120
        while time.time() < deadline and not mark.exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    with Interrupts() as interrupts:
        sender = threading.Thread(target=signal_once_training)
        sender.start()
        grid = tuner.fit()
        sender.join()
    assert interrupts.received
    steps = [int(r.metrics.get("step", 0)) for r in grid]
    assert max(steps) < STEPS, steps


def test_a_run_in_another_thread_stops_too_and_can_be_resumed(shared_ray, tmp_path):
    """The baseline arm's search runs in a thread beside the stack's: Ray installs no signal handler
    there, so a Ctrl-C must reach it through its stop event, as Tune's own handler would, leaving a
    state that ``--resume`` restores (not trials marked finished)."""
    import threading

    from ray import tune

    from tuner.job.interrupts import stoppable_in_threads

    storage = Storage.parse(str(tmp_path / "results"))
    mark = tmp_path / "training"
    seen: list[int] = []
    stoppable_in_threads()
    spec = RunSpec(parts=("beside",), num_samples=2, points=[{"x": 1, "mark": str(mark)}, {"x": 2, "mark": str(mark)}])
    with Interrupts() as interrupts:
        beside = threading.Thread(target=lambda: seen.extend(
            int(r.metrics.get("step", 0)) for r in make_tuner(_slow, storage, spec).fit()))
        beside.start()
        deadline = time.time() + 120
        while time.time() < deadline and not mark.exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)
        beside.join(timeout=120)
    assert interrupts.received and not beside.is_alive()
    assert seen and max(seen) < STEPS // 2, seen  # stopped soon after the signal, not trained to the end
    path = storage.ray_path("beside")
    assert tune.Tuner.can_restore(path)
    again = make_tuner(_slow, storage, spec).fit()  # restored: the trials go on to their end
    assert sorted(int(r.metrics["step"]) for r in again) == [STEPS, STEPS]


def _register_from_two_threads(n: int = 300) -> list[BaseException]:
    import threading

    from ray.tune.registry import register_trainable

    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def register(prefix: str) -> None:
        start.wait()
        try:
            for i in range(n):
                register_trainable(f"losstune_test_{prefix}_{i}", _slow)
        except Exception as exc:  # what Ray's registry raised
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(p,)) for p in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_two_runs_register_their_trainables_at_the_same_instant(shared_ray):
    """The stack's and the baseline's runs start together: Ray's registry flushed a dict that the
    other thread's registration changed ("dictionary changed size during iteration", a clean-clone
    run). After ``runs_at_once`` registrations from two threads all land."""
    from tuner.job.launch import runs_at_once

    assert runs_at_once()
    assert _register_from_two_threads() == []
