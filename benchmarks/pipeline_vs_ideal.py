"""Benchmark: the pipeline's step time against the bound its parts allow (issue 13, part 2).

1. **Parts in isolation.** On the real actors of the default config (a local Ray, one learner, one rollout worker,
   one reward worker), ``--rounds`` rounds, one part at a time, each waiting for the previous one:
   - *generate*: one step's prompts (``train.groups_per_step`` groups, in requests of ``rollout.groups_per_request``,
     as :class:`rlsys.rollout_pool.RolloutPool` cuts them) on the rollout workers;
   - *reward*: those batches scored in one call to a reward worker;
   - *train*: the learner's ``train_step`` on the scored groups (already in the object store, as the buffer's are);
   - *sync*: the learner's ``get_weights`` and every worker's ``update_weights`` (the new policy for the next round).

   The first round warms up (DeepSpeed's first step, allocations) and is dropped; the medians of the others.
2. **The pipeline.** ``rlsys train`` on the same config for ``--steps`` steps at each η of ``--etas``: the mean of
   ``perf/step_s`` after the first 5 steps (the mean, not the median: at η ≥ 1 short and long steps alternate),
   and the run's learner and rollout idle fractions and mean sync seconds.
3. **The bound.** η = 0 waits for each part in turn: generate + reward + train + sync. η ≥ 1 overlaps them, so a
   step can take no less than its slowest part: max(generate, reward, train + sync), the sync being the learner's
   work too. Achieved / ideal is the bound over the measured step (100 %: at the bound).

Usage::

    python benchmarks/pipeline_vs_ideal.py [key=value ...] [--rounds 20] [--steps 200] [--etas 0 1 2] [--smoke]

Config overrides (``key=value``, for every run) go before ``--etas``, which takes every number after it.

``--smoke``: 3 rounds and 8 steps at η = 0 and 1 — that the script works, not a measurement (CI runs it).
Figures depend on the machine and its load; read them within one invocation. Results go to
benchmarks/results/pipeline_vs_ideal.{md,json} (not with --smoke).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

WARM_STEPS = 5  # perf/step_s of the pipeline's first steps (DeepSpeed's first step, the first sync) is left out


def base_overrides(root: Path, overrides: list[str]) -> list[str]:
    return [f"output.root={root}/runs", "output.progress_bar=false", "train.eval_every=0", *overrides]


def parts_in_isolation(overrides: list[str], rounds: int, root: Path) -> dict[str, float]:
    """Median seconds of generate, reward, train and sync for one step's batch (see the module docstring)."""
    import ray
    from run_actors import run_actors

    from rlsys.config import load_config

    cfg = load_config(None, base_overrides(root, overrides))
    per, times = cfg.rollout.groups_per_request, {"generate": [], "reward": [], "train": [], "sync": []}
    with run_actors(cfg) as (prepared, actors, pool):
        prompts = prepared.train_prompts
        for r in range(rounds + 1):
            step = [prompts[(r * cfg.train.groups_per_step + i) % len(prompts)]
                    for i in range(cfg.train.groups_per_step)]
            requests = [step[i:i + per] for i in range(0, len(step), per)]
            start = time.perf_counter()
            batches = [actors.rollouts[i % len(actors.rollouts)].generate.options(num_returns=2).remote(
                r * len(requests) + i, request)[0] for i, request in enumerate(requests)]
            ray.wait(batches, num_returns=len(batches), fetch_local=False)
            generated = time.perf_counter()
            *scored, count = actors.rewards[0].score.options(num_returns=len(batches) + 1).remote(*batches)
            ray.get(count)
            rewarded = time.perf_counter()
            groups = ray.put([g for b in ray.get(scored) for g in b.groups])
            trained_from = time.perf_counter()
            ray.get([learner.train_step.remote(groups) for learner in actors.learners])
            trained = time.perf_counter()
            weights = actors.learners[0].get_weights.remote()
            ray.wait([weights], fetch_local=False)
            ray.get([ack for _, ack in pool.sync(weights, r + 1)])
            synced = time.perf_counter()
            if r:  # round 0 warms up
                for part, seconds in zip(times, (generated - start, rewarded - generated, trained - trained_from,
                                                 synced - trained)):
                    times[part].append(seconds)
    return {part: statistics.median(s) for part, s in times.items()}


def bound(parts: dict[str, float], eta: int) -> float:
    """The least step time the parts allow: their sum at η = 0, the slowest (train + sync: both the learner's) above."""
    if eta == 0:
        return sum(parts.values())
    return max(parts["generate"], parts["reward"], parts["train"] + parts["sync"])


def pipeline_run(overrides: list[str], eta: int, steps: int, root: Path) -> dict:
    """One ``rlsys train`` run at η = ``eta``: its mean step seconds and where its time went."""
    from rlsys.config import load_config
    from rlsys.metrics import read_metrics
    from rlsys.train import train

    cfg = load_config(None, base_overrides(root, [f"output.run_name=eta{eta}", f"train.num_steps={steps}",
                                                   f"train.max_staleness={eta}", *overrides]))
    summary, run_dir = train(cfg)
    step_s = [m["perf/step_s"] for m in read_metrics(run_dir) if "perf/step_s" in m and m["step"] > WARM_STEPS]
    return {"eta": eta, "steps": steps, "step_s": statistics.fmean(step_s), "wall_s": summary.wall_s,
            "samples_per_s": summary.samples_per_s, "learner_idle": summary.learner_idle_frac,
            "rollout_idle": summary.rollout_idle_frac, "sync_s": summary.sync_s_mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--etas", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value) for every run")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.steps, args.etas = 3, 8, [0, 1]

    with tempfile.TemporaryDirectory() as tmp:
        parts = parts_in_isolation(args.overrides, args.rounds, Path(tmp))
        print("parts in isolation (s):", parts, flush=True)
        runs = [pipeline_run(args.overrides, eta, args.steps, Path(tmp)) for eta in args.etas]
    rows = []
    for run in runs:
        ideal = bound(parts, run["eta"])
        rows.append({**run, **{f"{k}_s_alone": v for k, v in parts.items()}, "ideal_s": ideal,
                     "achieved": ideal / run["step_s"]})
        print(rows[-1], flush=True)

    from results_io import markdown_table, save

    when = f"{platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}"
    table = markdown_table(
        f"Parts of a step in isolation, median of {args.rounds} rounds (the default config"
        f"{', ' + ' '.join(args.overrides) if args.overrides else ''}; {when})",
        ["generate s", "reward s", "train s", "sync s", "sum s", "slowest s"],
        [[f"{parts['generate']:.3f}", f"{parts['reward']:.3f}", f"{parts['train']:.3f}", f"{parts['sync']:.3f}",
          f"{bound(parts, 0):.3f}", f"{bound(parts, 1):.3f}"]])
    table += "\n" + markdown_table(
        f"The pipeline against that bound ({args.steps} steps per η; step: mean perf/step_s after step "
        f"{WARM_STEPS})",
        ["η", "step s", "ideal s", "achieved / ideal", "samples/s", "learner idle", "rollout idle", "sync s (mean)",
         "wall s"],
        [[r["eta"], f"{r['step_s']:.3f}", f"{r['ideal_s']:.3f}", f"{r['achieved']:.0%}", f"{r['samples_per_s']:.0f}",
          f"{r['learner_idle']:.0%}", f"{r['rollout_idle']:.0%}", f"{r['sync_s']:.3f}", f"{r['wall_s']:.1f}"]
         for r in rows])
    save("pipeline_vs_ideal", table, rows, smoke=args.smoke)


if __name__ == "__main__":
    main()
