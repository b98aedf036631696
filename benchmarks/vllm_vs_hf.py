"""Benchmark: HF ``generate`` vs vLLM (``rollout.backend=hf`` vs ``vllm``) generation throughput, and η = 1 RL with vs
without in-flight weight updates (``rollout.inflight_weight_updates``), in one process.

1. Both engines (:class:`rlsys.engines.generation.HFEngine`, :class:`rlsys.engines.vllm_engine.VLLMEngine`) generate
   the same requests from the default task's checkpoint: ``--prompts`` training prompts × ``--group-size`` samples,
   ``--runs`` times each after one warm-up request, at temperature 1, on two workloads — the default task's (the
   warmed policy, ≤ 6 new tokens: it answers in 3-4) and a long, variable-length one (the same model before its
   warm-up, ``warmup.steps=0``, ≤ ``--long-tokens`` new tokens: it has not learned where an answer ends, so its end
   token comes at random; for 48 tokens the 10th/50th/90th percentiles of length were 4/20/48). Samples/s,
   generated tokens/s and the engines' start-up seconds.
2. Unless ``--rl-steps 0``: two ``rlsys train`` runs of ``--rl-steps`` steps at η = 1 with ``rollout.backend=vllm``
   on the long workload, in-flight updates off and on: wall time, samples/s, the learner's and the rollout
   workers' idle fractions, and how many samples span a weight update (from samples.parquet).

Usage::

    python benchmarks/vllm_vs_hf.py [--prompts 64] [--group-size 8] [--runs 3] [--threads 1]
                                    [--long-tokens 48] [--rl-steps 100] [--smoke]

The default config's checkpoints are prepared (cached in ~/.cache/rlsys: the warm-up runs once). ``--smoke``: a
few prompts, one run, 3 RL steps — that the script works, not a measurement (CI runs it).
Figures depend on the machine and its load; read the ratios within one invocation. Results go to
benchmarks/results/vllm_vs_hf.{md,json} (not with --smoke).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


LONG = ["warmup.steps=0"]  # the long workload's policy: the model before its warm-up


def engine_rows(model_dir: str, prompts: list[list[int]], workloads: list[tuple[str, dict | None, int]], runs: int,
                tok) -> list[dict]:
    """Per engine, workload (name, the policy's weights — None: ``model_dir``'s —, max new tokens) and run:
    samples, tokens, shortest and longest response, seconds, samples/s, tokens/s, the engine's start-up seconds."""
    from rlsys.engines.generation import HFEngine
    from rlsys.engines.vllm_engine import VLLMEngine, VLLMSettings

    rows = []
    for name in ("hf", "vllm"):
        start = time.perf_counter()
        if name == "hf":
            engine = HFEngine(model_dir, tok.pad_token_id, tok.eos_token_id, tokenizer=tok)
        else:
            engine = VLLMEngine(model_dir, tok.pad_token_id, tok.eos_token_id, VLLMSettings(kv_cache_gib=0.25),
                                tokenizer=tok)
        start_s = time.perf_counter() - start
        for version, (workload, weights, max_new_tokens) in enumerate(workloads):
            if weights is not None:
                engine.update_weights(weights, version)
            engine.generate(prompts, max_new_tokens, 1.0, seed=0)  # warm-up
            for run in range(runs):
                start = time.perf_counter()
                out = engine.generate(prompts, max_new_tokens, 1.0, seed=run + 1)
                seconds = time.perf_counter() - start
                lengths = [len(c.token_ids) for c in out]
                rows.append({"engine": name, "workload": workload, "run": run, "samples": len(out),
                             "tokens": sum(lengths), "min_len": min(lengths), "max_len": max(lengths),
                             "seconds": seconds, "samples_per_s": len(out) / seconds,
                             "tokens_per_s": sum(lengths) / seconds, "start_s": start_s})
                print(f"{name} {workload} run {run}: {len(out)} samples, {sum(lengths)} tokens in {seconds:.3f} s = "
                      f"{len(out) / seconds:.0f} samples/s", flush=True)
        if name == "vllm":
            engine.close()
        del engine
    return rows


