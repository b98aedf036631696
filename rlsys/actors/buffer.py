"""Buffer actor: holds scored groups between the reward workers and the learners, and records what it hands out.

Data flows reward worker → buffer → learners through the object store, never through the controller; the
controller only sees the small :class:`PutSummary` / :class:`TakeSummary` records. Every group that leaves the
buffer, trained or dropped, is appended to a Parquet file with the reason, so a run can say exactly which
samples it used and which it dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from rlsys.algos import untrained_reasons, zero_variance_groups
from rlsys.buffer import GroupBuffer
from rlsys.failures import FailedExample
from rlsys.metrics import trajectory_totals
from rlsys.samples_io import SampleLog
from rlsys.types import Group, RolloutBatch


@dataclass(frozen=True)
class PutSummary:
    """What arrived: enough for the controller's throughput, reward and staleness bookkeeping."""

    request_id: int
    worker: int
    num_groups: int
    num_samples: int
    num_tokens: int
    versions: list[int]
    rewards: list[float]  # NaN where the reward failed
    reward_errors: list[str]
    response_lengths: list[int]
    generate_s: float
    reward_s: float
    depth: int
    seq: int  # the buffer's operation count after this put: orders depth reports that arrive out of order
    filtered_keys: list[tuple[str, int]] = field(default_factory=list)  # dynamic sampling dropped these groups
    components: dict[str, list[float]] = field(default_factory=dict)  # each reward term's values (NaN: failed)
    component_s: dict[str, float] = field(default_factory=dict)  # each reward term's compute seconds
    failed_example: FailedExample | None = None  # the first sample whose reward failed, if any
    trajectories: dict[str, int] = field(default_factory=dict)  # multi-turn counts (rlsys.metrics.trajectory_totals)


@dataclass(frozen=True)
class TakeSummary:
    taken: int
    dropped_keys: list[tuple[str, int]]  # (prompt id, epoch) of each group dropped as too stale
    taken_keys: list[tuple[str, int]]  # (prompt id, epoch) of each group taken to train
    dropped_versions: list[int]
    batch_versions: list[int]
    depth: int
    seq: int


class BufferActor:
    """``dynamic_sampling`` (DAPO): a group whose rewards are all equal teaches nothing under a group baseline, so
    it is dropped on arrival — recorded in the sample log with the reason — and its admission slot is freed, so
    the controller keeps generating until a full batch of informative groups is buffered."""

    def __init__(self, max_staleness: int, sample_log_path: str | None, dynamic_sampling: bool = False,
                 overlong_filter: bool = False, filter_zero_variance: bool = False) -> None:
        self.buffer = GroupBuffer(max_staleness)
        self.log = SampleLog(sample_log_path) if sample_log_path else None
        self.dynamic_sampling = dynamic_sampling
        self.filters = (overlong_filter, filter_zero_variance)  # which samples of a trained group the loss leaves out
        self.seq = 0

    def put(self, batch: RolloutBatch) -> PutSummary:
        keep, filtered = list(batch.groups), []
        if self.dynamic_sampling and batch.groups:
            flat = zero_variance_groups(torch.as_tensor(np.stack([g.rewards for g in batch.groups]))).tolist()
            keep = [g for g, f in zip(batch.groups, flat) if not f]
            filtered = [g for g, f in zip(batch.groups, flat) if f]
            if self.log is not None:
                self.log.write(filtered, -1, "dynamic sampling: all rewards in the group are equal")
        self.buffer.put(keep, order=batch.request_id)
        self.seq += 1
        samples = [s for g in batch.groups for s in g.samples]
        return PutSummary(
            request_id=batch.request_id, worker=batch.worker, num_groups=len(batch.groups),
            num_samples=len(samples), num_tokens=sum(len(s.response_ids) for s in samples),
            versions=[g.version for g in batch.groups], rewards=[float(s.reward) for s in samples],
            reward_errors=[s.reward_error for s in samples if s.reward_failed],
            response_lengths=[len(s.response_ids) for s in samples],
            generate_s=batch.generate_s, reward_s=batch.reward_s, depth=len(self.buffer), seq=self.seq,
            filtered_keys=[(g.prompt.prompt_id, g.prompt.epoch) for g in filtered],
            components={name: [s.reward_components.get(name, math.nan) for s in samples]
                        for name in dict.fromkeys(k for s in samples for k in s.reward_components)},
            component_s=dict(batch.reward_term_s),
            failed_example=next((FailedExample(s.prompt_id, s.response_text, s.reward_error or "")
                                 for s in samples if s.reward_failed), None),
            trajectories=trajectory_totals(samples),
        )

    def take(self, num_groups: int, learner_version: int) -> tuple[list[Group] | None, TakeSummary]:
        result = self.buffer.take(num_groups, learner_version)
        self.seq += 1
        if self.log is not None:
            self.log.write(result.dropped, learner_version, f"stale: older than {self.buffer.max_staleness} versions")
            if result.batch:  # the learners leave some samples out of the loss: each is logged with the reason
                rewards = np.stack([g.rewards for g in result.batch])
                truncated = [s.finish_reason == "length" for g in result.batch for s in g.samples]
                self.log.write(result.batch, learner_version, untrained_reasons(rewards, truncated, *self.filters))
        summary = TakeSummary(
            taken=len(result.batch or []), dropped_keys=[(g.prompt.prompt_id, g.prompt.epoch) for g in result.dropped],
            taken_keys=[(g.prompt.prompt_id, g.prompt.epoch) for g in result.batch or []],
            dropped_versions=[g.version for g in result.dropped],
            batch_versions=[g.version for g in result.batch or []], depth=result.depth_after, seq=self.seq,
        )
        return result.batch, summary

    def flush_log(self) -> int:
        """Write what the sample log buffers as a part; returns how many parts the log has (for a checkpoint: the
        parts after that many belong to a timeline a resume discards, :func:`rlsys.samples_io.set_aside_parts`)."""
        if self.log is None:
            return 0
        self.log.flush()
        return self.log.parts

    def close(self, learner_version: int, reason: str = "run ended before it was trained") -> int:
        """Record the groups still waiting as not trained (for ``reason``), flush the sample log; returns how many
        there were."""
        left = self.buffer.drain()
        if self.log is not None:
            self.log.write(left, learner_version, reason)
            self.log.close()
        return len(left)

