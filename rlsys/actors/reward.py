"""Reward worker: scores every sample of a rollout batch; a failing reward marks its sample, never the run."""

from __future__ import annotations

import math
import time
from dataclasses import replace

from rlsys.actors.rollout import RolloutBatch
from rlsys.config import RewardConfig
from rlsys.rewards import RewardScorer
from rlsys.types import Group


class RewardWorker:
    def __init__(self, cfg: RewardConfig) -> None:
        self.scorer = RewardScorer(cfg.terms, cfg.timeout_s)

    def score(self, batch: RolloutBatch) -> RolloutBatch:
        start = time.perf_counter()
        items = [(s.response_text, g.prompt.answer) for g in batch.groups for s in g.samples]
        outcomes = iter(self.scorer.score(items))
        groups = []
        for g in batch.groups:
            samples = []
            for s in g.samples:
                o = next(outcomes)
                samples.append(replace(s, reward=math.nan if o.failed else o.reward, reward_failed=o.failed,
                                       reward_error=o.error, reward_components=o.components, reward_notes=o.notes))
            groups.append(Group(prompt=g.prompt, samples=tuple(samples), worker=g.worker))
        return replace(batch, groups=groups, reward_s=time.perf_counter() - start)

    def close(self) -> None:
        self.scorer.close()
