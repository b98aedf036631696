"""The tiny models of the embedded default: a Llama-architecture model built from a config, no download — a causal
LM (the policy), or the same trunk under a one-output head (a reward model)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerBase

from rlsys.config import ModelConfig


def build_tiny_llama(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, reward_head: bool = False
                     ) -> LlamaForCausalLM | LlamaForSequenceClassification:
    """A randomly initialised Llama sized by ``cfg`` with the tokenizer's vocabulary and special ids; with
    ``reward_head``, a sequence classifier with one output (a reward model) instead of a causal LM."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **({"num_labels": 1} if reward_head else {}),
    )
    torch.manual_seed(cfg.seed)
    return (LlamaForSequenceClassification if reward_head else LlamaForCausalLM)(config)
