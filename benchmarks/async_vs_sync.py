"""Benchmark: asynchronous (η > 0) against synchronous (η = 0) RL on the embedded default, side by side.

Runs the same job (same warm-up checkpoint, same number of optimizer steps) once per η on one local Ray, and
reports each run's wall time, samples/s, learner and rollout idle fractions, held-out accuracy, and the speed-up
of each η relative to η = 0 measured in the same invocation. Usage:

    python benchmarks/async_vs_sync.py [--steps 300] [--etas 0 1 2] [key=value ...]

Writes ``benchmarks/results/async_vs_sync.md`` and ``.json``. Timings depend on the machine and its load; read the
ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from results_io import markdown_table, save

from rlsys.config import load_config
from rlsys.train import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--etas", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="rlsys-bench-")
    rows = []
    for eta in args.etas:
        cfg = load_config(None, [f"output.root={root}", f"output.run_name=eta{eta}", "output.progress_bar=false",
                                 f"train.num_steps={args.steps}", f"train.max_staleness={eta}",
                                 f"train.eval_every={args.steps}", *args.overrides])
        summary, _ = train(cfg)
        acc = summary.eval_accuracy
        rows.append({"eta": eta, "wall_s": summary.wall_s, "samples_per_s": summary.samples_per_s,
                     "learner_idle": summary.learner_idle_frac, "rollout_idle": summary.rollout_idle_frac,
                     "acc_before": acc[min(acc)], "acc_after": acc[max(acc)],
                     "max_staleness_seen": summary.max_staleness_seen, "sync_ms": summary.sync_s_mean * 1e3})
    base = next((r for r in rows if r["eta"] == 0), rows[0])
    table = markdown_table(
        f"async vs sync, {args.steps} steps each, overrides: {' '.join(args.overrides) or 'none'}",
        ["η", "wall s", "samples/s", "speed-up vs η=0", "learner idle", "rollout idle", "accuracy before → after",
         "max staleness", "sync ms"],
        [[r["eta"], f"{r['wall_s']:.1f}", f"{r['samples_per_s']:.0f}", f"{base['wall_s'] / r['wall_s']:.2f}×",
          f"{r['learner_idle']:.0%}", f"{r['rollout_idle']:.0%}", f"{r['acc_before']:.1%} → {r['acc_after']:.1%}",
          r["max_staleness_seen"], f"{r['sync_ms']:.1f}"] for r in rows])
    save("async_vs_sync", table, rows)


if __name__ == "__main__":
    sys.exit(main())