def inflight_rows(steps: int, long_tokens: int) -> list[dict]:
    """The two η = 1 vLLM runs on the long workload, in-flight updates off then on."""
    import numpy as np

    from rlsys.config import load_config
    from rlsys.samples_io import read_samples
    from rlsys.train import train

    root, rows = tempfile.mkdtemp(prefix="rlsys-inflight-"), []
    for inflight in (False, True):
        cfg = load_config(None, [
            f"output.root={root}", f"output.run_name=inflight-{inflight}", "output.progress_bar=false",
            f"train.num_steps={steps}", "train.max_staleness=1", f"train.eval_every={steps}", *LONG,
            "rollout.backend=vllm", "rollout.vllm_kv_cache_gib=0.25", f"rollout.max_new_tokens={long_tokens}",
            f"rollout.inflight_weight_updates={str(inflight).lower()}"])
        summary, run_dir = train(cfg)
        log = read_samples(run_dir / "samples.parquet", ["token_versions", "dropped"]).to_pylist()
        lengths = [len(r["token_versions"]) for r in log]
        rows.append({"inflight": inflight, "steps": summary.steps, "wall_s": summary.wall_s,
                     "samples_per_s": summary.samples_per_s, "learner_idle": summary.learner_idle_frac,
                     "rollout_idle": summary.rollout_idle_frac, "samples": len(log),
                     "spanning": sum(len(set(r["token_versions"])) > 1 for r in log),
                     "mean_len": float(np.mean(lengths)), "dropped_stale": summary.dropped_stale_groups,
                     "max_staleness_seen": summary.max_staleness_seen})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--long-tokens", type=int, default=48)
    parser.add_argument("--rl-steps", type=int, default=100)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.prompts, args.group_size, args.runs, args.rl_steps = 4, 2, 1, min(args.rl_steps, 3)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlsys.config import load_config
    from rlsys.prepare import prepare

    torch.set_num_threads(args.threads)
    cfg = load_config(None)
    prepared = prepare(cfg)
    model_dir = prepared.model_dir
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(p.text)["input_ids"] for p in prepared.train_prompts[:args.prompts] for _ in range(args.group_size)]
    untrained = AutoModelForCausalLM.from_pretrained(prepare(load_config(None, LONG)).model_dir)
    long_weights = {k: t.detach().numpy() for k, t in untrained.state_dict().items()}
    workloads = [("default", None, cfg.rollout.max_new_tokens), ("long", long_weights, args.long_tokens)]
    rows = engine_rows(model_dir, prompts, workloads, args.runs, tok)
    rl = inflight_rows(args.rl_steps, args.long_tokens) if args.rl_steps else []

    from results_io import markdown_table, save

    when = f"{args.threads} torch thread(s), {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}"
    table = markdown_table(
        f"HF vs vLLM generation ({args.prompts} prompts × {args.group_size} samples at T = 1; default: the warmed "
        f"policy, ≤ {cfg.rollout.max_new_tokens} tokens; long: the untrained one, ≤ {args.long_tokens}; {when})",
        ["engine", "workload", "run", "samples", "tokens", "length min-max", "seconds", "samples/s", "tokens/s",
         "engine start s"],
        [[r["engine"], r["workload"], r["run"], r["samples"], r["tokens"], f"{r['min_len']}-{r['max_len']}",
          f"{r['seconds']:.3f}", f"{r['samples_per_s']:.0f}", f"{r['tokens_per_s']:.0f}", f"{r['start_s']:.1f}"]
         for r in rows])
    if rl:
        off = rl[0]
        table += "\n" + markdown_table(
            f"η = 1, rollout.backend=vllm, long workload (from the untrained policy: throughput, not learning), "
            f"{args.rl_steps} steps: in-flight weight updates off vs on",
            ["in-flight updates", "wall s", "samples/s", "speed-up", "learner idle", "rollout idle",
             "samples spanning an update", "mean tokens per sample", "dropped stale groups", "max staleness"],
            [["on" if r["inflight"] else "off", f"{r['wall_s']:.1f}", f"{r['samples_per_s']:.0f}",
              f"{off['wall_s'] / r['wall_s']:.2f}×", f"{r['learner_idle']:.0%}", f"{r['rollout_idle']:.0%}",
              f"{r['spanning']} of {r['samples']}", f"{r['mean_len']:.1f}", r["dropped_stale"],
              r["max_staleness_seen"]] for r in rl])
    save("vllm_vs_hf", table, {"generation": rows, "inflight": rl}, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
