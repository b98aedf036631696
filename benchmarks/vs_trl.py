"""Benchmark: rlsys against TRL's ``GRPOTrainer`` on the embedded default task, in one invocation (issue 13, part 1).

Both start from the default config's warm-started checkpoint and train the same prompts (the default task's
training set, in each trainer's own order) with the same settings: ``--groups`` prompts × ``--group-size``
completions per optimizer step, ≤ 6 new tokens at temperature 1, lr 2e-4 (AdamW, no weight decay, gradients clipped
at norm 1), no KL term, one update per batch, PPO's clip at 0.2, GRPO's advantage (group mean and std) and its
sequence-mean loss (TRL ``loss_type="grpo"``, rlsys ``algo.loss_agg=seq_mean_token_mean``), micro-batches of 64,
``--steps`` optimizer steps, the rlsys reward (``addition_exact``) as TRL's reward function. Held-out greedy accuracy
is measured alike for both, by :func:`rlsys.evaluate.evaluate_checkpoint` on the default task's held-out problems
(TRL's trained model is saved and evaluated; rlsys evaluates in its run at version 0 and at the end).

Reported per trainer: completions/s over the training (TRL: ``trainer.train()``; rlsys: the run's RL time, which
includes its two evaluations), the start-up (TRL: importing it, the model load and the trainer's construction;
rlsys: everything before the first step, Ray and the actors included), and the held-out accuracy before → after.
Settings that could not be made equal are in the README's results. TRL runs in this process on CPU with the same
torch; it is not an rlsys dependency: the ``bench`` extra brings it (``.venv/bin/pip install -c constraints.txt -e
'.[bench]'``), and so does the test extra, so that CI runs ``--smoke``. Usage::

    python benchmarks/vs_trl.py [--steps 200] [--etas 0 1] [--seed 0] [--smoke]

``--smoke``: 3 steps of 4 prompts × 4, 20 held-out problems — that the script works, not a measurement (CI runs
it). Figures depend on the machine and its load; read the ratios within one invocation. Results go to
benchmarks/results/vs_trl.{md,json} (not with --smoke).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

MAX_NEW_TOKENS = 6
MICRO_BATCH = 64


def shared_overrides(root: Path, groups: int, group_size: int, num_eval: int | None) -> list[str]:
    return [f"output.root={root}/runs", "output.progress_bar=false", f"train.groups_per_step={groups}",
            f"rollout.group_size={group_size}", f"rollout.max_new_tokens={MAX_NEW_TOKENS}", "learner.lr=2e-4",
            "learner.weight_decay=0", "learner.grad_clip=1.0", "algo.kl_coef=0", "algo.loss_agg=seq_mean_token_mean",
            f"learner.micro_batch_size={min(MICRO_BATCH, groups * group_size)}",
            *([f"task.num_eval={num_eval}"] if num_eval else [])]


def rlsys_run(overrides: list[str], eta: int, steps: int, seed: int) -> dict:
    from rlsys.config import load_config
    from rlsys.train import train

    cfg = load_config(None, [*overrides, f"output.run_name=eta{eta}", f"train.num_steps={steps}",
                             f"train.max_staleness={eta}", f"train.eval_every={steps}", f"train.seed={seed}"])
    start = time.perf_counter()
    summary, _ = train(cfg)
    total = time.perf_counter() - start
    acc = summary.eval_accuracy
    completions = steps * cfg.train.groups_per_step * cfg.rollout.group_size
    return {"trainer": f"rlsys η = {eta}", "train_s": summary.wall_s, "startup_s": total - summary.wall_s,
            "completions": completions, "completions_per_s": completions / summary.wall_s,
            "acc_before": acc[min(acc)], "acc_after": acc[max(acc)]}


def trl_run(overrides: list[str], steps: int, seed: int, root: Path) -> dict:
    from rlsys.config import load_config
    from rlsys.prepare import prepare

    cfg = load_config(None, overrides)
    prepared = prepare(cfg)  # the shared checkpoint (cached), before either start-up is timed
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rlsys.data.chat import PromptFormat
    from rlsys.evaluate import evaluate_checkpoint
    from rlsys.model_source import ensure_pad_token
    from rlsys.rewards.rules import addition_exact

    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(prepared.model_dir), prepared.model_dir)
    fmt = PromptFormat.of(tokenizer, cfg.task, prepared.model_dir)
    model = AutoModelForCausalLM.from_pretrained(prepared.model_dir, dtype=torch.float32)
    data = Dataset.from_list([{"prompt": fmt.render(p), "answer": p.answer} for p in prepared.train_prompts])

    def reward(completions: list[str], answer: list[str], **_) -> list[float]:
        return [addition_exact(c, a) for c, a in zip(completions, answer)]

    batch = cfg.train.groups_per_step * cfg.rollout.group_size
    micro = cfg.learner.micro_batch_size
    args = GRPOConfig(
        output_dir=str(root / "trl"), max_steps=steps, learning_rate=cfg.learner.lr, weight_decay=0.0,
        max_grad_norm=cfg.learner.grad_clip, lr_scheduler_type="constant", warmup_steps=0,
        per_device_train_batch_size=micro, gradient_accumulation_steps=batch // micro,
        num_generations=cfg.rollout.group_size, max_completion_length=MAX_NEW_TOKENS,
        temperature=cfg.rollout.temperature, top_k=0, top_p=1.0, beta=0.0, num_iterations=1, epsilon=0.2,
        loss_type="grpo", scale_rewards="group", use_cpu=True, bf16=False, fp16=False, report_to="none",
        save_strategy="no", logging_steps=max(1, steps // 10), seed=seed, dataloader_num_workers=0,
        disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data,
                          processing_class=tokenizer)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    out = root / "trl-model"
    trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    def held_out(model_dir: str) -> float:
        return evaluate_checkpoint(model_dir, prepared.eval_prompts, fmt, cfg.reward, cfg.rollout).accuracy

    completions = steps * batch
    return {"trainer": "TRL GRPOTrainer", "train_s": train_s, "startup_s": startup, "completions": completions,
            "completions_per_s": completions / train_s, "acc_before": held_out(prepared.model_dir),
            "acc_after": held_out(str(out))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--etas", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    num_eval = None
    if args.smoke:
        args.steps, args.groups, args.group_size, args.etas, num_eval = 3, 4, 4, [1], 20

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        overrides = shared_overrides(Path(tmp), args.groups, args.group_size, num_eval)
        rows.append(trl_run(overrides, args.steps, args.seed, Path(tmp)))
        print(rows[-1], flush=True)
        for eta in args.etas:
            rows.append(rlsys_run(overrides, eta, args.steps, args.seed))
            print(rows[-1], flush=True)

    from results_io import markdown_table, save

    trl = rows[0]
    table = markdown_table(
        f"rlsys vs TRL GRPOTrainer: {args.steps} steps of {args.groups} prompts × {args.group_size} completions, "
        f"≤ {MAX_NEW_TOKENS} new tokens, from the default warm-started checkpoint ({platform.node()}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')})",
        ["trainer", "completions/s", "vs TRL", "training s", "start-up s", "held-out accuracy before → after"],
        [[r["trainer"], f"{r['completions_per_s']:.0f}", f"{r['completions_per_s'] / trl['completions_per_s']:.2f}×",
          f"{r['train_s']:.1f}", f"{r['startup_s']:.1f}", f"{r['acc_before']:.1%} → {r['acc_after']:.1%}"]
         for r in rows])
    save("vs_trl", table, rows, smoke=args.smoke)


if __name__ == "__main__":
    main()
