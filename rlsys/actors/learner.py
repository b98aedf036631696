"""Learner actor: one data-parallel rank of the DeepSpeed policy. It exposes verbs; the controller owns the schedule.

Every rank receives the whole batch of groups (token ids are small) and trains its share of whole groups (see
:func:`assign_groups`), so group baselines and the loss normalisers (trainable samples and tokens per mini-batch)
are computed identically everywhere without a collective. Only whole-batch statistics of model outputs —
REINFORCE++'s and GAE's normalisation, advantage scaling — take a small all-reduce over the ranks.

A training step: plan the batch (weights, shaped rewards) → prepare (reference / proximal / value forward passes)
→ advantages → epochs × minibatches optimizer updates → version + 1.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from transformers import AutoTokenizer

from rlsys.algos import (
    OUTCOME_ESTIMATORS,
    bound_advantages,
    gae_advantages,
    group_advantages,
    group_centered_advantages,
    kl_estimate,
    masked_whiten,
    outcome_token_rewards,
    overlong_penalty,
    reinforce_pp_advantages,
    rloo_advantages,
    sample_loss_weights,
    untrained_reasons,
    zero_variance_groups,
)
from rlsys.config import AlgoConfig, LearnerConfig
from rlsys.engines.training import WEIGHT_BUCKET_BYTES, DeepSpeedPolicy, TrainBatch
from rlsys.model_source import ensure_pad_token, local_model_dir
from rlsys.types import Group


@dataclass(frozen=True)
class StepResult:
    version: int  # the policy version after this step
    metrics: dict[str, float]  # this rank's shares of global token-means (see combine_rank_metrics)
    seconds: float


def combine_rank_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """One step's metrics from every rank's: shares of global means are summed, ``*_max`` / ``*_min`` combined
    by max / min; ``grad_norm`` (already global) and ``batch/*`` counts (computed from the whole batch on every
    rank) are taken from rank 0."""
    out = {}
    for key in per_rank[0]:
        values = [m[key] for m in per_rank if key in m]
        if key.endswith("_max"):
            out[key] = max(values)
        elif key.endswith("_min"):
            out[key] = min(values)
        elif key == "grad_norm" or key.startswith("batch/"):
            out[key] = values[0]
        else:
            out[key] = sum(values)
    return out


@dataclass(frozen=True)
class RankBatch:
    """This rank's share of a training batch, and what the step knows about the whole batch."""

    batch: TrainBatch
    rewards: torch.Tensor  # [G_rank, n] shaped rewards of this rank's groups, NaN where the reward failed
    prompts: list[np.ndarray]  # this rank's prompt ids, in row order (to place per-sample arrays)
    sample_index: np.ndarray  # each row's position in the whole batch (samples in group order)
    counts: dict[str, float]  # whole-batch counts, for metrics


def assign_groups(num_groups: int, world_size: int, minibatches: int) -> tuple[np.ndarray, np.ndarray]:
    """(rank, mini-batch) of every group of a step. Mini-batch m is the m-th contiguous slice of the groups — the
    same groups whatever the number of ranks — and rank r trains the r-th contiguous part of every mini-batch.
    Needs ``num_groups`` divisible by ``world_size × minibatches`` (checked in config validation)."""
    per_minibatch = num_groups // minibatches
    per_cell = per_minibatch // world_size
    g = np.arange(num_groups)
    return (g % per_minibatch) // per_cell, g // per_minibatch


def rank_batch(groups: list[Group], rank: int, world_size: int, pad_id: int, algo: AlgoConfig,
               max_new_tokens: int) -> RankBatch:
    """This rank's :class:`TrainBatch`, with loss weights computed over the *whole* batch.

    Every rank receives every group, so the counts behind the aggregation weights (trainable samples and tokens
    per optimizer mini-batch) are the same everywhere without a collective. Which groups a rank trains, and in
    which mini-batch, is :func:`assign_groups`. A sample does not train (weight 0, but keeps its row: every rank
    must run the same micro-batches) if its reward failed, if it was truncated and ``overlong_filter`` is on, or
    if its group has zero reward variance and ``filter_zero_variance`` is on.
    """
    samples = [s for g in groups for s in g.samples]
    n = len(groups[0].samples)
    raw = np.stack([g.rewards for g in groups]).astype(np.float64)  # [G, n]
    lengths = np.array([len(s.response_ids) for s in samples])  # the generation budget's count (overlong shaping)
    policy_tokens = np.array([s.policy_tokens for s in samples])  # what the loss normalises by
    truncated = np.array([s.finish_reason == "length" for s in samples])
    zero_var = zero_variance_groups(torch.as_tensor(raw)).numpy()
    trainable = np.array([not why for why in untrained_reasons(raw, truncated, algo.overlong_filter,
                                                                algo.filter_zero_variance)])
    shaped = raw + overlong_penalty(lengths, max_new_tokens, algo.overlong_buffer).reshape(raw.shape)
    group_rank, group_minibatch = assign_groups(len(groups), world_size, algo.minibatches)
    minibatch = np.repeat(group_minibatch, n)
    loss_weight = sample_loss_weights(policy_tokens, trainable, algo.loss_agg, max_new_tokens, minibatch)
    token_weight = sample_loss_weights(policy_tokens, trainable, "token_mean", max_new_tokens, minibatch)
    group_rows = np.flatnonzero(group_rank == rank)
    rows = np.flatnonzero(np.repeat(group_rank, n) == rank)
    mine = [samples[i] for i in rows]
    prompts = [s.prompt_ids for s in mine]
    batch = TrainBatch.build(
        prompts=prompts, responses=[s.response_ids for s in mine], behaviour=[s.behaviour_logprobs for s in mine],
        trainable=trainable[rows], loss_weight=loss_weight[rows], token_weight=token_weight[rows],
        minibatch=minibatch[rows], pad_id=pad_id, loss_masks=[s.loss_mask for s in mine],
    )
    counts = {
        "batch/trainable_frac": float(trainable.mean()),
        "batch/zero_variance_group_frac": float(zero_var.mean()),
        "batch/truncated_frac": float(truncated.mean()),
        "batch/overlong_penalty_mean": float(np.mean(shaped - raw)) if algo.overlong_buffer else 0.0,
    }
    return RankBatch(batch, torch.as_tensor(shaped[group_rows], dtype=torch.float32), prompts, rows, counts)


def compute_advantages(algo: AlgoConfig, rewards: torch.Tensor, batch: TrainBatch, reduce_sum, reduce_max
                       ) -> TrainBatch:
    """Advantages [B, T] (and GAE's returns) for a prepared rank batch.

    KL in the reward (``kl_in=reward``): outcome estimators see r_i − β Σ_t k(π_behaviour, π_ref)_t per response;
    GAE sees −β k_t on every token plus r_i on the last. Cross-rank statistics go through ``reduce_sum`` /
    ``reduce_max``, so the result does not depend on the number of learners.
    """
    mask = batch.mask
    kl = None
    if algo.kl_coef > 0 and algo.kl_in == "reward":
        kl = kl_estimate(batch.behaviour_logprobs, batch.ref_logprobs, algo.kl_kind) * mask
    returns = None
    if algo.advantage in OUTCOME_ESTIMATORS:
        r = rewards if kl is None else rewards - algo.kl_coef * kl.sum(-1).reshape(rewards.shape)
        if algo.advantage in ("reinforce_pp", "reinforce_pp_baseline"):
            adv = reinforce_pp_advantages(r, mask, algo.advantage == "reinforce_pp_baseline", algo.adv_eps, reduce_sum)
        else:
            per_sample = {"grpo": lambda x: group_advantages(x, algo.adv_eps), "dr_grpo": group_centered_advantages,
                          "rloo": rloo_advantages}[algo.advantage](r)
            adv = per_sample.reshape(-1, 1) * mask
    else:  # gae
        token_rewards = outcome_token_rewards(rewards.reshape(-1), mask)
        if kl is not None:
            token_rewards = token_rewards - algo.kl_coef * kl
        raw_adv, returns = gae_advantages(token_rewards, batch.old_values, mask, algo.gamma, algo.lam)
        adv = masked_whiten(raw_adv, mask, algo.adv_eps, reduce_sum)
    adv = bound_advantages(adv, mask, algo.adv_bound, algo.adv_bound_mode, reduce_max) * mask
    return dataclasses.replace(batch, advantages=adv, returns=returns)


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, backend: str) -> None:
    import deepspeed

    os.environ.update({
        "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "RANK": str(rank),
        "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
    })
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


class Learner:
    """One data-parallel rank. ``temperature`` and ``max_new_tokens`` are the rollout's: logprobs are taken under
    the same sampling distribution the engine used, and the constant normaliser / overlong penalty need L_max."""

    def __init__(self, rank: int, world_size: int, model_dir: str, learner: LearnerConfig, algo: AlgoConfig,
                 samples_per_rank: int, temperature: float = 1.0, max_new_tokens: int = 16, packed: list = (),
                 reference: tuple[str, list] | None = None, critic: tuple[str, list] | None = None) -> None:
        """``model_dir``: the initial policy (``packed``: its files, for a node that cannot read the path: see
        :func:`rlsys.model_source.pack`); ``reference`` / ``critic``: (path, packed) of the checkpoints they start
        from when that is not the initial policy (``model.reference_path`` / ``model.critic_path``)."""
        torch.set_num_threads(max(1, int(learner.num_cpus)))
        model_dir = local_model_dir(model_dir, list(packed))
        self.reference_dir = local_model_dir(reference[0], list(reference[1])) if reference else None
        self.critic_dir = local_model_dir(critic[0], list(critic[1])) if critic else None
        self.rank, self.world_size = rank, world_size
        self.model_dir, self.cfg, self.algo = model_dir, learner, algo
        self.samples_per_rank, self.temperature, self.max_new_tokens = samples_per_rank, temperature, max_new_tokens
        self.use_cuda = learner.num_gpus > 0 and torch.cuda.is_available()
        self.policy: DeepSpeedPolicy | None = None
        self.version = 0
        self.pad_id = ensure_pad_token(AutoTokenizer.from_pretrained(model_dir), model_dir).pad_token_id

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the process group."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the process group (blocks until every rank has joined) and build the DeepSpeed engine(s)."""
        if not self.use_cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        init_distributed(self.rank, self.world_size, master_addr, master_port, "nccl" if self.use_cuda else "gloo")
        self.policy = DeepSpeedPolicy(self.model_dir, self.cfg, self.algo, self.samples_per_rank, self.world_size,
                                      self.temperature, device="cuda" if self.use_cuda else "cpu",
                                      reference_dir=self.reference_dir, critic_dir=self.critic_dir)

    def train_step(self, groups: list[Group], ref_logprobs: list[np.ndarray] | None = None) -> StepResult:
        """One training step on ``groups`` (the whole batch; this rank trains its share).

        ``ref_logprobs``: the reference actor's log π_ref for every sample of the batch in group order, when the
        reference runs as its own actor (``algo.reference=actor``); otherwise the learner's own copy scores them.
        """
        start = time.perf_counter()
        planned = rank_batch(groups, self.rank, self.world_size, self.pad_id, self.algo, self.max_new_tokens)
        batch = planned.batch
        if ref_logprobs is not None:
            mine = [ref_logprobs[i] for i in planned.sample_index]
            batch = dataclasses.replace(batch, ref_logprobs=batch.scatter(planned.prompts, mine))
        elif self.algo.kl_coef > 0 and self.policy.reference is None:
            raise ValueError("algo.reference=actor: train_step needs the reference actor's logprobs (ref_logprobs)")
        updates = self.algo.epochs * self.algo.minibatches
        batch = self.policy.prepare(batch, need_ref=self.policy.reference is not None, need_prox=updates > 1)
        batch = compute_advantages(self.algo, planned.rewards, batch, self._reduce("sum"), self._reduce("max"))
        metrics = self.policy.train_step(batch)
        self.version += 1
        return StepResult(self.version, {**metrics, **planned.counts}, time.perf_counter() - start)

    def _reduce(self, op: str):
        """A function that reduces a small tensor over the data-parallel ranks (identity on one rank)."""
        if self.world_size == 1:
            return lambda t: t
        import torch.distributed as dist

        device = "cuda" if self.use_cuda else "cpu"  # NCCL reduces only CUDA tensors, gloo only CPU ones

        def reduce(t: torch.Tensor) -> torch.Tensor:
            buf = t.detach().to(device, torch.float64).clone()
            dist.all_reduce(buf, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
            return buf.to(t.device, t.dtype)

        return reduce

    def save_checkpoint(self, directory: str) -> int:
        """This rank's part of a checkpoint in ``directory`` (:mod:`rlsys.checkpoint`): its DeepSpeed state, and on
        rank 0 the Hugging Face export of the policy (``policy/``). Every rank must be called (a collective); calls
        run in order, so the checkpoint holds the state after every train_step sent before it. Returns the
        version saved."""
        from rlsys.checkpoint import export_policy

        state = self.policy.save_checkpoint(directory, self.version)
        if state is not None:
            export_policy(state, self.model_dir, Path(directory) / "policy")
        return self.version

    def load_checkpoint(self, directory: str) -> int:
        """Continue from this rank's part of the checkpoint in ``directory``; returns its version."""
        self.version = self.policy.load_checkpoint(directory)
        return self.version

    def get_weights(self, bucket_bytes: int = WEIGHT_BUCKET_BYTES) -> dict[str, np.ndarray] | None:
        """Full weights as numpy on rank 0, None on the others (every rank must be called under ZeRO-3, where they
        are gathered ``bucket_bytes`` at a time: :meth:`rlsys.engines.training.DeepSpeedPolicy.full_state_dict`)."""
        return self.policy.full_state_dict(bucket_bytes=bucket_bytes)

    def open_weight_transfer(self, rollouts: list, tensor_parallel_size: int, address: str, port: int) -> None:
        """Every rank, at once: form the NCCL group of learner rank 0 and the vLLM ``rollouts`` for
        ``rollout.weight_transfer=nccl`` (:class:`rlsys.weight_transfer.NCCLWeightSender`; GPU only, untested)."""
        from rlsys.weight_transfer import NCCLWeightSender

        self.sender = NCCLWeightSender(self.policy, self.rank, rollouts, [tensor_parallel_size] * len(rollouts),
                                       address, port)

    def broadcast_weights(self, version: int) -> None:
        """Every rank, in step: the NCCL sync of the current weights as ``version`` (after
        :meth:`open_weight_transfer`); returns once every rollout worker holds them."""
        self.sender.send(version)

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[np.ndarray]:
        """Teacher-forced log π(response) under the learner's current weights (for checks against rollouts)."""
        n = len(prompt_ids)
        batch = TrainBatch.build([np.asarray(p) for p in prompt_ids], [np.asarray(r) for r in response_ids],
                                 [np.zeros(len(r)) for r in response_ids], np.ones(n, bool), np.zeros(n), np.zeros(n),
                                 np.zeros(n, int), self.pad_id)
        logp = self.policy.logprobs(batch)
        return [logp[i][batch.mask[i].bool()].numpy() for i in range(len(prompt_ids))]

    def parameter_vector(self) -> np.ndarray:
        """This rank's view of all parameters, flattened (gathered under ZeRO-3; every rank must be called)."""
        state = self.policy.full_state_dict(all_ranks=True)
        return np.concatenate([state[k].ravel() for k in sorted(state)])
