"""Does the loss stack beat a tuned plain model? Both arms, the reference models and the lift, on
the synthetic tasks, over several split seeds; and what the baseline arm and the confirmation cost.

    python benchmarks/bench_arms.py [--tasks rare,screening,treatment] [--split-seeds 0,1,2]
                                    [--trials 8] [--epochs 10] [--rows 20000]

Each (task, split seed) is one `losstune tune` job, run in this process on one local Ray runtime,
without MLflow: the stack's search (`--trials`), a baseline arm (a quarter, at least 4), each arm's
top 2 configs confirmed with 2 seeds. Prints one row per job (test metrics of each arm's winner as
mean ± sd over its seeds, the reference models, the lift of the stack over the baseline with its
95% bootstrap interval) and the wall time of each part, so the extra cost of the baseline arm and
the confirmation is a ratio to the stack's search measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

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
    args = ap.parse_args()

    import ray

    from tuner.jobspec import JobSpec
    from tuner.plan import plan_job
    from tuner.run import run_job

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    store = tempfile.mkdtemp(prefix="bench-arms-")
    header = (f"{'task':10} {'split':>5}  {'stack AUROC':>16} {'base AUROC':>16} {'LR':>6} {'GB':>6}  "
              f"{'lift AUROC (95% CI)':>26}  {'stack AUPRC':>16} {'base AUPRC':>16} {'LR':>6} {'GB':>6}  "
              f"{'lift AUPRC (95% CI)':>26}  {'stack ECEc':>7} {'base ECEc':>9}  {'extra wall':>10}")
    print(header)
    totals = {"stack": 0.0, "baseline": 0.0, "confirm": 0.0}
    for task in args.tasks.split(","):
        for split_seed in (int(s) for s in args.split_seeds.split(",")):
            spec = JobSpec.from_options(data=f"synthetic:{task}?n={args.rows}", num_trials=args.trials,
                                        max_epochs=args.epochs, split_seed=split_seed, seed=split_seed,
                                        experiment=f"{task}-{split_seed}", confirm_top=args.confirm_top,
                                        confirm_seeds=args.confirm_seeds, fix=["optim.patience=3"])
            job, data, space, pretrained = plan_job(spec, store)
            t0 = time.perf_counter()
            out = run_job(job, data, space, pretrained, address=None, verbose=0)
            wall = time.perf_counter() - t0
            s, b, w = out.confirmed.get("stack"), out.confirmed.get("baseline"), out.winner
            if s is None or b is None or w is None:
                print(f"{task:10} {split_seed:>5}  (an arm produced no model: {out.state.value})")
                continue
            lifts = {x.metric: x for x in w.lifts["baseline"] if x.label == "macro"}
            ref = w.references

            def pm(v: tuple[float, float]) -> str:
                return f"{v[0]:.4f} ± {v[1]:.4f}"

            def ci(x) -> str:
                return f"{x.estimate:+.3f} ({x.low:+.3f}, {x.high:+.3f})"

            parts = out.wall_by_part
            for k in totals:
                totals[k] += parts.get(k, 0.0)
            extra = (parts.get("baseline", 0.0) + parts.get("confirm", 0.0)) / parts["stack"]
            print(f"{task:10} {split_seed:>5}  {pm(s.test['auroc']):>16} {pm(b.test['auroc']):>16} "
                  f"{ref['logistic_regression']['auroc']:6.4f} {ref['gradient_boosting']['auroc']:6.4f}  "
                  f"{ci(lifts['auroc']):>26}  {pm(s.test['auprc']):>16} {pm(b.test['auprc']):>16} "
                  f"{ref['logistic_regression']['auprc']:6.4f} {ref['gradient_boosting']['auprc']:6.4f}  "
                  f"{ci(lifts['auprc']):>26}  {s.test['ece_calibrated'][0]:7.4f} {b.test['ece_calibrated'][0]:9.4f}  "
                  f"{extra:9.2f}x   ({wall:.0f} s in all)", flush=True)
    if totals["stack"]:
        print(f"\nwall time of Tune's fits, all jobs: stack search {totals['stack']:.0f} s, baseline arm "
              f"{totals['baseline']:.0f} s ({totals['baseline'] / totals['stack']:.2f}x), confirmation "
              f"{totals['confirm']:.0f} s ({totals['confirm'] / totals['stack']:.2f}x)")
    ray.shutdown()


if __name__ == "__main__":
    main()
