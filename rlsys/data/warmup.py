"""Supervised warm-up: a few steps of next-token training on (prompt, answer) pairs.

RL needs a policy whose samples are sometimes right; a randomly initialised model never is. The warm-up is
deliberately short, so the policy starts weak (and RL has something to show) but not hopeless.
"""

from __future__ import annotations

import random

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlsys.config import WarmupConfig
from rlsys.engines.padding import pad_sequences
from rlsys.types import Prompt


def supervised_warmup(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], cfg: WarmupConfig, seed: int
) -> list[float]:
    """Train ``model`` in place on ``prompt + answer + EOS`` with the loss on the answer tokens; returns losses.

    ``prompts`` are the usable training rows (:func:`rlsys.prepare.prepare` has left out the bad ones)."""
    if cfg.steps and not prompts:
        raise ValueError("the supervised warm-up has no (prompt, answer) pairs to train on: the training set is empty")
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    encoded = [(tokenizer(p.text)["input_ids"], tokenizer(p.answer)["input_ids"] + [tokenizer.eos_token_id])
               for p in prompts]
    losses = []
    model.train()
    for _ in range(cfg.steps):
        batch = rng.sample(encoded, min(cfg.batch_size, len(encoded)))
        ids, attn = pad_sequences([p + a for p, a in batch], tokenizer.pad_token_id, "right")
        labels = torch.full_like(ids, -100)
        for i, (p, a) in enumerate(batch):
            labels[i, len(p): len(p) + len(a)] = ids[i, len(p): len(p) + len(a)]
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses
