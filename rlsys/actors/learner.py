"""Learner actor: one data-parallel rank of the DeepSpeed policy. It exposes verbs; the controller owns the schedule.

Every rank receives the whole batch of groups (token ids are small) and trains on its contiguous share, so the
advantages and the global token count — the token-mean's denominator — are computed identically everywhere
without an extra collective.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch
from transformers import AutoTokenizer

from rlsys.algos import group_advantages
from rlsys.config import AlgoConfig, LearnerConfig
from rlsys.engines.training import DeepSpeedPolicy, TrainBatch
from rlsys.model_source import local_model_dir
from rlsys.types import Group


@dataclass(frozen=True)
class StepResult:
    version: int  # the policy version after this step
    metrics: dict[str, float]  # this rank's shares of global token-means (the controller sums ranks)
    seconds: float


def rank_batch(groups: list[Group], rank: int, world_size: int, pad_id: int, adv_eps: float) -> tuple[TrainBatch, int]:
    """This rank's :class:`TrainBatch` and the number of trainable response tokens in the whole batch.

    A sample whose reward failed (NaN) gets Â = 0 and keeps its row (every rank must run the same micro-batches)
    but contributes no tokens to the loss.
    """
    rewards = torch.tensor(np.stack([g.rewards for g in groups]), dtype=torch.float32)  # [G, n]
    adv = group_advantages(rewards, adv_eps)
    rewarded = ~torch.isnan(rewards)
    lengths = torch.tensor([[len(s.response_ids) for s in g.samples] for g in groups])
    global_tokens = int(lengths[rewarded].sum())
    per_rank = len(groups) // world_size
    picked = []  # (sample, advantage, rewarded) for this rank's contiguous share of the groups
    for i in range(rank * per_rank, (rank + 1) * per_rank):
        for j, sample in enumerate(groups[i].samples):
            picked.append((sample, float(adv[i, j]), bool(rewarded[i, j])))
    batch = TrainBatch.build(
        prompts=[s.prompt_ids for s, _, _ in picked],
        responses=[s.response_ids if ok else s.response_ids[:0] for s, _, ok in picked],
        behaviour=[s.behaviour_logprobs if ok else s.behaviour_logprobs[:0] for s, _, ok in picked],
        advantages=[a for _, a, _ in picked], pad_id=pad_id,
    )
    return batch, global_tokens


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, backend: str) -> None:
    import deepspeed

    os.environ.update({
        "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "RANK": str(rank),
        "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
    })
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


class Learner:
    def __init__(self, rank: int, world_size: int, model_dir: str, learner: LearnerConfig, algo: AlgoConfig,
                 samples_per_rank: int, packed: list = ()) -> None:
        torch.set_num_threads(max(1, int(learner.num_cpus)))
        model_dir = local_model_dir(model_dir, list(packed))
        self.rank, self.world_size = rank, world_size
        self.model_dir, self.cfg, self.algo = model_dir, learner, algo
        self.micro_batches = math.ceil(samples_per_rank / learner.micro_batch_size)
        self.use_cuda = learner.num_gpus > 0 and torch.cuda.is_available()
        self.policy: DeepSpeedPolicy | None = None
        self.version = 0
        self.pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the process group."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the process group (blocks until every rank has joined) and build the DeepSpeed engine."""
        if not self.use_cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        init_distributed(self.rank, self.world_size, master_addr, master_port, "nccl" if self.use_cuda else "gloo")
        self.policy = DeepSpeedPolicy(self.model_dir, self.cfg, self.algo, self.micro_batches, self.world_size,
                                      device="cuda" if self.use_cuda else "cpu")

    def train_step(self, groups: list[Group]) -> StepResult:
        start = time.perf_counter()
        batch, global_tokens = rank_batch(groups, self.rank, self.world_size, self.pad_id, self.algo.adv_eps)
        metrics = self.policy.train_step(batch, global_tokens)
        self.version += 1
        return StepResult(self.version, metrics, time.perf_counter() - start)

    def get_weights(self) -> dict[str, np.ndarray] | None:
        """Full weights as numpy on rank 0, None on the others (every rank must be called under ZeRO-3)."""
        return self.policy.full_state_dict()

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[np.ndarray]:
        """Teacher-forced log π(response) under the learner's current weights (for checks against rollouts)."""
        batch = TrainBatch.build([np.asarray(p) for p in prompt_ids], [np.asarray(r) for r in response_ids],
                                 [np.zeros(len(r)) for r in response_ids], [0.0] * len(prompt_ids), self.pad_id)
        logp = self.policy.logprobs(batch)
        return [logp[i][batch.mask[i].bool()].numpy() for i in range(len(prompt_ids))]

    def parameter_vector(self) -> np.ndarray:
        """This rank's view of all parameters, flattened (gathered under ZeRO-3; every rank must be called)."""
        state = self.policy.full_state_dict(all_ranks=True)
        return np.concatenate([state[k].ravel() for k in sorted(state)])
