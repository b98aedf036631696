"""Data-parallel DeepSpeed learners as real Ray actors: replicas agree, and the split does not change the update."""

from __future__ import annotations

import numpy as np
import pytest

from rlsys.config import AlgoConfig, LearnerConfig
from rlsys.types import Group, Sample

pytestmark = pytest.mark.slow


def make_groups(tokenizer, prompts, group_size: int, seed: int) -> list[Group]:
    """Prompt groups with random responses, rewards and behaviour logprobs (what a rollout would send)."""
    rng = np.random.default_rng(seed)
    groups = []
    for p in prompts:
        ids = np.asarray(tokenizer(p.text)["input_ids"], dtype=np.int32)
        samples = []
        for j in range(group_size):
            length = int(rng.integers(1, 5))
            resp = rng.integers(4, 14, size=length).astype(np.int32)
            samples.append(Sample(p.prompt_id, j, 0, ids, resp, rng.normal(-2.0, 0.3, length).astype(np.float32),
                                  "length", 0, "", reward=float(rng.integers(0, 2))))
        groups.append(Group(p, tuple(samples)))
    return groups


def start_learners(ray, model_dir: str, num: int, zero_stage: int, samples: int,
                   algo: AlgoConfig | None = None) -> list:
    from rlsys.actors.learner import Learner
    from rlsys.actors.placement import setup_learners

    cfg = LearnerConfig(num_learners=num, zero_stage=zero_stage, lr=1e-2, micro_batch_size=4)
    learners = [ray.remote(Learner).options(num_cpus=1).remote(r, num, model_dir, cfg, algo or AlgoConfig(),
                                                                samples // num)
                for r in range(num)]
    setup_learners(learners)
    return learners


@pytest.mark.parametrize("zero_stage", [1, 3])
def test_two_learners_stay_identical_and_match_one_learner(ray_session, tiny_policy, zero_stage):
    from transformers import AutoTokenizer

    ray = ray_session
    model_dir, prompts = tiny_policy
    tok = AutoTokenizer.from_pretrained(model_dir)
    batches = [make_groups(tok, prompts[i * 4:(i + 1) * 4], 4, seed=i) for i in range(2)]

    pair = start_learners(ray, model_dir, 2, zero_stage, samples=16)
    before = ray.get([lrn.parameter_vector.remote() for lrn in pair])[0]  # a collective under ZeRO-3
    for batch in batches:
        results = ray.get([lrn.train_step.remote(batch) for lrn in pair])
        assert [r.version for r in results] == [results[0].version] * 2
    params = ray.get([lrn.parameter_vector.remote() for lrn in pair])
    for lrn in pair:
        ray.kill(lrn)
    assert not np.allclose(before, params[0]), "the steps changed nothing"
    np.testing.assert_array_equal(params[0], params[1])

    single = start_learners(ray, model_dir, 1, zero_stage, samples=16)
    for batch in batches:
        ray.get(single[0].train_step.remote(batch))
    alone = ray.get(single[0].parameter_vector.remote())
    ray.kill(single[0])
    # 2 ranks × 2 micro-batches vs 1 rank × 4 micro-batches: the same global token-mean gradient
    np.testing.assert_allclose(params[0], alone, rtol=0, atol=1e-5)


def test_kl_to_the_frozen_reference_starts_at_zero_and_grows(ray_session, tiny_policy):
    from transformers import AutoTokenizer

    ray = ray_session
    model_dir, prompts = tiny_policy
    tok = AutoTokenizer.from_pretrained(model_dir)
    learner = start_learners(ray, model_dir, 1, zero_stage=1, samples=16, algo=AlgoConfig(kl_coef=0.1))[0]
    first = ray.get(learner.train_step.remote(make_groups(tok, prompts[:4], 4, seed=0)))
    second = ray.get(learner.train_step.remote(make_groups(tok, prompts[4:8], 4, seed=1)))
    ray.kill(learner)
    assert first.metrics["kl"] == pytest.approx(0.0, abs=1e-7)  # the policy is still the reference
    assert second.metrics["kl"] > 1e-6
    # the loss is the policy-gradient term plus kl_coef × KL
    assert second.metrics["loss"] == pytest.approx(second.metrics["pg_loss"] + 0.1 * second.metrics["kl"], rel=1e-4)
