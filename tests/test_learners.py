"""Data-parallel DeepSpeed learners as real Ray actors: the update does not depend on how a batch is split (micro-
batches, data-parallel ranks) for any loss aggregation, replicas agree, and the KL / reference / critic paths work.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest

from rlsys.config import AlgoConfig, LearnerConfig
from rlsys.types import Group, Sample

pytestmark = pytest.mark.slow


def make_groups(tokenizer, prompts, group_size: int, seed: int, failed: bool = False) -> list[Group]:
    """Prompt groups with random responses (1–4 tokens), rewards and behaviour logprobs, as a rollout would send.

    ``failed``: the first sample's reward function failed (NaN reward): it must not count anywhere."""
    rng = np.random.default_rng(seed)
    groups = []
    for p in prompts:
        ids = np.asarray(tokenizer(p.text)["input_ids"], dtype=np.int32)
        samples = []
        for j in range(group_size):
            length = int(rng.integers(1, 5))
            resp = rng.integers(4, 14, size=length).astype(np.int32)
            reward = math.nan if failed and not groups and j == 0 else float(rng.integers(0, 2))
            samples.append(Sample(p.prompt_id, j, 0, ids, resp, rng.normal(-2.0, 0.3, length).astype(np.float32),
                                  "length", 0, "", reward=reward, reward_failed=math.isnan(reward)))
        groups.append(Group(p, tuple(samples)))
    return groups


# Adam with ε ≫ |g| steps by lr·m̂/ε: linear in the gradients, so equal parameters mean equal gradients (with the
# usual ε, Adam's step is ≈ lr·sign(g) and coordinates whose gradient is ~0 turn float noise into differences).
LINEAR_ADAM = {"lr": 100.0, "adam_eps": 1e3, "grad_clip": 0.0}


