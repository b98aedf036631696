"""The generation-engine interface rollout workers speak, and its Hugging Face transformers backend.

The interface is shared with the vLLM backend (:mod:`rlsys.engines.vllm_engine`): token ids in; token ids,
per-token logprobs and finish reasons out; a weight update that sets a policy version. Text never crosses it, so
tokenisation stays with the caller and a sample's token ids are exactly what the learner trains on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList

from rlsys.algos import token_logprobs
from rlsys.engines.padding import pad_sequences
from rlsys.model_source import end_token_ids, load_checkpoint_part


@dataclass(frozen=True)
class Completion:
    """One generated continuation. ``token_ids`` [R] int32, ending with the tokens that stopped it when
    finish_reason == "stop" (an end token, or the tokens that completed a stop string: both are the policy's and are
    trained on); ``logprobs`` [R] float32 under the sampling distribution softmax(logits / temperature)."""

    token_ids: np.ndarray
    logprobs: np.ndarray
    finish_reason: str  # "stop" | "length"
    stop_reason: str = ""  # what stopped it: the end token's text (e.g. "<|im_end|>") or the stop string
    # [R] int32: the policy version whose weights sampled each token, where weights changed during the request
    # (in-flight weight updates, rollout.inflight_weight_updates); None: every token at the engine's version
    token_versions: np.ndarray | None = None


class GenerationEngine(Protocol):
    """Implemented by :class:`HFEngine` and :class:`rlsys.engines.vllm_engine.VLLMEngine`."""

    version: int
    inflight_updates: bool  # generate() takes between_steps: weights can change while requests run

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, greedy: bool = False,
        seed: int | None = None, between_steps: Callable[[], None] | None = None,
    ) -> list[Completion]:
        """One Completion per prompt. A request with a ``seed`` can be replayed: the same prompts, seed and weights
        give the same tokens. ``between_steps``: called between decoding steps, where it may update the weights
        (:meth:`update_weights`) of the requests still running; only engines with :attr:`inflight_updates` take
        it."""
        ...

    def score(self, prompts: list[list[int]], responses: list[list[int]], temperature: float) -> list[np.ndarray]:
        """Teacher-forced log π(response_t | prompt, response_<t), one [R] array per pair."""
        ...

    def update_weights(self, state: dict[str, np.ndarray], version: int) -> None: ...


class HFEngine:
    """Batched ``generate`` of a transformers causal LM, on CPU or CUDA, with full-vocabulary sampling.

    A response ends at the first of the checkpoint's end tokens (:func:`rlsys.model_source.end_token_ids`: the
    tokenizer's EOS and those of ``generation_config.json``) or at the token that completes one of ``stop`` (stop
    strings, matched on the decoded text; they need ``tokenizer``)."""

    def __init__(self, model_dir: str, pad_token_id: int, eos_token_id: int | None, device: str = "cpu",
                 key: str = "checkpoint", stop: tuple[str, ...] = (), tokenizer=None) -> None:
        self.device = torch.device(device)
        # key: what the user called the checkpoint, for the error if it does not load (model.path, MODEL_DIR, ...)
        model = load_checkpoint_part(AutoModelForCausalLM, key, model_dir, "weights", dtype=torch.float32)
        self.model = model.to(self.device).eval()
        self.pad_token_id = pad_token_id
        self.end_ids = end_token_ids(eos_token_id, self.model.generation_config)
        if stop and tokenizer is None:
            raise ValueError("stop strings need the tokenizer to match them on the decoded text")
        self.stop, self.tokenizer = tuple(stop), tokenizer
        self.version = 0

    inflight_updates = False  # transformers' generate runs to the end of the batch

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, greedy: bool = False,
        seed: int | None = None,
    ) -> list[Completion]:
        """``seed``: torch's generator is seeded with it first, so the same request (same prompts, in the same order
        and batch) gives the same tokens again; None continues the process's generator."""
        if seed is not None and not greedy:
            torch.manual_seed(seed)
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
            eos_token_id=self.end_ids or None,
            stopping_criteria=StoppingCriteriaList([StopOnText(self.stop, self.tokenizer, input_ids.shape[1])])
            if self.stop else None,
            return_dict_in_generate=True,
            output_logits=True,
        )
        new_tokens = out.sequences[:, input_ids.shape[1]:]
        logits = torch.stack(out.logits, dim=1)  # raw logits [B, T_new, V], before temperature
        logp = token_logprobs(logits, new_tokens, temperature).cpu().numpy()
        completions = []
        for row, row_logp in zip(new_tokens.cpu().numpy(), logp):
            end, reason = stop_position(row, self.end_ids, self.stop, self.tokenizer)
            completions.append(Completion(
                token_ids=row[:end].astype(np.int32),
                logprobs=row_logp[:end].astype(np.float32),
                finish_reason="stop" if reason else "length",
                stop_reason=reason,
            ))
        return completions

    def _stop(self, row: np.ndarray) -> tuple[int, str]:
        """(length of the response, what stopped it or "") for one generated row: :func:`stop_position`."""
        return stop_position(row, self.end_ids, self.stop, self.tokenizer)

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


