"""Benchmark: multi-turn rollouts with a slow tool — trajectories advancing concurrently vs one at a time.

The calculator example's policy (configs/examples/calculator.yaml, warmed up on demonstrations that all call the
tool, so nearly every trajectory makes one call) generates trajectories with the HF engine in this process
(:class:`rlsys.agent_loop.AgentLoop`), the calculator running in real environment workers (Ray actors) with
``latency_s`` seconds of sleep per call: a stand-in for a search index or another model. The same prompts are
generated as one batch of concurrent trajectories, and one trajectory at a time, side by side for each latency.
Usage::

    python benchmarks/agent_concurrency.py [--trajectories 128] [--repeats 5] [--latencies 0 0.05 0.2]

Writes ``benchmarks/results/agent_concurrency.{md,json}``. Timings depend on the machine and its load; compare rows
of one invocation only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np
import ray
from results_io import markdown_table, save
from test_learning import calculator_config

from rlsys.actors.env import EnvWorker
from rlsys.agent_loop import AgentLoop
from rlsys.engines.generation import HFEngine
from rlsys.prepare import prepare
from rlsys.train import ACTOR_ENV

PARAMS = {"open": "[", "close": "]", "observation_template": "={result} ", "demo_tool_rate": 1.0}


def measure(cfg, engine, fmt, prompts: list, latency: float, one_at_a_time: bool, repeats: int) -> dict:
    params = {**PARAMS, "latency_s": latency}
    env = [ray.remote(EnvWorker).options(max_concurrency=cfg.env.max_concurrency, num_cpus=0).remote(
        cfg.env.name, params)]
    ray.get(env[0].__ray_ready__.remote())
    loop = AgentLoop(engine, fmt, env, cfg.env, cfg.rollout.max_new_tokens, cfg.rollout.temperature)
    loop.run(prompts, seed=0)  # warm: the first batches of a size and the first calls pay one-off costs
    times = []
    for repeat in range(1 if one_at_a_time else repeats):  # one pass one at a time takes as long as many batched
        start = time.perf_counter()
        if one_at_a_time:
            rollouts = [r for i, p in enumerate(prompts) for r in loop.run([p], seed=i)]
        else:
            rollouts = loop.run(prompts, seed=repeat)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    ray.kill(env[0])
    calls = [r.trajectory.tool_calls for r in rollouts]
    return {"latency_s": latency, "mode": "one at a time" if one_at_a_time else "concurrent",
            "trajectories": len(rollouts), "seconds": seconds, "samples_per_s": len(rollouts) / seconds,
            "turns": float(np.mean([len(r.trajectory.turns) for r in rollouts])), "tool_calls": float(np.mean(calls))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trajectories", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="concurrent passes (the median is reported)")
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.0, 0.05, 0.2])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rlsys-agent-"))
    cfg = calculator_config(root, f"env.params={PARAMS}")
    prepared = prepare(cfg)
    from transformers import AutoTokenizer

    from rlsys.data.chat import PromptFormat
    from rlsys.envs import env_stop_strings

    tokenizer = AutoTokenizer.from_pretrained(prepared.model_dir)
    fmt = PromptFormat.of(tokenizer, cfg.task)
    engine = HFEngine(prepared.model_dir, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer=tokenizer,
                      stop=env_stop_strings(cfg.env.name, PARAMS))
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": ACTOR_ENV},
             log_to_driver=False)
    prompts = prepared.eval_prompts[:args.trajectories]
    rows = []
    for latency in args.latencies:
        pair = [measure(cfg, engine, fmt, prompts, latency, one, args.repeats) for one in (False, True)]
        pair[0]["speedup"] = pair[0]["samples_per_s"] / pair[1]["samples_per_s"]
        rows += pair
        print(*pair, sep="\n", flush=True)
    table = markdown_table(
        f"{args.trajectories} calculator trajectories (tiny policy, HF engine on CPU, 1 environment worker), by tool "
        "latency: one batch of concurrent trajectories (median of --repeats passes) vs one trajectory at a time",
        ["tool latency s", "mode", "s", "samples/s", "turns", "tool calls", "concurrent / one at a time"],
        [[r["latency_s"], r["mode"], f"{r['seconds']:.2f}", f"{r['samples_per_s']:.1f}", f"{r['turns']:.2f}",
          f"{r['tool_calls']:.2f}", f"{r['speedup']:.1f}×" if "speedup" in r else ""] for r in rows])
    save("agent_concurrency", table, rows)
    ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
