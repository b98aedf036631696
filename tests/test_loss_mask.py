"""Per-token loss masks (``Sample.loss_mask``): in a multi-turn trajectory the tokens the policy did not generate —
a tool's or environment's observation between its turns — get exactly zero gradient, count in no normaliser, and
are not time steps of GAE. Pure functions on real tensors (no actors): the learner's own batch building
(``rank_batch``), advantages and objective (``policy_objective``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rlsys.actors.learner import compute_advantages, rank_batch
from rlsys.algos import gae_advantages
from rlsys.config import AlgoConfig
from rlsys.engines.training import policy_objective
from rlsys.types import Group, Prompt, Sample

VOCAB, PAD = 12, 0
PROMPT = np.array([1, 5, 6], dtype=np.int32)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def trajectory(seed: int, turns: int) -> tuple[np.ndarray, np.ndarray]:
    """(response ids, loss mask) of a trajectory: policy turns of 2–4 tokens with observations of 1–3 between."""
    rng = np.random.default_rng(seed)
    ids, mask = [], []
    for turn in range(turns):
        n = int(rng.integers(2, 5))
        ids += rng.integers(1, VOCAB, n).tolist()
        mask += [1] * n
        if turn < turns - 1:
            m = int(rng.integers(1, 4))
            ids += rng.integers(1, VOCAB, m).tolist()
            mask += [0] * m
    return np.array(ids, dtype=np.int32), np.array(mask, dtype=np.uint8)


def groups(turns: int = 3, num_groups: int = 2, group_size: int = 4) -> list[Group]:
    out = []
    for g in range(num_groups):
        samples = []
        for j in range(group_size):
            ids, mask = trajectory(10 * g + j, turns)
            behaviour = np.where(mask > 0, -np.random.default_rng(j).uniform(0.5, 3.0, len(ids)), 0.0)
            samples.append(Sample(f"p{g}", j, 0, PROMPT, ids, behaviour.astype(np.float32), "stop", 0, "",
                                  reward=float((g + j) % 2), loss_mask=mask if turns > 1 else None))
        out.append(Group(Prompt(f"p{g}", "q", "a"), tuple(samples)))
    return out


def prepared(algo: AlgoConfig, gs: list[Group]):
    """The learner's rank batch (one rank) with its advantages and, with a KL, made-up reference logprobs."""
    rb = rank_batch(gs, 0, 1, PAD, algo, max_new_tokens=32)
    batch = rb.batch
    if algo.kl_coef > 0:
        ref = torch.where(batch.mask > 0, batch.behaviour_logprobs - 0.3, 0.0)
        batch = dataclasses.replace(batch, ref_logprobs=ref)
    if algo.advantage == "gae":
        batch = dataclasses.replace(batch, old_values=torch.randn(batch.mask.shape, generator=torch.Generator()
                                                                   .manual_seed(0)))
    return compute_advantages(algo, rb.rewards, batch, identity, identity)


ALGOS = {
    "grpo_token_mean": AlgoConfig(),
    "seq_mean_token_mean": AlgoConfig(loss_agg="seq_mean_token_mean"),
    "gspo_sequence_ratio": AlgoConfig(policy_loss="gspo", loss_agg="seq_mean_token_mean"),
    "kl_in_loss_and_entropy": AlgoConfig(kl_coef=0.2, kl_in="loss", entropy_coef=0.01),
    "decoupled_sequence_is": AlgoConfig(decoupled=True, is_mode="tis", is_level="sequence"),
    "gae": AlgoConfig(advantage="gae"),
}


