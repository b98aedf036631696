"""The generation-engine interface rollout workers speak, and its Hugging Face transformers backend.

The interface is shaped for vLLM as well (planned, GPU-only): token ids in; token ids, per-token logprobs and
finish reasons out; a weight update that sets a policy version. Text never crosses it, so tokenisation stays
with the caller and a sample's token ids are exactly what the learner trains on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from rlsys.algos import token_logprobs
from rlsys.engines.padding import pad_sequences
from rlsys.model_source import load_checkpoint_part


@dataclass(frozen=True)
class Completion:
    """One generated continuation. ``token_ids`` [R] int32 (EOS included when finish_reason == "stop");
    ``logprobs`` [R] float32 under the sampling distribution softmax(logits / temperature)."""

    token_ids: np.ndarray
    logprobs: np.ndarray
    finish_reason: str  # "stop" | "length"


class GenerationEngine(Protocol):
    version: int

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, greedy: bool = False
    ) -> list[Completion]: ...

    def score(self, prompts: list[list[int]], responses: list[list[int]], temperature: float) -> list[np.ndarray]:
        """Teacher-forced log π(response_t | prompt, response_<t), one [R] array per pair."""
        ...

    def update_weights(self, state: dict[str, np.ndarray], version: int) -> None: ...


class HFEngine:
    """Batched ``generate`` of a transformers causal LM, on CPU or CUDA, with full-vocabulary sampling."""

    def __init__(self, model_dir: str, pad_token_id: int, eos_token_id: int, device: str = "cpu",
                 key: str = "checkpoint") -> None:
        self.device = torch.device(device)
        # key: what the user called the checkpoint, for the error if it does not load (model.path, MODEL_DIR, ...)
        model = load_checkpoint_part(AutoModelForCausalLM, key, model_dir, "weights", dtype=torch.float32)
        self.model = model.to(self.device).eval()
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.version = 0

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, greedy: bool = False
    ) -> list[Completion]:
        input_ids, attention_mask = pad_sequences(prompts, self.pad_token_id, "left", self.device)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=temperature if not greedy else None,
            top_k=0 if not greedy else None,
            top_p=1.0 if not greedy else None,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        new_tokens = out.sequences[:, input_ids.shape[1]:]
        logits = torch.stack(out.logits, dim=1)  # raw logits [B, T_new, V], before temperature
        logp = token_logprobs(logits, new_tokens, temperature).cpu().numpy()
        new_tokens = new_tokens.cpu().numpy()
        completions = []
        for row, row_logp in zip(new_tokens, logp):
            eos = np.flatnonzero(row == self.eos_token_id)
            end = int(eos[0]) + 1 if len(eos) else len(row)
            completions.append(Completion(
                token_ids=row[:end].astype(np.int32),
                logprobs=row_logp[:end].astype(np.float32),
                finish_reason="stop" if len(eos) else "length",
            ))
        return completions

    @torch.no_grad()
    def score(self, prompts: list[list[int]], responses: list[list[int]], temperature: float = 1.0) -> list[np.ndarray]:
        seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
        input_ids, attention_mask = pad_sequences(seqs, self.pad_token_id, "right", self.device)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        logp = token_logprobs(logits[:, :-1], input_ids[:, 1:], temperature).cpu().numpy()
        return [logp[i, len(p) - 1: len(p) - 1 + len(r)].astype(np.float32) for i, (p, r) in
                enumerate(zip(prompts, responses))]

    def update_weights(self, state: dict[str, np.ndarray], version: int) -> None:
        self.model.load_state_dict(tensors_from_numpy(state), strict=True)
        self.version = version


def tensors_from_numpy(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Zero-copy tensors over numpy weights, e.g. read-only arrays from the object store.

    Only for ``load_state_dict``, which copies out of them; torch's warning about read-only memory is moot.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return {k: torch.from_numpy(v) for k, v in state.items()}
