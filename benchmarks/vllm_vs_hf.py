"""Benchmark: HF ``generate`` vs vLLM (``rollout.backend=hf`` vs ``vllm``) generation throughput, one process.

Both engines (:class:`rlsys.engines.generation.HFEngine`, :class:`rlsys.engines.vllm_engine.VLLMEngine`) generate
the same requests from the default task's checkpoint: ``--prompts`` training prompts × ``--group-size`` samples,
``--max-new-tokens`` tokens at most (the default task's 6), at temperature 1, ``--runs`` times each after one
warm-up request. Reports samples/s and generated tokens/s per engine, and the engines' start-up seconds. Usage::

    python benchmarks/vllm_vs_hf.py [--model-dir DIR] [--prompts 64] [--group-size 8] [--runs 3] [--threads 1]

Without ``--model-dir`` the default config's checkpoint is prepared (cached in ~/.cache/rlsys: the warm-up runs
once). Figures depend on the machine and its load; results go to benchmarks/results/vllm_vs_hf.{md,json}.
"""

from __future__ import annotations

import argparse
import platform
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from rlsys.config import load_config
    from rlsys.engines.generation import HFEngine
    from rlsys.engines.vllm_engine import VLLMEngine, VLLMSettings

    torch.set_num_threads(args.threads)
    cfg = load_config(None)
    if args.model_dir:
        model_dir = args.model_dir
        from rlsys.prepare import load_datasets

        texts = [p.text for p in load_datasets(cfg).train_prompts[:args.prompts]]
    else:
        from rlsys.prepare import prepare

        prepared = prepare(cfg)
        model_dir, texts = prepared.model_dir, [p.text for p in prepared.train_prompts[:args.prompts]]
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(t)["input_ids"] for t in texts for _ in range(args.group_size)]

    rows = []
    for name in ("hf", "vllm"):
        start = time.perf_counter()
        if name == "hf":
            engine = HFEngine(model_dir, tok.pad_token_id, tok.eos_token_id, tokenizer=tok)
        else:
            engine = VLLMEngine(model_dir, tok.pad_token_id, tok.eos_token_id, VLLMSettings(kv_cache_gib=0.25),
                                tokenizer=tok)
        start_s = time.perf_counter() - start
        engine.generate(prompts, args.max_new_tokens, 1.0, seed=0)  # warm-up
        for run in range(args.runs):
            start = time.perf_counter()
            out = engine.generate(prompts, args.max_new_tokens, 1.0, seed=run + 1)
            seconds = time.perf_counter() - start
            tokens = sum(len(c.token_ids) for c in out)
            rows.append({"engine": name, "run": run, "samples": len(out), "tokens": tokens, "seconds": seconds,
                         "samples_per_s": len(out) / seconds, "tokens_per_s": tokens / seconds, "start_s": start_s})
            print(f"{name} run {run}: {len(out)} samples, {tokens} tokens in {seconds:.3f} s = "
                  f"{len(out) / seconds:.0f} samples/s", flush=True)
        if name == "vllm":
            engine.close()
        del engine

    from results_io import markdown_table, save

    table = markdown_table(
        f"HF vs vLLM generation ({args.prompts} prompts × {args.group_size} samples, ≤ {args.max_new_tokens} tokens, "
        f"{args.threads} torch thread(s), {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')})",
        ["engine", "run", "samples", "tokens", "seconds", "samples/s", "tokens/s", "engine start s"],
        [[r["engine"], r["run"], r["samples"], r["tokens"], f"{r['seconds']:.3f}", f"{r['samples_per_s']:.0f}",
          f"{r['tokens_per_s']:.0f}", f"{r['start_s']:.1f}"] for r in rows])
    save("vllm_vs_hf", table, rows)


if __name__ == "__main__":
    main()
