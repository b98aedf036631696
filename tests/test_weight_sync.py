"""Weight sync through the object store: after a sync the rollout worker scores exactly like the learner."""

from __future__ import annotations

import numpy as np
import pytest
from test_learners import make_groups, start_learners

from rlsys.config import RolloutConfig, TaskConfig

pytestmark = pytest.mark.slow


def test_rollout_matches_learner_after_sync(ray_session, tiny_policy):
    from transformers import AutoTokenizer

    from rlsys.actors.rollout import RolloutWorker

    ray = ray_session
    model_dir, prompts = tiny_policy
    tok = AutoTokenizer.from_pretrained(model_dir)
    learner = start_learners(ray, model_dir, 1, zero_stage=2, samples=16)[0]
    rollout = ray.remote(RolloutWorker).options(num_cpus=1).remote(0, model_dir, RolloutConfig(), TaskConfig())

    fixed_prompts = [tok(p.text)["input_ids"] for p in prompts[:3]]
    fixed_responses = [tok("42")["input_ids"] + [tok.eos_token_id], tok("7")["input_ids"], tok("100")["input_ids"]]

    def compare() -> float:
        ours = ray.get(learner.logprobs.remote(fixed_prompts, fixed_responses))
        theirs = ray.get(rollout.score.remote(fixed_prompts, fixed_responses))
        return max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs))

    assert compare() < 1e-5  # same initial checkpoint
    step = ray.get(learner.train_step.remote(make_groups(tok, prompts[:4], 4, seed=0)))
    assert step.version == 1
    assert compare() > 1e-4, "the learner step should have moved the policy away from the rollout's copy"

    weights = learner.get_weights.remote()
    load_s = ray.get(rollout.update_weights.remote(weights, step.version))
    assert load_s >= 0
    assert ray.get(rollout.version.remote()) == 1
    assert compare() < 1e-5
    ray.kill(learner)
    ray.kill(rollout)
