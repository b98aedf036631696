"""The training engine: a Hugging Face causal LM under DeepSpeed ZeRO, one data-parallel rank per process.

One optimizer step = the rank's share of the global batch, cut into micro-batches. Every micro-batch loss is a
share of one token-mean over the *global* batch (all micro-batches, all ranks), so the update does not depend
on how the batch is split: DeepSpeed's own 1/GAS scaling is switched off and its data-parallel gradient
average (÷ world size) is undone by a × world size factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from rlsys.algos import clipped_policy_loss, entropy_from_logits, kl_estimate, token_logprobs, token_sum_over
from rlsys.config import AlgoConfig, LearnerConfig
from rlsys.engines.padding import pad_sequences


@dataclass(frozen=True)
class TrainBatch:
    """The rank's sequences as right-padded tensors. Response tokens are where ``mask`` is 1.

    ``input_ids`` [B, L]; ``attention_mask`` [B, L]; tensors below are [B, L−1], aligned with the *targets*
    ``input_ids[:, 1:]`` (position t predicts token t+1): ``mask`` (1 on response tokens),
    ``behaviour_logprobs``; ``advantages`` [B].
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    behaviour_logprobs: torch.Tensor
    advantages: torch.Tensor

    @staticmethod
    def build(
        prompts: list[np.ndarray], responses: list[np.ndarray], behaviour: list[np.ndarray],
        advantages: list[float], pad_id: int,
    ) -> TrainBatch:
        seqs = [np.concatenate([p, r]).tolist() for p, r in zip(prompts, responses)]
        ids, attn = pad_sequences(seqs, pad_id, "right")
        mask = torch.zeros(ids.shape[0], ids.shape[1] - 1)
        old = torch.zeros_like(mask)
        for i, (p, r, lp) in enumerate(zip(prompts, responses, behaviour)):
            cols = slice(len(p) - 1, len(p) - 1 + len(r))
            mask[i, cols] = 1.0
            old[i, cols] = torch.tensor(lp, dtype=torch.float32)
        return TrainBatch(ids, attn, mask, old, torch.as_tensor(advantages, dtype=torch.float32))

    def slice(self, rows: slice) -> TrainBatch:
        return TrainBatch(self.input_ids[rows], self.attention_mask[rows], self.mask[rows],
                          self.behaviour_logprobs[rows], self.advantages[rows])

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def deepspeed_config(cfg: LearnerConfig, micro_batches: int, world_size: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": micro_batches,
        "train_batch_size": cfg.micro_batch_size * micro_batches * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        # The optimizer is torch's AdamW (no fused-op build needed on CPU); ZeRO shards its state all the same.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class DeepSpeedPolicy:
    """A policy being trained, plus the optional frozen reference for the KL term.

    Construct after ``torch.distributed`` is initialised (see :func:`rlsys.actors.learner.init_distributed`).
    """

    def __init__(
        self, model_dir: str, learner: LearnerConfig, algo: AlgoConfig, micro_batches: int, world_size: int,
        device: str = "cpu",
    ) -> None:
        import deepspeed  # heavy import, only in learner processes

        self.algo = algo
        self.device = torch.device(device)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=learner.lr, weight_decay=learner.weight_decay)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(learner, micro_batches, world_size)
        )
        self.world_size = world_size
        self.micro_batches = micro_batches
        self.micro_batch_size = learner.micro_batch_size
        self.reference = None
        if algo.kl_coef > 0:  # skipped entirely at kl_coef = 0: no memory, no forward passes
            self.reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(self.device)
            self.reference.eval().requires_grad_(False)

    def train_step(self, batch: TrainBatch, global_num_tokens: int) -> dict[str, float]:
        """One optimizer step over ``batch`` (this rank's share); ``global_num_tokens`` counts all ranks' tokens."""
        self.engine.train()
        sums = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0}
        chunks = [slice(i, i + self.micro_batch_size) for i in range(0, len(batch), self.micro_batch_size)]
        assert len(chunks) == self.micro_batches, "every rank must run the same number of micro-batches"
        for rows in chunks:
            mb = batch.slice(rows)
            parts = self._micro_batch_loss(mb, global_num_tokens)
            self.engine.backward(parts["loss"] * self.world_size, scale_wrt_gas=False)
            self.engine.step()  # a no-op until the last micro-batch (DeepSpeed counts them)
            for k in sums:
                sums[k] += float(parts[k].detach())
        grad_norm = self.engine.get_global_grad_norm()
        # Each sum is this rank's share of a global token-mean; the controller adds the ranks' shares.
        return {**sums, "grad_norm": float(grad_norm) if grad_norm is not None else float("nan")}

    def _micro_batch_loss(self, mb: TrainBatch, n_tokens: int) -> dict[str, torch.Tensor]:
        ids = mb.input_ids.to(self.device)
        logits = self.engine(input_ids=ids, attention_mask=mb.attention_mask.to(self.device)).logits[:, :-1]
        targets = ids[:, 1:]
        mask = mb.mask.to(self.device)
        logp = token_logprobs(logits, targets)
        pg, clipped = clipped_policy_loss(logp, mb.behaviour_logprobs.to(self.device), mb.advantages.to(self.device),
                                          self.algo.clip_eps)
        per_token = pg
        kl = torch.zeros_like(pg)
        if self.reference is not None:
            with torch.no_grad():
                ref_logits = self.reference(input_ids=ids, attention_mask=mb.attention_mask.to(self.device)).logits
                ref_logp = token_logprobs(ref_logits[:, :-1], targets)
            kl = kl_estimate(logp, ref_logp, self.algo.kl_estimator)
            per_token = pg + self.algo.kl_coef * kl
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach())
        return {
            "loss": token_sum_over(per_token, mask, n_tokens),
            "pg_loss": token_sum_over(pg.detach(), mask, n_tokens),
            "kl": token_sum_over(kl.detach(), mask, n_tokens),
            "clip_frac": token_sum_over(clipped, mask, n_tokens),
            "entropy": token_sum_over(entropy, mask, n_tokens),
        }

    @torch.no_grad()
    def logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """log π(target) at every position, [B, L−1] (for checks against the rollout engine)."""
        self.engine.eval()
        logits = self.engine(input_ids=batch.input_ids.to(self.device),
                             attention_mask=batch.attention_mask.to(self.device)).logits
        return token_logprobs(logits[:, :-1], batch.input_ids[:, 1:].to(self.device)).cpu()

    def full_state_dict(self, all_ranks: bool = False) -> dict[str, np.ndarray] | None:
        """The full float32 weights as numpy arrays on rank 0 (on every rank if ``all_ranks``; None elsewhere).

        A collective under ZeRO-3 (parameters are sharded and gathered here): every rank must call it."""
        import deepspeed

        module = self.engine.module
        stage3 = self.engine.zero_optimization_stage() == 3
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None, enabled=stage3):
            if self.engine.global_rank != 0 and not all_ranks:
                return None
            return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in module.state_dict().items()}
