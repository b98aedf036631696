"""Benchmark: how much staleness each objective tolerates — naive PPO against decoupled PPO + truncated IS.

For every η in ``--etas`` and both variants, runs the same job (same warm-up checkpoint, same number of optimizer
steps) on one local Ray and records held-out greedy accuracy at equal optimizer steps, wall time, the staleness
the learner actually saw, and the off-policy metrics (clip fractions, behaviour KL, IS weights). Variants:

- ``naive``: PPO's ratio and clip taken against the behaviour logprobs the engine sampled with;
- ``decoupled_tis``: clip against the learner's proximal policy, token-level IS weight π_prox/π_behaviour
  truncated at ``algo.is_cap``.

Both use ``algo.minibatches=2`` by default (two updates per step), so that the proximal clip has something to do.
Usage (the extra ``bench`` dependencies draw the plot)::

    pip install -c constraints.txt -e '.[bench]'
    python benchmarks/staleness_ablation.py [--steps 400] [--etas 0 1 2 4 8] [--seeds 0 1] [key=value ...]

Writes ``benchmarks/results/staleness_ablation.{md,json,png}``. Timings depend on the machine and its load; compare
rows of one invocation only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from results_io import markdown_table, save

from rlsys.config import load_config
from rlsys.metrics import read_metrics
from rlsys.train import train

VARIANTS = {
    "naive": ["algo.decoupled=false"],
    "decoupled_tis": ["algo.decoupled=true", "algo.is_mode=tis", "algo.is_level=token"],
}
LOGGED = ("train/clip_low_frac", "train/clip_high_frac", "train/behaviour_kl", "train/is_weight_mean",
          "train/is_truncated_frac", "staleness/mean")


def run(root: str, steps: int, eta: int, variant: str, seed: int, extra: list[str]) -> dict:
    name = f"{variant}-eta{eta}-seed{seed}"
    cfg = load_config(None, [f"output.root={root}", f"output.run_name={name}", "output.progress_bar=false",
                             f"train.num_steps={steps}", f"train.max_staleness={eta}", f"train.seed={seed}",
                             f"train.eval_every={max(steps // 4, 1)}", *VARIANTS[variant], *extra])
    summary, run_dir = train(cfg)
    records = read_metrics(run_dir)
    means = {}
    for key in LOGGED:
        values = [r[key] for r in records if r.get(key) is not None]
        means[key] = sum(values) / len(values) if values else None
    acc = summary.eval_accuracy
    return {"variant": variant, "eta": eta, "seed": seed, "steps": summary.steps, "wall_s": summary.wall_s,
            "acc_before": acc[min(acc)], "acc_after": acc[max(acc)], "acc_curve": acc,
            "max_staleness_seen": summary.max_staleness_seen, "dropped_stale": summary.dropped_stale_groups,
            "samples_per_s": summary.samples_per_s, **{k.split("/")[-1]: v for k, v in means.items()}}


def average(rows: list[dict]) -> list[dict]:
    """One row per (variant, η): the mean over seeds, with every seed's final accuracy kept."""
    out = []
    for key in dict.fromkeys((r["variant"], r["eta"]) for r in rows):
        runs = [r for r in rows if (r["variant"], r["eta"]) == key]
        row = {k: (sum(r[k] for r in runs) / len(runs) if all(isinstance(r[k], float) for r in runs) else runs[0][k])
               for k in runs[0]}
        row["acc_after_each"] = [r["acc_after"] for r in runs]
        row["max_staleness_seen"] = max(r["max_staleness_seen"] for r in runs)
        out.append(row)
    return out


def write_table(rows: list[dict], steps: int, seeds: list[int], extra: list[str]) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    cells = []
    for r in average(rows):
        each = ", ".join(f"{a:.1%}" for a in r["acc_after_each"])
        cells.append([
            r["variant"], r["eta"], f"{r['acc_before']:.1%} → **{r['acc_after']:.1%}** ({each})", f"{r['wall_s']:.1f}",
            fmt(r["mean"], ".2f"), r["max_staleness_seen"],
            f"{fmt(r['clip_low_frac'], '.3f')} / {fmt(r['clip_high_frac'], '.3f')}", fmt(r["behaviour_kl"], ".4f"),
            fmt(r["is_weight_mean"], ".3f"), fmt(r["is_truncated_frac"], ".3f")])
    return markdown_table(
        f"staleness ablation: {steps} optimizer steps per run, seeds {seeds} (train.seed), means over seeds; "
        f"overrides: {' '.join(extra) or 'none'}",
        ["variant", "η", "accuracy before → after (each seed)", "wall s", "mean staleness", "max", "clip low / high",
         "behaviour KL", "IS weight mean", "IS truncated"], cells)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for variant in VARIANTS:
        mine = sorted((r for r in average(rows) if r["variant"] == variant), key=lambda r: r["eta"])
        if not mine:
            continue
        etas = [r["eta"] for r in mine]
        left.plot(etas, [r["acc_after"] for r in mine], marker="o", label=variant)
        right.plot(etas, [r["wall_s"] for r in mine], marker="o", label=variant)
    before = rows[0]["acc_before"]
    left.axhline(before, color="grey", linestyle=":", label="before RL")
    left.set(xlabel="max staleness η", ylabel="held-out accuracy (mean over seeds)",
             title=f"accuracy after {rows[0]['steps']} steps")
    right.set(xlabel="max staleness η", ylabel="wall time of the RL run (s)", title="wall time")
    for ax in (left, right):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(sorted({r["eta"] for r in rows}), labels=[str(e) for e in sorted({r["eta"] for r in rows})])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--etas", type=int, nargs="+", default=[0, 1, 2, 4, 8])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("overrides", nargs="*", help="key=value for every run (default adds algo.minibatches=2)")
    args = parser.parse_args()
    extra = ["algo.minibatches=2", *args.overrides]
    root = tempfile.mkdtemp(prefix="rlsys-ablation-")
    rows = [run(root, args.steps, eta, variant, seed, extra)
            for seed in args.seeds for eta in args.etas for variant in args.variants]
    table = write_table(rows, args.steps, args.seeds, extra)
    plot(rows, save("staleness_ablation", table, rows) / "staleness_ablation.png")


if __name__ == "__main__":
    sys.exit(main())
