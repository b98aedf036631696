"""Benchmark: how many samples per second the reward pool scores, rule-based and model-based, by pool size.

Real reward actors (:class:`rlsys.actors.reward.RewardWorker`) on a local Ray score rollout batches shaped like
the default run's (8 prompt groups × 8 samples of 2-digit addition): the rule-based default (``addition_exact``),
a three-term composite (correctness + format + length penalty), and a sequence-classification reward model built
here (randomly initialised: throughput does not depend on what it learned) at the default policy's size and at
a 4× wider one. Each reward kind runs with 1 and 2 reward actors, side by side in one invocation. Usage::

    python benchmarks/reward_throughput.py [--batches 40] [--pools 1 2]

Writes ``benchmarks/results/reward_throughput.{md,json}``. Timings depend on the machine and its load; compare
rows of one invocation only.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np
import ray
from results_io import markdown_table, save

from rlsys.actors.reward import RewardWorker
from rlsys.config import ModelConfig, RewardConfig
from rlsys.data.model import build_tiny_llama
from rlsys.data.tasks import make_arithmetic_rows
from rlsys.data.tokenizer import build_char_tokenizer
from rlsys.rewards import RewardComponent, RewardModelSpec
from rlsys.train import ACTOR_ENV
from rlsys.types import Group, Prompt, RolloutBatch, Sample

GROUPS, GROUP_SIZE = 8, 8


def make_batches(n: int, seed: int = 0) -> list[RolloutBatch]:
    """Rollout batches of the default task with answers that are right about half of the time."""
    rng = random.Random(seed)
    rows = make_arithmetic_rows(2, n * GROUPS, seed)
    batches = []
    for b in range(n):
        groups = []
        for row in rows[b * GROUPS: (b + 1) * GROUPS]:
            prompt = Prompt(row["id"], row["prompt"], row["answer"])
            samples = tuple(
                Sample(prompt.prompt_id, j, 0, np.zeros(6, np.int32), np.zeros(4, np.int32), np.zeros(4, np.float32),
                       "stop", 0, row["answer"] if rng.random() < 0.5 else str(int(row["answer"]) + rng.randint(1, 9)))
                for j in range(GROUP_SIZE))
            groups.append(Group(prompt, samples))
        batches.append(RolloutBatch(b, groups, 0, 0.0))
    return batches


def build_rm(directory: Path, hidden: int, layers: int) -> str:
    tokenizer = build_char_tokenizer()
    size = ModelConfig(hidden_size=hidden, intermediate_size=3 * hidden, num_layers=layers, num_heads=4)
    build_tiny_llama(size, tokenizer, reward_head=True).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def throughput(cfg: RewardConfig, pool: int, batches: list[ray.ObjectRef], samples: int) -> float:
    """Samples per second scored by ``pool`` reward actors, every batch in its own call, round robin."""
    workers = [ray.remote(RewardWorker).options(num_cpus=cfg.num_cpus).remote(cfg) for _ in range(pool)]
    ray.get([w.score.remote(batches[0]) for w in workers])  # start-up and first-call costs are not throughput
    start = time.perf_counter()
    ray.get([workers[i % pool].score.remote(b) for i, b in enumerate(batches)])
    seconds = time.perf_counter() - start
    for w in workers:
        ray.get(w.close.remote())
        ray.kill(w)
    return samples / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--pools", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    ray.init(num_cpus=max(args.pools) + 1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": ACTOR_ENV})
    tmp = Path(tempfile.mkdtemp(prefix="rlsys-reward-bench-"))
    kinds = {
        "rule: addition_exact": [RewardComponent.single("addition_exact")],
        "rule: composite (3 terms)": [
            RewardComponent("correct", "addition_exact"),
            RewardComponent("digits", "regex_format", 0.2, {"pattern": "[0-9]+"}),
            RewardComponent("short", "length_penalty", 0.1, {"target": 3, "tolerance": 1})],
        "model: RM 128×2 (policy size)": [RewardComponent("rm", model=RewardModelSpec(
            paths=[build_rm(tmp / "rm128", 128, 2)], batch_size=64))],
        "model: RM 512×4": [RewardComponent("rm", model=RewardModelSpec(
            paths=[build_rm(tmp / "rm512", 512, 4)], batch_size=64))],
    }
    batches = make_batches(args.batches)
    refs = [ray.put(b) for b in batches]
    samples = args.batches * GROUPS * GROUP_SIZE
    rows = []
    for kind, terms in kinds.items():
        cfg = RewardConfig(components=terms, num_cpus=1.0)
        rates = {pool: throughput(cfg, pool, refs, samples) for pool in args.pools}
        rows.append({"reward": kind, **{f"pool_{p}": r for p, r in rates.items()}})
        print(kind, {p: round(r) for p, r in rates.items()}, flush=True)
    base = args.pools[0]
    table = markdown_table(
        f"reward pool throughput: {samples} samples in batches of {GROUPS}×{GROUP_SIZE}, {os.cpu_count()} CPUs",
        ["reward", *[f"samples/s, {p} actor(s)" for p in args.pools],
         *[f"{p} vs {base} actors" for p in args.pools[1:]]],
        [[r["reward"], *[f"{r[f'pool_{p}']:.0f}" for p in args.pools],
          *[f"{r[f'pool_{p}'] / r[f'pool_{base}']:.2f}×" for p in args.pools[1:]]] for r in rows])
    save("reward_throughput", table, rows)
    ray.shutdown()


if __name__ == "__main__":
    main()
