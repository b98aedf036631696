"""Run-to-run spread of the learning tests: the runs of ``tests/test_learning.py``, repeated over seeds.

A learning test asserts that held-out accuracy and the training reward rise by at least some margin. The margin
is only honest if it is wide relative to how much such a run varies between machines, loads and seeds; a
different CPU gives a different warm-up (float results differ), which varying ``model.seed`` and ``train.seed``
reproduces here. Usage::

    python benchmarks/learning_spread.py [--seeds 0 1 2] [--algos grpo ppo_gae ...] [--steps 200] [key=value ...]

Writes ``benchmarks/results/learning_spread.{md,json}``: per run the held-out accuracy before → after and the
training reward's rise; per algorithm the mean, standard deviation and minimum of both gains.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from results_io import markdown_table, save
from test_learning import COMPOSITE_REWARD, calculator_config, learning_config, learning_gains, tool_call_rates

from rlsys.config import ALGO_RECIPES
from rlsys.train import train


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=None, help="default: the learning tests' STEPS")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    recipes = sorted(p.stem for p in ALGO_RECIPES.glob("*.yaml"))
    parser.add_argument("--algos", nargs="+", default=[*recipes, "composite"],
                        help="recipes of configs/algos/, 'composite' (the composite-reward test's run) or "
                             "'calculator' (the calculator tool example's)")
    parser.add_argument("--name", default="learning_spread", help="results file name")
    parser.add_argument("--root", help="runs and warm-up cache (default: a new temporary folder)")
    parser.add_argument("overrides", nargs="*", help="key=value for every run")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="rlsys-spread-"))
    rows = []
    for algo in args.algos:
        for seed in args.seeds:
            overrides = [f"model.seed={seed}", f"train.seed={seed}",
                         f"output.run_name={algo}-{seed}-{args.steps or 'default'}",
                         *([f"train.num_steps={args.steps}"] if args.steps else []), *args.overrides]
            composite = algo == "composite"
            if algo == "calculator":
                cfg = calculator_config(root, *overrides)
            else:
                cfg = learning_config(root, None if composite else algo, *(COMPOSITE_REWARD if composite else ()),
                                      *overrides)
            summary, run_dir = train(cfg)
            acc_before, acc_after, reward_rise = learning_gains(
                summary, run_dir, "reward/correct" if composite else "reward/mean")
            rows.append({"algo": algo, "seed": seed, "acc_before": acc_before, "acc_after": acc_after,
                         "acc_gain": acc_after - acc_before, "reward_rise": reward_rise, "wall_s": summary.wall_s})
            if algo == "calculator":
                rows[-1]["tool_call_rate_before"], rows[-1]["tool_call_rate_after"] = tool_call_rates(run_dir)
            print(rows[-1], flush=True)
            save_table(args, rows)


def save_table(args: argparse.Namespace, rows: list[dict]) -> None:
    """The per-run rows and the per-algorithm summary so far (written after every run: a long sweep can stop)."""
    per_algo = []
    for algo in dict.fromkeys(r["algo"] for r in rows):
        runs = [r for r in rows if r["algo"] == algo]
        gains, rises = [r["acc_gain"] for r in runs], [r["reward_rise"] for r in runs]
        per_algo.append([algo, len(runs), ", ".join(f"{r['acc_before']:.1%} → {r['acc_after']:.1%}" for r in runs),
                         f"{statistics.mean(gains):+.3f} ± {sd(gains):.3f} (min {min(gains):+.3f})",
                         f"{statistics.mean(rises):+.3f} ± {sd(rises):.3f} (min {min(rises):+.3f})",
                         f"{statistics.mean(r['wall_s'] for r in runs):.0f}"])
    table = markdown_table(
        f"learning-test spread over seeds {args.seeds}; overrides: {' '.join(args.overrides) or 'none'}",
        ["algo", "runs", "held-out accuracy per seed", "held-out gain mean ± sd (min)",
         "training-reward rise mean ± sd (min)", "RL wall s"], per_algo)
    save(args.name, table, rows)


if __name__ == "__main__":
    sys.exit(main())
