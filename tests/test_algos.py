"""GRPO maths against values computed by hand."""

import math

import pytest
import torch

from rlsys.algos import (
    clipped_policy_loss,
    entropy_from_logits,
    group_advantages,
    kl_estimate,
    token_logprobs,
    token_sum_over,
)


def test_group_advantages_hand_computed():
    # group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3) → ±0.5·sqrt(3)
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 4.0, 6.0, 8.0]]), eps=0.0)
    a = 0.5 * math.sqrt(3)
    assert torch.allclose(adv[0], torch.tensor([a, -a, -a, a]), atol=1e-6)
    # group [2,4,6,8]: mean 5, std sqrt(20/3)
    s = math.sqrt(20 / 3)
    assert torch.allclose(adv[1], torch.tensor([-3 / s, -1 / s, 1 / s, 3 / s]), atol=1e-6)


def test_group_advantages_edge_cases():
    assert torch.equal(group_advantages(torch.tensor([[1.0, 1.0, 1.0]])), torch.zeros(1, 3))  # all equal
    assert torch.equal(group_advantages(torch.tensor([[5.0]])), torch.zeros(1, 1))  # group of one
    # a failed reward (NaN) is left out: [1, NaN, 0] behaves as the group [1, 0], and the NaN sample gets 0
    adv = group_advantages(torch.tensor([[1.0, math.nan, 0.0]]), eps=0.0)
    a = 0.5 / math.sqrt(0.5)
    assert torch.allclose(adv, torch.tensor([[a, 0.0, -a]]), atol=1e-6)
    assert torch.equal(group_advantages(torch.tensor([[math.nan, 1.0]])), torch.zeros(1, 2))  # one left
    with pytest.raises(ValueError, match="groups, group_size"):
        group_advantages(torch.tensor([1.0, 2.0]))


def test_clipped_loss_hand_computed():
    # ratios e^{0.5}≈1.6487 (clipped to 1.2 for A>0), e^{-0.5}≈0.6065 (clipped to 0.8 for A<0), 1.0
    logp = torch.tensor([[0.5, -0.5, 0.0]])
    old = torch.zeros(1, 3)
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor([1.0]), clip_eps=0.2)
    assert torch.allclose(loss, torch.tensor([[-1.2, -math.exp(-0.5), -1.0]]), atol=1e-6)
    assert clipped.tolist() == [[1.0, 0.0, 0.0]]
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor([-2.0]), clip_eps=0.2)
    # A<0: -min(ρA, clip(ρ)A) = max(-ρA, -clip(ρ)A) → 2·e^{0.5}, 2·0.8, 2
    assert torch.allclose(loss, torch.tensor([[2 * math.exp(0.5), 1.6, 2.0]]), atol=1e-6)
    assert clipped.tolist() == [[0.0, 1.0, 0.0]]


def test_clipped_loss_gradient_is_zero_when_clipped():
    logp = torch.tensor([[0.5]], requires_grad=True)
    loss, _ = clipped_policy_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), clip_eps=0.2)
    loss.sum().backward()
    assert logp.grad.item() == 0.0
    logp = torch.tensor([[0.1]], requires_grad=True)  # inside the trust region: d(−ρA)/dlogp = −ρA
    loss, _ = clipped_policy_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), clip_eps=0.2)
    loss.sum().backward()
    assert logp.grad.item() == pytest.approx(-math.exp(0.1))


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])  # log ρ = ref − logp = −1
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-1) - 1 + 1)
    assert kl_estimate(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, ref, "k4")


def test_k3_is_unbiased_for_the_true_kl():
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    true_kl = float((p * (p / q).log()).sum())
    # exact expectation of k3 under p over the three outcomes
    k3 = kl_estimate(p.log(), q.log(), "k3")
    assert float((p * k3).sum()) == pytest.approx(true_kl, rel=1e-6)


def test_token_mean_with_global_denominator():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert token_sum_over(x, mask, 3).item() == pytest.approx((1 + 2 + 4) / 3)
    # split in two micro-batches with the global count: the shares add up to the whole-batch token-mean
    parts = token_sum_over(x[:1], mask[:1], 3) + token_sum_over(x[1:], mask[1:], 3)
    assert parts.item() == pytest.approx((1 + 2 + 4) / 3)


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = [0.25, 0.75]
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    assert entropy_from_logits(logits).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    # temperature 2 divides the logits: p ∝ [1, sqrt(3)]
    p1 = math.sqrt(3) / (1 + math.sqrt(3))
    assert token_logprobs(logits, torch.tensor([[1]]), temperature=2.0).item() == pytest.approx(math.log(p1))
