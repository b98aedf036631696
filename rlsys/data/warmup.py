"""Supervised warm-up: a few steps of next-token training on (prompt, answer) pairs.

RL needs a policy whose samples are sometimes right; a randomly initialised model never is. The warm-up is
deliberately short, so the policy starts weak (and RL has something to show) but not hopeless. Its accuracy curve
is steep, and where a fixed number of steps lands on it depends on the CPU's float results and the seed, so the
warm-up can instead stop at a held-out accuracy (``warmup.target_accuracy``, checked every ``check_every`` steps).

For a multi-turn task the environment's worked trajectories replace the bare answers (:func:`demonstration_ids`):
the warm-up then teaches the format of a tool call and the copying of a result, the loss on the actions only.
"""

from __future__ import annotations

import random

import torch
from transformers import PreTrainedModel

from rlsys.config import WarmupConfig
from rlsys.data.chat import PromptFormat
from rlsys.engines.padding import pad_sequences
from rlsys.model_source import end_token_ids
from rlsys.types import Prompt


@torch.no_grad()
def greedy_exact_accuracy(model: PreTrainedModel, fmt: PromptFormat, prompts: list[Prompt], max_new_tokens: int,
                          batch_size: int = 256) -> float:
    """Fraction of ``prompts`` (encoded by ``fmt``) whose greedy completion (special tokens dropped, whitespace
    stripped) is exactly the answer: what the warm-up teaches, without a reward function. A completion ends at any
    of the checkpoint's end tokens (:func:`rlsys.model_source.end_token_ids`)."""
    tokenizer = fmt.tokenizer
    ends = end_token_ids(tokenizer.eos_token_id, model.generation_config)
    was_training = model.training
    model.eval()
    right = 0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, attn = pad_sequences([fmt.encode(p) for p in chunk], tokenizer.pad_token_id, "left")
        out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=ends or None)
        texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        right += sum(t.strip() == p.answer.strip() for t, p in zip(texts, chunk))
    model.train(was_training)
    return right / max(1, len(prompts))


def demonstration_ids(fmt: PromptFormat, prompt: Prompt, turns: list[str], role: str = "tool"
                      ) -> tuple[list[int], list[int]]:
    """A worked trajectory as token ids: (response ids [R], loss mask [R]) — its actions (mask 1; the last one
    followed by the EOS) and, between them, its observations as the agent loop renders them
    (:meth:`PromptFormat.observation_ids`, mask 0). ``turns``: actions and observations alternating, ending with an
    action (:mod:`rlsys.envs.base`)."""
    if len(turns) % 2 != 1:
        raise ValueError(f"a demonstration alternates actions and observations and ends with an action; got "
                         f"{len(turns)} turns")
    tokenizer, ids, mask = fmt.tokenizer, [], []
    for i, text in enumerate(turns):
        if i % 2:
            part = fmt.observation_ids(prompt, text, role)
        else:
            part = tokenizer(text, add_special_tokens=False)["input_ids"]
            part += [tokenizer.eos_token_id] if i == len(turns) - 1 else []
        ids += part
        mask += [1 - i % 2] * len(part)
    return ids, mask


def supervised_warmup(
    model: PreTrainedModel, fmt: PromptFormat, prompts: list[Prompt], cfg: WarmupConfig, seed: int,
    eval_prompts: list[Prompt] | None = None, max_new_tokens: int = 0, demonstrations: list[list[str]] | None = None,
    observation_role: str = "tool",
) -> tuple[list[float], list[tuple[int, float]]]:
    """Train ``model`` in place on ``prompt + answer + EOS`` (the prompt encoded by ``fmt``, as rollout workers
    encode it) with the loss on the answer tokens, for ``cfg.steps``
    steps, or with ``cfg.target_accuracy`` > 0 until the held-out greedy accuracy on ``eval_prompts``
    (:func:`greedy_exact_accuracy`, ``max_new_tokens`` each) reaches it, checked every ``cfg.check_every`` steps
    (``cfg.steps`` is then the cap). Returns the losses and the checks as (steps done, accuracy).

    ``prompts`` are the usable training rows (:func:`rlsys.prepare.prepare` has left out the bad ones);
    ``demonstrations``: one worked trajectory per prompt (:func:`demonstration_ids`) to train on instead of its
    answer."""
    target = cfg.target_accuracy > 0
    if target and not (eval_prompts and max_new_tokens > 0):
        raise ValueError("warmup.target_accuracy needs the held-out prompts and rollout.max_new_tokens")
    if cfg.steps and not prompts:
        raise ValueError("the supervised warm-up has no (prompt, answer) pairs to train on: the training set is empty")
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    tokenizer = fmt.tokenizer
    # The answer continues the prompt: no special tokens of its own (a BOS mid-sequence), then the EOS that ends it.
    turns = demonstrations or [[p.answer] for p in prompts]
    encoded = [(fmt.encode(p), *demonstration_ids(fmt, p, t, observation_role)) for p, t in zip(prompts, turns)]
    losses: list[float] = []
    checks: list[tuple[int, float]] = []
    model.train()
    for step in range(cfg.steps):
        if target and step % cfg.check_every == 0 and step > 0:
            checks.append((step, greedy_exact_accuracy(model, fmt, eval_prompts, max_new_tokens)))
            if checks[-1][1] >= cfg.target_accuracy:
                break
        batch = rng.sample(encoded, min(cfg.batch_size, len(encoded)))
        ids, attn = pad_sequences([p + a for p, a, _ in batch], tokenizer.pad_token_id, "right")
        labels = torch.full_like(ids, -100)
        for i, (p, a, mask) in enumerate(batch):
            trained = torch.tensor(mask, dtype=torch.bool)
            labels[i, len(p): len(p) + len(a)] = torch.where(trained, ids[i, len(p): len(p) + len(a)], -100)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses, checks