class StopOnText(StoppingCriteria):
    """Stops a row once the text of its generated tokens holds one of ``stop``: the decoding of the last few
    tokens (as many as the longest stop string has characters, and one more: a token is at least one character) is
    searched, so each check costs a short decode per row. transformers' own ``stop_strings`` needs a tokenizer whose
    vocabulary it can take apart (it fails on a word-level one such as the tiny default's); this needs only
    ``decode``. Where the response ends exactly is :func:`stop_position`'s."""

    def __init__(self, stop: tuple[str, ...], tokenizer, prompt_length: int) -> None:
        self.stop, self.tokenizer, self.start = stop, tokenizer, prompt_length
        self.window = max(len(s) for s in stop) + 1

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        tail = input_ids[:, max(self.start, input_ids.shape[1] - self.window):]
        texts = self.tokenizer.batch_decode(tail, skip_special_tokens=False)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], dtype=torch.bool,
                            device=input_ids.device)


def tensors_from_numpy(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Zero-copy tensors over numpy weights, e.g. read-only arrays from the object store.

    Only for ``load_state_dict``, which copies out of them; torch's warning about read-only memory is moot.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return {k: torch.from_numpy(v) for k, v in state.items()}


def stop_position(row: np.ndarray, end_ids: list[int], stop: tuple[str, ...] = (), tokenizer=None) -> tuple[int, str]:
    """(length of the response, what stopped it or "") for one generated row [T] of token ids: the response ends at
    its first end token (kept), or at the token that completes one of the ``stop`` strings on ``tokenizer``'s
    decoding (kept), whichever comes first; "" and len(row) when neither occurs. Whatever an engine generated after
    the stop (HF's pad ids — SmolLM2's pad is its <|im_end|> —, or the tokens vLLM sampled past a stop string) is not
    the policy's response. The reason is the end token's text (e.g. "<|im_end|>", or "token 2" without a tokenizer)
    or the stop string."""
    ends = np.flatnonzero(np.isin(row, end_ids)) if end_ids else []
    end = int(ends[0]) + 1 if len(ends) else len(row)
    reason = _token_text(tokenizer, int(row[end - 1])) if len(ends) else ""
    if stop:
        def decode(n: int) -> str:
            return tokenizer.decode(row[:n], skip_special_tokens=False)

        if any(s in decode(end) for s in stop):
            # the shortest prefix whose text holds a stop string: text only grows as tokens are added
            lo, hi = 1, end
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if any(s in decode(mid) for s in stop) else (mid + 1, hi)
            text = decode(lo)
            end, reason = lo, min(stop, key=lambda s: (text.find(s) < 0, text.find(s)))
    return end, reason


def _token_text(tokenizer, token_id: int) -> str:
    if tokenizer is not None:
        return tokenizer.convert_ids_to_tokens(token_id)
    return f"token {token_id}"
