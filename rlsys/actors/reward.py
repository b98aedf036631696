"""Reward worker: scores whole rollout batches; a failing reward marks its samples, never the run.

The controller sends a worker one or more batches per call (those that waited for a free worker), so a reward
model runs over all their samples at once. Rule terms run in the scorer's child process, model terms in this
actor, on its GPU when it was given one.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from rlsys.config import RewardConfig
from rlsys.rewards import RewardItem, RewardOutcome, RewardScorer
from rlsys.types import RolloutBatch, Sample


class RewardWorker:
    def __init__(self, cfg: RewardConfig) -> None:
        device = "cpu"
        if cfg.num_gpus > 0:  # torch only where a GPU is asked for: a rule-only worker starts seconds sooner
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        # One score() per call: it stops starting rule calls before the controller's call timeout would kill this
        # actor and re-score the whole call, so rewards that hang on many samples fail those samples instead.
        self.scorer = RewardScorer(cfg.terms, cfg.timeout_s, device, max_call_s=0.8 * cfg.call_timeout_s)

    def score(self, *batches: RolloutBatch) -> tuple:
        """The batches with every sample scored, then their number of samples; called with
        ``num_returns=len(batches) + 1``: the last return is a small object by which the driver learns that the call
        succeeded without fetching the batches, which go on to the buffer."""
        start = time.perf_counter()
        samples = [s for b in batches for g in b.groups for s in g.samples]
        # A trajectory whose environment failed is not scored: its reward fails with the environment's reason.
        items = [RewardItem(s.answer_text, g.prompt.answer, g.prompt.text, group, s.trajectory)
                 for group, g in enumerate(g for b in batches for g in b.groups) for s in g.samples
                 if not _env_failed(s)]
        scored_items = iter(self.scorer.score(items))
        outcomes = iter([RewardOutcome(0.0, True, f"environment: {s.trajectory.error}") if _env_failed(s)
                         else next(scored_items) for s in samples])
        seconds = time.perf_counter() - start
        share = 1 / max(1, len(samples))  # each batch is charged its share of the call's time
        scored = []
        for batch in batches:
            groups = []
            for g in batch.groups:
                samples = []
                for s in g.samples:
                    o = next(outcomes)
                    samples.append(replace(
                        s, reward=math.nan if o.failed else o.reward, reward_failed=o.failed, reward_error=o.error,
                        reward_components=o.components, reward_notes=o.notes, reward_versions=o.versions))
                groups.append(replace(g, samples=tuple(samples)))
            n = sum(len(g.samples) for g in groups) * share
            scored.append(replace(batch, groups=groups, reward_s=seconds * n,
                                  reward_term_s={k: v * n for k, v in self.scorer.last_seconds.items()}))
        return (*scored, len(samples))

    def versions(self) -> dict[str, str]:
        return self.scorer.versions

    def close(self) -> None:
        self.scorer.close()


def _env_failed(sample: Sample) -> bool:
    return sample.trajectory is not None and sample.trajectory.error is not None
