"""Device check and benchmark: the model-based rewards on a GPU against the same models on the CPU, side by side.

Builds (randomly initialised, nothing downloaded) a sequence-classification reward model and a tiny judge LM,
then on ``--device`` (e.g. ``cuda``) and on the CPU:

- scores the same (prompt, response) pairs with :class:`SequenceClassifierRM`: the largest difference between
  the two devices, and samples/s on each (the CPU on a subset, it is slow) and their ratio;
- runs a model-based term through :class:`RewardScorer` on the device (a 2-member ``mean_minus_std`` ensemble
  with ``reference_relative``, and a process-scope PRM), as a reward actor does with ``reward.num_gpus`` > 0;
- runs :class:`GenerativeJudge` through the HF generation engine on the device and counts unparsed answers.

Needs torch, transformers and numpy only (no Ray), so it runs on a bare GPU machine from the repo root::

    PYTHONPATH=. python benchmarks/reward_model_device.py --device cuda [--n 4096] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from rlsys.data.tokenizer import build_char_tokenizer
from rlsys.rewards import RewardComponent, RewardModelSpec, RewardScorer
from rlsys.rewards.models import GenerativeJudge, SequenceClassifierRM

ALPHABET = "0123456789+-*=() abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,:;!?\n'\""


# Not rlsys.data.model.build_tiny_llama: that takes an rlsys.config.ModelConfig, whose module needs omegaconf, which
# the bare GPU image lacks.
def llama_config(tokenizer, hidden: int, layers: int, **extra) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden,
                       num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                       num_key_value_heads=max(1, hidden // 64), max_position_embeddings=1024,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, **extra)


def build(directory: Path, hidden: int, layers: int, kind: str, seed: int = 0) -> str:
    tokenizer = build_char_tokenizer(ALPHABET)
    torch.manual_seed(seed)
    if kind == "rm":
        model = LlamaForSequenceClassification(llama_config(tokenizer, hidden, layers, num_labels=1))
    else:
        model = LlamaForCausalLM(llama_config(tokenizer, hidden, layers, tie_word_embeddings=True))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def rate(rm: SequenceClassifierRM, prompts: list[str], responses: list[str]) -> tuple[np.ndarray, float]:
    rm.score(prompts[:8], responses[:8])  # warm-up: CUDA context, kernels
    if rm.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    scores = rm.score(prompts, responses)
    return scores, len(prompts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--cpu_n", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--response_chars", type=int, default=200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rlsys-rm-device-"))
    rng = random.Random(0)
    prompts = [f"{rng.randint(0, 99)}+{rng.randint(0, 99)}=" for _ in range(args.n)]
    responses = ["".join(rng.choice("0123456789 abc+=.") for _ in range(rng.randint(1, args.response_chars)))
                 for _ in range(args.n)]
    rm_path = build(tmp / "rm", args.hidden, args.layers, "rm")
    report: dict = {"device": args.device, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "torch": torch.__version__, "rm": f"Llama {args.hidden}x{args.layers}", "n": args.n}

    dev_rm = SequenceClassifierRM(rm_path, args.device, batch_size=256, max_length=512)
    cpu_rm = SequenceClassifierRM(rm_path, "cpu", batch_size=64, max_length=512)
    dev_scores, dev_rate = rate(dev_rm, prompts, responses)
    cpu_scores, cpu_rate = rate(cpu_rm, prompts[:args.cpu_n], responses[:args.cpu_n])
    report.update(rm_samples_per_s_device=dev_rate, rm_samples_per_s_cpu=cpu_rate,
                  rm_device_vs_cpu=dev_rate / cpu_rate,
                  rm_max_abs_diff=float(np.max(np.abs(dev_scores[:args.cpu_n] - cpu_scores))),
                  rm_score_std=float(np.std(cpu_scores)), rm_version=dev_rm.version)
    assert np.allclose(dev_scores[:args.cpu_n], cpu_scores, atol=1e-3 * max(1.0, float(np.abs(cpu_scores).max()))), \
        "reward-model scores differ between the device and the CPU"

    small, other = build(tmp / "rm_a", 128, 2, "rm", seed=1), build(tmp / "rm_b", 128, 2, "rm", seed=2)
    terms = [
        RewardComponent("rm", model=RewardModelSpec(paths=[small, other], ensemble="mean_minus_std",
                                                    reference_relative=True)),
        RewardComponent("prm", scope="process", step_split=r"\s+", step_aggregate="min_form",
                        model=RewardModelSpec(paths=[small])),
        RewardComponent("exact", "exact_match", weight=0.0),
    ]
    with RewardScorer(terms, timeout_s=5.0, device=args.device) as scorer:
        items = [(r[:20], "42", p, i // 4) for i, (p, r) in enumerate(zip(prompts[:64], responses[:64]))]
        outcomes = scorer.score(items)
    report.update(scorer_failed=sum(o.failed for o in outcomes),
                  scorer_rm_in_0_1=all(0.0 <= o.components["rm"] <= 1.0 for o in outcomes),
                  scorer_versions=outcomes[0].versions, scorer_seconds=scorer.last_seconds)
    assert report["scorer_failed"] == 0 and report["scorer_rm_in_0_1"]

    judge_path = build(tmp / "judge", 256, 2, "lm")
    judge = GenerativeJudge(judge_path, args.device, max_new_tokens=8, batch_size=64)
    verdicts = judge.judge(prompts[:64], responses[:64], ["42"] * 64)
    report.update(judge_items=len(verdicts), judge_unparsed=sum(v[0] is None for v in verdicts),
                  judge_engine_device=str(judge.engine.device) if hasattr(judge, "engine") else None)
    print(json.dumps(report, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
