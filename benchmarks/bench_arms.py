"""Does the loss stack beat a tuned plain model, and does the answer depend on how much the baseline
was tuned? Both arms, the reference models and the lift, on the synthetic tasks, over several split
seeds, with the baseline arm's budget as a job gives it now (`equal`: as many trials as the stack)
and as it gave it before (`quarter`: a quarter of the stack's, at least 4).

    python benchmarks/bench_arms.py [--tasks rare,screening,treatment] [--split-seeds 0,1,2]
                                    [--trials 8] [--epochs 10] [--rows 20000] [--budgets equal,quarter]
                                    [--confirmations race]  # race,full: the race against every seed

Each (task, split seed, budget) is one `losstune tune` job, run in this process on one local Ray
runtime, without MLflow: the stack's search (`--trials`), the baseline arm, each arm's top 2 configs
confirmed with 2 seeds. The stack's search is the same under both budgets (same seeds, same data):
only the baseline arm differs. Prints one row per job (the deployed models' test AUROC/AUPRC, the
reference models, the lift of the stack over the baseline with its 95% bootstrap interval, the words
the job says) and the wall time of each part; last, the lifts and the wall time side by side.
`--alone` (on by default) also runs the stack's search alone (`--no-baseline --confirm-top 0`, same
seeds and data) and prints each job's wall time ÷ that: the cost of asking "did the stack help?" (the
goal is at most 2.0). `--confirmations race,full` runs each job twice more: the confirmation as a
job runs it (a race over seeds, tuner/job/race.py) and with every config given every seed (the race's
halving switched off in this process), and prints their wall times and trainings side by side, with
the trial-slot utilisation (the trials' reserved CPU-seconds ÷ (wall × CPUs)).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import checkout  # noqa: F401  (first: this checkout's code, not the one installed in the venv)

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="rare,screening,treatment")
    ap.add_argument("--split-seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--confirm-top", type=int, default=2)
    ap.add_argument("--confirm-seeds", type=int, default=2)
    ap.add_argument("--budgets", default="equal,quarter")
    ap.add_argument("--confirmations", default="race", help="race, full, or both: race,full")
    ap.add_argument("--alone", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the stack's search alone, the reference of job ÷ search")
    args = ap.parse_args()

    import ray

    from trainables.compare import interval_words
    from tuner.job.plan import plan_job
    from tuner.job.race import Race
    from tuner.job.run import run_job
    from tuner.job.spec import JobSpec

    halving = Race.__dict__["keep"]  # the staticmethod itself, to put back
    budgets = {"equal": args.trials, "quarter": max(4, args.trials // 4)}
    modes = args.confirmations.split(",")
    variants = [(b, m) for b in args.budgets.split(",") for m in modes]
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    store = tempfile.mkdtemp(prefix="bench-arms-")
    print(f"{'task':10} {'split':>5} {'budget':>8} {'base':>4}  {'stack AUROC':>11} {'base AUROC':>10} {'LR':>6} "
          f"{'GB':>6}  {'lift AUROC (95% CI)':>26}  {'stack AUPRC':>11} {'base AUPRC':>10}  "
          f"{'lift AUPRC (95% CI)':>26}  {'words (AUROC)':>24}  {'wall':>6}")
    results: dict[str, list[tuple]] = {b: [] for b in args.budgets.split(",")}
    walls: dict[tuple[str, str], dict[str, float]] = {
        v: {"stack": 0.0, "baseline": 0.0, "confirm": 0.0, "all": 0.0, "confirm_trials": 0.0, "held": 0.0}
        for v in variants}
    def spec_of(task: str, split_seed: int, experiment: str, **kw) -> JobSpec:
        """A job of the benchmark: the task, its split and training seeds, the search's size; ``kw`` its arms."""
        return JobSpec.from_options(data=f"synthetic:{task}?n={args.rows}", num_trials=args.trials,
                                    max_epochs=args.epochs, split_seed=split_seed, seed=split_seed,
                                    experiment=experiment, fix=["optim.patience=3"], **kw)

    alone = {"all": 0.0, "held": 0.0}  # the stack's search alone, whole job (Ray start to summary) and slots
    for task in args.tasks.split(","):
        for split_seed in (int(s) for s in args.split_seeds.split(",")):
            if args.alone:
                spec = spec_of(task, split_seed, f"{task}-{split_seed}-alone", confirm_top=0, baseline_trials=0)
                job, data, space, pretrained = plan_job(spec, store)
                t0 = time.perf_counter()
                out = run_job(job, data, space, pretrained, address=None, verbose=0)
                alone["all"] += time.perf_counter() - t0
                alone["held"] += sum(r.seconds for r in out.rows) * job.resources["cpu"]
                print(f"{task:10} {split_seed:>5} {'alone':>8} {0:>4}  the stack's search alone: "
                      f"{time.perf_counter() - t0:5.0f}s", flush=True)
            for budget, mode in variants:
                Race.keep = halving if mode == "race" else staticmethod(lambda alive: alive)  # full: every seed
                spec = spec_of(task, split_seed, f"{task}-{split_seed}-{budget}-{mode}", confirm_top=args.confirm_top,
                               confirm_seeds=args.confirm_seeds, baseline_trials=budgets[budget])
                job, data, space, pretrained = plan_job(spec, store)
                t0 = time.perf_counter()
                out = run_job(job, data, space, pretrained, address=None, verbose=0)
                wall = time.perf_counter() - t0
                s, b, w = out.confirmed.get("stack"), out.confirmed.get("baseline"), out.winner
                if s is None or b is None or w is None:
                    print(f"{task:10} {split_seed:>5} {budget:>8}  (an arm produced no model: {out.state.value})")
                    continue
                lifts = {x.metric: x for x in w.lifts["baseline"] if x.label == "macro"}
                ref = w.references

                def ci(x) -> str:
                    return f"{x.estimate:+.3f} ({x.low:+.3f}, {x.high:+.3f})"

                for k in ("stack", "baseline", "confirm"):
                    walls[(budget, mode)][k] += out.wall_by_part.get(k, 0.0)
                walls[(budget, mode)]["all"] += wall
                walls[(budget, mode)]["confirm_trials"] += sum(len(r) for r in out.confirm_rows.values())
                walls[(budget, mode)]["held"] += sum(r.seconds for r in (*out.rows, *out.arm_rows.get("baseline", ()),
                                                                         *(x for rs in out.confirm_rows.values()
                                                                           for x in rs))) * job.resources["cpu"]
                if mode == modes[0]:
                    results[budget].append((task, split_seed, lifts["auroc"], lifts["auprc"]))
                print(f"{task:10} {split_seed:>5} {budget[:3] + '/' + mode[:4]:>8} {budgets[budget]:>4}  "
                      f"{s.deployed['auroc']:11.4f} "
                      f"{b.deployed['auroc']:10.4f} {ref['logistic_regression']['auroc']:6.4f} "
                      f"{ref['gradient_boosting']['auroc']:6.4f}  {ci(lifts['auroc']):>26}  "
                      f"{s.deployed['auprc']:11.4f} {b.deployed['auprc']:10.4f}  {ci(lifts['auprc']):>26}  "
                      f"{interval_words(lifts['auroc'])[:24]:>24}  {wall:5.0f}s", flush=True)
    print("\nthe stack's lift over the baseline, by the baseline's budget (mean over jobs; how many say 'it helps'):")
    for budget, rows in results.items():
        if not rows:
            continue
        helps = sum(interval_words(r[2]).startswith("it helps") for r in rows)
        auroc, auprc = statistics.mean(r[2].estimate for r in rows), statistics.mean(r[3].estimate for r in rows)
        print(f"  {budget:8} ({budgets[budget]} baseline trials): AUROC lift {auroc:+.4f}, AUPRC lift {auprc:+.4f}; "
              f"'it helps' (AUROC) in {helps} of {len(rows)} jobs")
    cpus = os.cpu_count() or 1
    for (budget, mode), t in walls.items():
        if t["stack"]:
            print(f"  {budget:8} {mode:5} wall: stack search {t['stack']:.0f} s, baseline arm {t['baseline']:.0f} s "
                  f"({t['baseline'] / t['stack']:.2f}x), confirmation {t['confirm']:.0f} s "
                  f"({t['confirm'] / t['stack']:.2f}x, {t['confirm_trials']:.0f} trainings), whole jobs "
                  f"{t['all']:.0f} s ({t['all'] / t['stack']:.2f}x); trial-slot utilisation "
                  f"{t['held'] / (t['all'] * cpus):.0%}")
    if alone["all"]:
        print(f"  the stack's search alone (no baseline, no confirmation): {alone['all']:.0f} s; trial-slot "
              f"utilisation {alone['held'] / (alone['all'] * cpus):.0%}")
    print("\nratios:")
    for (budget, mode), t in walls.items():
        if alone["all"] and t["all"]:
            print(f"  {budget} {mode}: whole job ÷ the stack's search alone: {t['all'] / alone['all']:.2f} "
                  f"(goal <= 2.0); trial-slot utilisation {t['held'] / (t['all'] * cpus):.0%} (goal >= 80%)")
    for mode in modes:
        if all(walls.get((b, mode), {}).get("all") for b in ("equal", "quarter")):
            print(f"  {mode}: wall time of the jobs, equal ÷ quarter budget: "
                  f"{walls[('equal', mode)]['all'] / walls[('quarter', mode)]['all']:.2f}")
    for budget in args.budgets.split(","):
        r, f = walls.get((budget, "race")), walls.get((budget, "full"))
        if r and f and r["all"] and f["all"]:
            print(f"  {budget}: race ÷ every seed: confirmation wall {r['confirm'] / f['confirm']:.2f}, trainings "
                  f"{r['confirm_trials']:.0f}/{f['confirm_trials']:.0f}, whole jobs {r['all'] / f['all']:.2f}; "
                  f"job ÷ its stack search: {r['all'] / r['stack']:.2f} (race), {f['all'] / f['stack']:.2f} (full)")
    Race.keep = halving
    ray.shutdown()


if __name__ == "__main__":
    main()