def start_learners(ray, model_dir: str, num: int, zero_stage: int, samples: int, algo: AlgoConfig | None = None,
                   micro_batch_size: int = 4, reference: str | None = None, critic: str | None = None,
                   **learner) -> list:
    """``reference`` / ``critic``: checkpoints they start from other than ``model_dir`` (as model.*_path)."""
    from rlsys.actors.learner import Learner
    from rlsys.actors.placement import setup_learners

    cfg = LearnerConfig(num_learners=num, zero_stage=zero_stage, micro_batch_size=micro_batch_size,
                        **{"lr": 1e-2, **learner})
    others = {k: (path, []) for k, path in (("reference", reference), ("critic", critic)) if path}
    learners = [ray.remote(Learner).options(num_cpus=0.25).remote(r, num, model_dir, cfg, algo or AlgoConfig(),
                                                                   samples // num, 1.0, 6, **others)
                for r in range(num)]
    setup_learners(learners)
    return learners


class Run(NamedTuple):
    params: np.ndarray  # rank 0's parameters after the steps
    steps: list[dict]  # per-step metrics, combined over ranks
    other_rank: np.ndarray  # the last rank's parameters after the steps
    initial: np.ndarray  # rank 0's parameters before them


def declared_and_streamed(learner, bucket_bytes: int = 4096) -> tuple[list, list]:
    """In a learner actor: (name, dtype, shape) of its policy's weight_metadata(), and of what weight_stream yields."""
    policy = learner.policy
    return ([(n, str(d), tuple(s)) for n, d, s in policy.weight_metadata()],
            [(n, str(t.dtype), tuple(t.shape)) for n, t in policy.weight_stream(bucket_bytes)])


def run_steps(ray, model_dir, batches, num: int, micro_batch_size: int, algo: AlgoConfig, zero_stage: int = 1,
              **learner) -> Run:
    """Train ``num`` fresh learners on ``batches`` of 16 samples (``learner``: :func:`start_learners`' keywords)."""
    learners = start_learners(ray, model_dir, num, zero_stage, 16, algo, micro_batch_size, **learner)
    initial = ray.get([lrn.parameter_vector.remote() for lrn in learners])[0]  # a collective under ZeRO-3
    steps = []
    for batch in batches:
        results = ray.get([lrn.train_step.remote(batch) for lrn in learners])
        assert len({r.version for r in results}) == 1
        from rlsys.actors.learner import combine_rank_metrics

        steps.append(combine_rank_metrics([r.metrics for r in results]))
    params = ray.get([lrn.parameter_vector.remote() for lrn in learners])  # a collective under ZeRO-3
    # the weight sync's gather, in buckets of 4 KiB (the tiny model's matrices are 16-200 KiB: one bucket each)
    synced = ray.get([lrn.get_weights.remote(bucket_bytes=4096) for lrn in learners])
    # the NCCL path's source declares exactly what the stream yields, in order (vLLM's sender checks the same)
    declared, streamed = zip(*ray.get([lrn.__ray_call__.remote(declared_and_streamed) for lrn in learners]))
    assert declared[0] == streamed[0] == declared[-1] == streamed[-1] and len(declared[0]) == len(synced[0])
    assert all(s is None for s in synced[1:])
    np.testing.assert_array_equal(np.concatenate([synced[0][k].ravel() for k in sorted(synced[0])]), params[0])
    for lrn in learners:
        ray.kill(lrn)
    return Run(params[0], steps, params[-1], initial)


@pytest.fixture(scope="module")
def batches(tiny_policy):
    from transformers import AutoTokenizer

    model_dir, prompts = tiny_policy
    tok = AutoTokenizer.from_pretrained(model_dir)
    return [make_groups(tok, prompts[i * 4:(i + 1) * 4], 4, seed=i, failed=(i == 0)) for i in range(2)]


@pytest.mark.parametrize("algo", [
    AlgoConfig(loss_agg="token_mean"),
    AlgoConfig(loss_agg="seq_mean_token_mean"),
    AlgoConfig(loss_agg="seq_mean_token_sum"),
    AlgoConfig(loss_agg="constant", advantage="dr_grpo"),
    # whole-batch statistics through the all-reduce, two updates per step, the critic and decoupled IS weights
    AlgoConfig(advantage="gae", minibatches=2, decoupled=True, adv_bound=1.0, adv_bound_mode="scale"),
    AlgoConfig(advantage="reinforce_pp", policy_loss="gspo", loss_agg="seq_mean_token_mean", kl_coef=0.1,
               kl_in="reward", entropy_coef=0.01),
], ids=["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant", "gae_minibatches", "reinforce_pp_kl"])
def test_update_does_not_depend_on_the_split(ray_session, tiny_policy, batches, algo):
    """The same two batches trained as 1 rank × 1 micro-batch, 1 rank × 4 micro-batches and 2 ranks × 2
    micro-batches: equal parameters after two steps with a linear optimizer (so: equal gradients), equal global
    gradient norms and losses — the normalisation is global, not per micro-batch or per rank."""
    ray = ray_session
    model_dir, _ = tiny_policy
    per_update = 16 // algo.minibatches
    runs = {f"1x{per_update // mbs}": run_steps(ray, model_dir, batches, 1, mbs, algo, **LINEAR_ADAM)
            for mbs in (per_update, per_update // 4)}
    runs["2x2"] = run_steps(ray, model_dir, batches, 2, per_update // 4, algo, **LINEAR_ADAM)
    ref_params, ref_steps, _, initial = runs["1x1"]
    moved = np.abs(ref_params - initial)
    typical_move = np.median(moved[moved > 0])
    # Tolerance from the run itself, not from one machine's numbers: a few ulps of each parameter (summation order
    # changes with the split; lr = 100 amplifies it) plus 2 % of the typical movement. A split error (a wrong
    # normaliser on one micro-batch or rank) moves a typical coordinate by about the typical movement, so the
    # check is only meaningful while the tolerance stays well below it.
    tol = 4 * np.spacing(np.abs(ref_params)) + 0.02 * typical_move
    assert np.median(tol) < 0.25 * typical_move, (
        f"the steps moved the parameters by {typical_move:.2e} (median), too little above float rounding "
        f"({np.median(tol):.2e}) for the comparison to mean anything")
    for name, (params, steps, other_rank, _) in runs.items():
        err = np.abs(params - ref_params)
        assert np.all(err <= tol), (f"parameters differ for {name}: max |Δ| {err.max():.2e}, worst |Δ|/tolerance "
                                    f"{(err / tol).max():.2f}, typical movement {typical_move:.2e}")
        np.testing.assert_array_equal(params, other_rank)  # data-parallel replicas stay identical
        for step, ref in zip(steps, ref_steps):
            # The second step starts from parameters that differ by rounding (× lr = 100): seen up to 1.1e-4
            # relative (grad_norm, gae_minibatches, 2026-12-01). A split error changes them by tens of percent.
            for key in ("grad_norm", "loss", "pg_loss", "entropy"):
                assert step[key] == pytest.approx(ref[key], rel=1e-3, abs=1e-6), f"{key} differs for {name}"
    assert ref_steps[0]["batch/trainable_frac"] == pytest.approx(15 / 16)  # the failed sample does not train


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_zero_stages_match_zero_1(ray_session, tiny_policy, batches, zero_stage):
    ray = ray_session
    model_dir, _ = tiny_policy
    base = run_steps(ray, model_dir, batches, 2, 4, AlgoConfig(), zero_stage=1, **LINEAR_ADAM).params
    other, _, other_rank, _ = run_steps(ray, model_dir, batches, 2, 4, AlgoConfig(), zero_stage=zero_stage,
                                        **LINEAR_ADAM)
    np.testing.assert_array_equal(other, other_rank)
    np.testing.assert_allclose(other, base, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kl_in", ["loss", "reward"])
def test_kl_to_the_frozen_reference_starts_at_zero_and_grows(ray_session, tiny_policy, batches, kl_in):
    ray = ray_session
    model_dir, _ = tiny_policy
    steps = run_steps(ray, model_dir, batches, 1, 8, AlgoConfig(kl_coef=0.1, kl_in=kl_in)).steps
    first, second = steps
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)  # the policy is still the reference
    assert first["kl_penalty"] == pytest.approx(0.0, abs=1e-7)
    assert second["kl"] > 1e-6  # the k3 metric; kl_penalty is the configured estimator's value (default k2)
    assert second["kl_penalty"] > 1e-6
    if kl_in == "loss":  # the loss is the policy-gradient term plus kl_coef × penalty (token-mean aggregation)
        assert second["loss"] == pytest.approx(second["pg_loss"] + 0.1 * second["kl_penalty"], rel=1e-4)
    else:  # the penalty is in the advantages, not in the loss
        assert second["loss"] == pytest.approx(second["pg_loss"], rel=1e-4)


def test_reference_actor_gives_the_same_update_as_the_reference_in_the_learner(ray_session, tiny_policy, batches):
    from rlsys.actors.reference import ReferenceWorker

    ray = ray_session
    model_dir, _ = tiny_policy
    algo = AlgoConfig(kl_coef=0.5, kl_in="reward", reference="actor")
    reference = ray.remote(ReferenceWorker).options(num_cpus=0.25).remote(model_dir, 1.0, 1, 0)
    learner = start_learners(ray, model_dir, 1, 1, 16, algo, micro_batch_size=8)[0]
    for batch in batches:
        ray.get(learner.train_step.remote(batch, reference.logprobs.remote(batch)))
    via_actor = ray.get(learner.parameter_vector.remote())
    ray.kill(learner)
    ray.kill(reference)
    in_learner = run_steps(ray, model_dir, batches, 1, 8, AlgoConfig(kl_coef=0.5, kl_in="reward")).params
    without_kl = run_steps(ray, model_dir, batches, 1, 8, AlgoConfig()).params
    np.testing.assert_allclose(via_actor, in_learner, rtol=0, atol=2e-5)
    assert np.abs(in_learner - without_kl).max() > 1e-4, "the KL penalty in the reward changed nothing"


@pytest.fixture(scope="module")
def other_checkpoints(tiny_policy, tmp_path_factory):
    """(another policy, a reward model) with the tiny policy's tokenizer: :func:`conftest.checkpoints_beside`."""
    from conftest import checkpoints_beside

    return checkpoints_beside(tiny_policy[0], tmp_path_factory.mktemp("others"), seed=1)


def test_a_reference_checkpoint_other_than_the_policy_is_what_the_kl_measures(ray_session, tiny_policy, batches,
                                                                              other_checkpoints):
    """model.reference_path: the KL of the first step (policy = initial policy) is 0 against the initial policy and
    not against another checkpoint; the reference actor on that checkpoint gives the same update as the learner's
    own copy of it."""
    from rlsys.actors.reference import ReferenceWorker

    ray = ray_session
    model_dir, _ = tiny_policy
    other, _ = other_checkpoints
    algo = AlgoConfig(kl_coef=0.5, kl_in="reward")
    in_learner = run_steps(ray, model_dir, batches, 1, 8, algo, reference=other)
    assert in_learner.steps[0]["kl"] > 1e-2, "the first step's KL is ~0: the reference is the initial policy"
    reference = ray.remote(ReferenceWorker).options(num_cpus=0.25).remote(other, 1.0, 1, 0)
    learner = start_learners(ray, model_dir, 1, 1, 16, AlgoConfig(kl_coef=0.5, kl_in="reward", reference="actor"),
                             micro_batch_size=8)[0]
    first = ray.get(learner.train_step.remote(batches[0], reference.logprobs.remote(batches[0]))).metrics
    ray.get(learner.train_step.remote(batches[1], reference.logprobs.remote(batches[1])))
    via_actor = ray.get(learner.parameter_vector.remote())
    ray.kill(learner)
    ray.kill(reference)
    assert first["kl"] == pytest.approx(in_learner.steps[0]["kl"], rel=1e-4)
    np.testing.assert_allclose(via_actor, in_learner.params, rtol=0, atol=2e-5)


def test_the_critic_starts_from_its_checkpoint(ray_session, tiny_policy, batches, other_checkpoints):
    """model.critic_path: a reward model's transformer and score head become the critic's (exactly), a causal LM's
    transformer gets the same seeded new value head every time; a learner whose critic starts from the RM values
    the first batch otherwise than one whose critic starts from the policy."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlsys.engines.training import initial_critic

    ray = ray_session
    model_dir, _ = tiny_policy
    _, rm_dir = other_checkpoints
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir).state_dict()
    critic = initial_critic(rm_dir).state_dict()
    assert set(critic) - set(rm) <= {"score.bias"} and set(rm) <= set(critic)  # the RM's head has no bias
    if "score.bias" in critic:
        assert not critic["score.bias"].any(), "the critic's values are not the RM's scores: its bias is not 0"
    for name, tensor in rm.items():
        torch.testing.assert_close(critic[name], tensor, rtol=0, atol=0, msg=name)
    from_policy = [initial_critic(model_dir).state_dict() for _ in range(2)]
    torch.testing.assert_close(from_policy[0]["score.weight"], from_policy[1]["score.weight"], rtol=0, atol=0)
    assert not torch.equal(from_policy[0]["score.weight"], rm["score.weight"])

    gae = AlgoConfig(advantage="gae")
    values = [run_steps(ray, model_dir, batches[:1], 1, 8, gae, critic=c).steps[0]["value_mean"]
              for c in (None, rm_dir)]
    assert abs(values[0] - values[1]) > 1e-4, values


def test_critic_learns_the_returns(ray_session, tiny_policy, batches):
    """PPO-GAE: the value loss falls when the critic sees the same batch again (values move toward returns)."""
    ray = ray_session
    model_dir, _ = tiny_policy
    steps = run_steps(ray, model_dir, [batches[0]] * 6, 1, 8, AlgoConfig(advantage="gae", critic_lr=1e-3)).steps
    losses = [s["value_loss"] for s in steps]
    assert losses[-1] < 0.5 * losses[0], losses