@pytest.mark.parametrize("algo", ALGOS.values(), ids=ALGOS.keys())
def test_observation_tokens_get_exactly_zero_gradient(algo):
    """d loss / d logits is exactly 0 at every position whose target is an observation token (and at prompt and
    padding positions), and nonzero somewhere at the policy's own tokens."""
    batch = prepared(algo, groups())
    if algo.decoupled:
        batch = dataclasses.replace(batch, prox_logprobs=torch.where(batch.mask > 0,
                                                                      batch.behaviour_logprobs + 0.05, 0.0))
    logits = torch.randn(*batch.mask.shape, VOCAB, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss, _, _ = policy_objective(logits, batch, algo, temperature=1.0)
    loss.backward()
    per_position = logits.grad.abs().sum(-1)
    off = batch.mask == 0
    assert off.sum() > 0 and (batch.mask.sum(-1) < torch.tensor([len(r) for r in _responses(batch)])).all()
    assert torch.count_nonzero(per_position[off]) == 0, "an observation, prompt or padding position has a gradient"
    assert torch.count_nonzero(per_position[~off]) > 0


def _responses(batch) -> list[torch.Tensor]:
    """Each row's response span (between the prompt and the padding)."""
    lengths = batch.attention_mask.sum(-1) - len(PROMPT)
    return [batch.input_ids[i, len(PROMPT): len(PROMPT) + n] for i, n in enumerate(lengths.tolist())]


@pytest.mark.parametrize("algo", ALGOS.values(), ids=ALGOS.keys())
def test_what_observation_positions_hold_does_not_change_the_loss(algo):
    """Behaviour and reference logprobs and advantages written into observation positions change nothing."""
    batch = prepared(algo, groups())
    logits = torch.randn(*batch.mask.shape, VOCAB, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(batch.mask.shape) * (batch.mask == 0)
    changed = dataclasses.replace(batch, behaviour_logprobs=batch.behaviour_logprobs - noise.abs(),
                                  advantages=batch.advantages + noise,
                                  ref_logprobs=None if batch.ref_logprobs is None else batch.ref_logprobs + noise)
    assert policy_objective(logits, changed, algo, 1.0)[0] == policy_objective(logits, batch, algo, 1.0)[0]


def test_observation_tokens_do_not_count_in_the_normalisers():
    """token_mean: every sample's weight is 1 / (the policy's tokens in the mini-batch); seq_mean_token_mean:
    1 / (N × its own policy tokens) — observation tokens counted nowhere."""
    gs = groups()
    samples = [s for g in gs for s in g.samples]
    policy = np.array([int(s.loss_mask.sum()) for s in samples])
    assert all(len(s.response_ids) > p for s, p in zip(samples, policy))
    batch = rank_batch(gs, 0, 1, PAD, AlgoConfig(), 32).batch
    np.testing.assert_allclose(batch.loss_weight.numpy(), 1 / policy.sum(), rtol=1e-6)
    np.testing.assert_allclose(batch.token_weight.numpy(), 1 / policy.sum(), rtol=1e-6)
    np.testing.assert_array_equal(batch.mask.sum(-1).numpy(), policy)
    per_seq = rank_batch(gs, 0, 1, PAD, AlgoConfig(loss_agg="seq_mean_token_mean"), 32).batch
    np.testing.assert_allclose(per_seq.loss_weight.numpy(), 1 / (len(samples) * policy), rtol=1e-6)
    for row, s in enumerate(samples):  # the mask sits on the response's own positions (target t + 1 at t)
        span = batch.mask[row, len(PROMPT) - 1: len(PROMPT) - 1 + len(s.response_ids)]
        np.testing.assert_array_equal(span.numpy(), s.loss_mask)


def test_a_single_turn_sample_trains_as_before():
    """loss_mask None and an all-ones mask give the same batch."""
    single = groups(turns=1)
    ones = [Group(g.prompt, tuple(dataclasses.replace(s, loss_mask=np.ones(len(s.response_ids), np.uint8))
                                  for s in g.samples)) for g in single]
    a, b = (rank_batch(x, 0, 1, PAD, AlgoConfig(), 32).batch for x in (single, ones))
    for f in ("mask", "loss_weight", "token_weight", "behaviour_logprobs"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=0, atol=0)


def test_gae_steps_over_observations_as_if_they_were_not_there():
    """GAE on a row with observation holes equals GAE on the same row with the observation positions removed:
    V_{t+1} of a turn's last token is the value at the next turn's first policy token, and the discounting counts
    policy tokens only."""
    rng = np.random.default_rng(0)
    _, mask = trajectory(3, turns=4)
    width = len(mask) + 5  # prompt and padding positions around the response, off the mask too
    full_mask = torch.zeros(1, width)
    full_mask[0, 2: 2 + len(mask)] = torch.as_tensor(mask, dtype=torch.float32)
    rewards, values = (torch.as_tensor(rng.normal(size=(1, width)), dtype=torch.float32) for _ in range(2))
    adv, ret = gae_advantages(rewards, values, full_mask, gamma=0.9, lam=0.8)
    keep = full_mask[0] > 0
    c_adv, c_ret = gae_advantages(rewards[:, keep], values[:, keep], torch.ones(1, int(keep.sum())), 0.9, 0.8)
    torch.testing.assert_close(adv[:, keep], c_adv, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ret[:, keep], c_ret, rtol=1e-6, atol=1e-6)
    assert torch.count_nonzero(adv[:, ~keep]) == 0 and torch.count_nonzero(ret[:, ~keep]) == 0
