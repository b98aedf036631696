"""Benchmark: every algorithm recipe (configs/algos/*.yaml) on the embedded default task, side by side.

Runs each recipe for the same number of optimizer steps from the same warm-up checkpoint on one local Ray, and
reports held-out greedy accuracy before and after, the training reward's rise, wall time and throughput. Usage::

    python benchmarks/algorithms.py [--steps 200] [--algos grpo dapo ...] [key=value ...]

Writes ``benchmarks/results/algorithms.{md,json}``. Timings depend on the machine and its load; compare rows of one
invocation only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from results_io import markdown_table, save

from rlsys.config import ALGO_RECIPES, DEFAULT_CONFIG, algo_recipe, load_config
from rlsys.metrics import read_metrics
from rlsys.train import train


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--algos", nargs="+", default=sorted(p.stem for p in ALGO_RECIPES.glob("*.yaml")))
    parser.add_argument("overrides", nargs="*", help="key=value for every run (default adds warmup.steps=500)")
    args = parser.parse_args()
    extra = ["warmup.steps=500", *args.overrides]
    root = tempfile.mkdtemp(prefix="rlsys-algos-")
    rows = []
    for name in args.algos:
        cfg = load_config([DEFAULT_CONFIG, algo_recipe(name)], [
            f"output.root={root}", f"output.run_name={name}", "output.progress_bar=false",
            f"train.num_steps={args.steps}", "train.eval_every=0", *extra])
        summary, run_dir = train(cfg)
        records = read_metrics(run_dir)
        rewards = [r["reward/mean"] for r in records if r.get("reward/mean") is not None]
        window = max(len(rewards) // 7, 1)
        acc = summary.eval_accuracy
        rows.append({"algo": name, "acc_before": acc[min(acc)], "acc_after": acc[max(acc)],
                     "reward_first": mean(rewards[:window]), "reward_last": mean(rewards[-window:]),
                     "wall_s": summary.wall_s, "samples_per_s": summary.samples_per_s,
                     "filtered_groups": summary.filtered_groups})
    table = markdown_table(
        f"algorithms: {args.steps} optimizer steps each, overrides: {' '.join(extra)}",
        ["algo", "held-out accuracy before → after", "training reward first → last 1/7", "RL wall s", "samples/s",
         "groups dropped by dynamic sampling"],
        [[r["algo"], f"{r['acc_before']:.1%} → {r['acc_after']:.1%}",
          f"{r['reward_first']:.3f} → {r['reward_last']:.3f}", f"{r['wall_s']:.0f}", f"{r['samples_per_s']:.0f}",
          r["filtered_groups"]] for r in rows])
    save("algorithms", table, rows)


if __name__ == "__main__":
    sys.exit(main())
