"""Reference actor: the frozen initial policy in its own process, scoring whole training batches for the KL term.

``algo.reference=actor`` puts it here instead of a copy inside every learner: one copy for all data-parallel
ranks (less memory per learner, which matters when the policy is large), at the cost of one more hop before
each step. It reuses the rollout workers' engine, whose ``score`` is exactly a teacher-forced logprob pass.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoTokenizer

from rlsys.engines.generation import HFEngine
from rlsys.model_source import ensure_pad_token, local_model_dir
from rlsys.types import Group

SCORE_CHUNK = 64  # sequences per forward pass, at most ...
SCORE_LOGITS = 1 << 27  # ... and at most this many logits (sequences × positions × vocabulary; 0.5 GB of float32):
# the forward pass's logits and their log-softmax are the actor's peak memory, 1.1 GB each for 16 sequences of 356
# tokens over SmolLM2's 49 k vocabulary


class ReferenceWorker:
    def __init__(self, model_dir: str, temperature: float, num_cpus: float, num_gpus: float, packed: list = ()
                 ) -> None:
        torch.set_num_threads(max(1, int(num_cpus)))
        model_dir = local_model_dir(model_dir, list(packed))
        tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(model_dir), model_dir)
        device = "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.engine = HFEngine(model_dir, tokenizer.pad_token_id, tokenizer.eos_token_id, device)
        self.temperature = temperature
        self.vocab = self.engine.model.get_output_embeddings().weight.shape[0]

    def logprobs(self, groups: list[Group]) -> list[np.ndarray]:
        """log π_ref of every response token, one [R] array per sample, samples in group order."""
        samples = [s for g in groups for s in g.samples]
        longest = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
        per_pass = max(1, min(SCORE_CHUNK, SCORE_LOGITS // (longest * self.vocab)))
        out: list[np.ndarray] = []
        for i in range(0, len(samples), per_pass):
            chunk = samples[i: i + per_pass]
            out.extend(self.engine.score([s.prompt_ids.tolist() for s in chunk],
                                         [s.response_ids.tolist() for s in chunk], self.temperature))
        return out
