"""rlsys.algos maths against values computed by hand.

Every expected value below is written out from the formula in the function's docstring (as explicit arithmetic or
a comment); no expected value comes from calling the function under test. Float64 tensors keep the tolerances tight.
"""

import math

import numpy as np
import pytest
import torch

from rlsys.algos import (
    AGGREGATIONS,
    POLICY_LOSSES,
    bound_advantages,
    entropy_from_logits,
    gae_advantages,
    group_advantages,
    group_centered_advantages,
    importance_weights,
    kl_estimate,
    masked_whiten,
    outcome_token_rewards,
    overlong_penalty,
    policy_loss,
    reinforce_pp_advantages,
    rloo_advantages,
    sample_loss_weights,
    token_logprobs,
    value_loss,
    zero_variance_groups,
)

NAN = math.nan
F64 = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def close(actual: torch.Tensor, expected, atol: float = 1e-9) -> None:
    expected = expected if isinstance(expected, torch.Tensor) else t(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual.to(F64), expected.to(F64), atol=atol, rtol=0), (actual, expected)


# --------------------------------------------------------------------------------------------------------------
# Outcome advantage estimators
# --------------------------------------------------------------------------------------------------------------


def test_group_advantages_hand_computed():
    # group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt((4 · 0.25) / 3) = sqrt(1/3) → ±0.5·sqrt(3)
    adv = group_advantages(t([[1.0, 0.0, 0.0, 1.0], [2.0, 4.0, 6.0, 8.0]]), eps=0.0)
    a = 0.5 / math.sqrt(1 / 3)
    close(adv[0], [a, -a, -a, a])
    # group [2, 4, 6, 8]: mean 5, unbiased std sqrt((9 + 1 + 1 + 9) / 3) = sqrt(20/3)
    s = math.sqrt(20 / 3)
    close(adv[1], [-3 / s, -1 / s, 1 / s, 3 / s])
    # eps enters the denominator: (r − mean) / (std + eps)
    adv = group_advantages(t([[1.0, 0.0, 0.0, 1.0]]), eps=0.5)
    b = 0.5 / (math.sqrt(1 / 3) + 0.5)
    close(adv, [[b, -b, -b, b]])


def test_group_advantages_edge_cases():
    assert torch.equal(group_advantages(t([[1.0, 1.0, 1.0]])), torch.zeros(1, 3, dtype=F64))  # all equal
    assert torch.equal(group_advantages(t([[5.0]])), torch.zeros(1, 1, dtype=F64))  # group of one
    # a failed reward (NaN) is left out: [1, NaN, 0] behaves as the group [1, 0] (mean 0.5, std sqrt(0.5)),
    # and the NaN sample gets 0
    adv = group_advantages(t([[1.0, NAN, 0.0]]), eps=0.0)
    a = 0.5 / math.sqrt((0.25 + 0.25) / 1)
    close(adv, [[a, 0.0, -a]])
    assert torch.equal(group_advantages(t([[NAN, 1.0]])), torch.zeros(1, 2, dtype=F64))  # one rewarded left
    assert torch.equal(group_advantages(t([[NAN, NAN]])), torch.zeros(1, 2, dtype=F64))  # none rewarded
    # groups are independent: an all-equal group next to a normal one
    adv = group_advantages(t([[3.0, 3.0], [0.0, 2.0]]), eps=1e-6)
    c = 1.0 / (math.sqrt(2.0) + 1e-6)  # mean 1, unbiased std sqrt((1 + 1) / 1)
    close(adv, [[0.0, 0.0], [-c, c]])
    with pytest.raises(ValueError, match="groups, group_size"):
        group_advantages(t([1.0, 2.0]))


def test_group_advantages_all_equal_non_representable_rewards_are_zero():
    # docstring: "A group ... whose rewards are all equal ... gets Â = 0" — whatever the reward value
    assert torch.equal(group_advantages(torch.full((1, 8), 0.2)), torch.zeros(1, 8))
    assert torch.equal(group_advantages(torch.full((1, 7), 0.3)), torch.zeros(1, 7))
    assert torch.equal(group_advantages(t([[1.0, 1.0, 1.0]]), eps=0.0), torch.zeros(1, 3, dtype=F64))


def test_group_centered_advantages_hand_computed():
    # Dr. GRPO: r − mean, no std. [1, 0, 0, 1] → mean 0.5; [2, NaN, 5, 8] → mean over rewarded (2 + 5 + 8) / 3 = 5
    adv = group_centered_advantages(t([[1.0, 0.0, 0.0, 1.0], [2.0, NAN, 5.0, 8.0]]))
    close(adv, [[0.5, -0.5, -0.5, 0.5], [2.0 - 5.0, 0.0, 5.0 - 5.0, 8.0 - 5.0]])
    assert torch.equal(group_centered_advantages(t([[7.0]])), torch.zeros(1, 1, dtype=F64))  # group of one
    assert torch.equal(group_centered_advantages(t([[NAN, 4.0]])), torch.zeros(1, 2, dtype=F64))  # one rewarded
    assert torch.equal(group_centered_advantages(t([[2.0, 2.0, 2.0]])), torch.zeros(1, 3, dtype=F64))  # all equal


def test_rloo_advantages_hand_computed():
    # [1, 0, 0, 1], k = 4: Â_i = r_i − (Σ_{j≠i} r_j) / 3
    # [2, NaN, 5, 8], k = 3: Â_0 = 2 − (5 + 8)/2, Â_2 = 5 − (2 + 8)/2, Â_3 = 8 − (2 + 5)/2, NaN → 0
    adv = rloo_advantages(t([[1.0, 0.0, 0.0, 1.0], [2.0, NAN, 5.0, 8.0]]))
    close(adv, [[1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3], [2 - 13 / 2, 0.0, 5 - 10 / 2, 8 - 7 / 2]])
    # the identity from the docstring: k/(k−1) · (r − mean), mean = 5
    close(adv[1], [1.5 * (2 - 5), 0.0, 1.5 * (5 - 5), 1.5 * (8 - 5)])
    assert torch.equal(rloo_advantages(t([[3.0]])), torch.zeros(1, 1, dtype=F64))  # group of one
    assert torch.equal(rloo_advantages(t([[3.0, NAN]])), torch.zeros(1, 2, dtype=F64))  # one rewarded
    assert torch.equal(rloo_advantages(t([[NAN, NAN]])), torch.zeros(1, 2, dtype=F64))
    assert torch.equal(rloo_advantages(t([[4.0, 4.0, 4.0]])), torch.zeros(1, 3, dtype=F64))  # all equal


def test_zero_variance_groups():
    rewards = t([
        [1.0, 1.0, 1.0],  # all equal
        [1.0, 0.0, 1.0],  # spread
        [5.0, NAN, 5.0],  # rewarded ones equal
        [5.0, NAN, NAN],  # one rewarded
        [NAN, NAN, NAN],  # none rewarded
        [0.0, 1.0, NAN],  # spread among the rewarded
        [1.0, 1.0 + 1e-9, 1.0],  # within the tolerance 1e-8
    ])
    assert zero_variance_groups(rewards).tolist() == [True, False, True, True, True, False, True]
    assert zero_variance_groups(t([[2.0]])).tolist() == [True]  # group of one


def test_zero_variance_groups_all_equal_non_representable_rewards():
    # docstring: "groups whose rewarded samples all got the same reward"
    assert zero_variance_groups(torch.full((2, 7), 0.3)).tolist() == [True, True]
    assert zero_variance_groups(torch.full((1, 8), 0.2)).tolist() == [True]


def test_reinforce_pp_advantages_hand_computed():
    # rewards for 2 groups × 2 samples (rows in group order): 1, 0 | 2, NaN; response lengths 2, 1, 1, 3
    rewards = t([[1.0, 0.0], [2.0, NAN]])
    mask = t([[1, 1, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1]])
    # no baseline: per-token rewards 1,1 | 0 | 2 (the NaN row is not counted) → mean 4/4 = 1,
    # E[x²] = (1 + 1 + 0 + 4)/4 = 1.5, population var 1.5 − 1 = 0.5
    s = math.sqrt(0.5)
    adv = reinforce_pp_advantages(rewards, mask, group_baseline=False, eps=0.0)
    close(adv, [[0.0, 0.0, 0.0], [-1 / s, 0.0, 0.0], [0.0, 1 / s, 0.0], [0.0, 0.0, 0.0]])
    # group baseline: group 0 → [0.5, −0.5]; group 1 has one rewarded sample → 0.
    # tokens 0.5, 0.5 | −0.5 | 0 → mean 0.5/4 = 0.125, E[x²] = 0.75/4 = 0.1875, var 0.1875 − 0.125²
    m, sd = 0.125, math.sqrt(0.1875 - 0.125**2)
    adv = reinforce_pp_advantages(rewards, mask, group_baseline=True, eps=0.0)
    close(adv, [[(0.5 - m) / sd, (0.5 - m) / sd, 0.0], [(-0.5 - m) / sd, 0.0, 0.0], [0.0, (0 - m) / sd, 0.0],
                [0.0, 0.0, 0.0]])


def test_reinforce_pp_advantages_edge_cases():
    # length-1 responses, one group of 2: tokens 3 and 1 → mean 2, var 1 → ±1
    adv = reinforce_pp_advantages(t([[3.0, 1.0]]), t([[1.0], [1.0]]), group_baseline=False, eps=0.0)
    close(adv, [[1.0], [-1.0]])
    # all-equal rewards: every token equals the mean → 0 (with and without baseline)
    mask = t([[1, 1], [1, 0]])
    for baseline in (False, True):
        adv = reinforce_pp_advantages(t([[2.0, 2.0]]), mask, group_baseline=baseline)
        assert torch.equal(adv, torch.zeros(2, 2, dtype=F64))
    # group of one with the baseline: Â = 0 before whitening → 0
    adv = reinforce_pp_advantages(t([[5.0], [1.0]]), t([[1, 1], [1, 0]]), group_baseline=True)
    assert torch.equal(adv, torch.zeros(2, 2, dtype=F64))
    # group of one without the baseline: the raw rewards are whitened over the batch: tokens 5, 5, 1 →
    # mean 11/3, E[x²] = 51/3, var 51/3 − (11/3)²
    mu, sd = 11 / 3, math.sqrt(51 / 3 - (11 / 3) ** 2)
    adv = reinforce_pp_advantages(t([[5.0], [1.0]]), t([[1, 1], [1, 0]]), group_baseline=False, eps=0.0)
    close(adv, [[(5 - mu) / sd, (5 - mu) / sd], [(1 - mu) / sd, 0.0]])
    # every reward failed: nothing is counted and everything is 0
    adv = reinforce_pp_advantages(t([[NAN, NAN]]), t([[1, 1], [1, 0]]), group_baseline=False)
    assert torch.equal(adv, torch.zeros(2, 2, dtype=F64))


# --------------------------------------------------------------------------------------------------------------
# Whitening and the cross-rank reduce
# --------------------------------------------------------------------------------------------------------------


def test_masked_whiten_hand_computed():
    x = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = t([[1, 1, 0], [1, 1, 1]])
    # masked entries 1, 2, 4, 5, 6: mean 18/5 = 3.6, E[x²] = 82/5 = 16.4, population var 16.4 − 3.6² = 3.44
    sd = math.sqrt(3.44)
    out = masked_whiten(x, mask, eps=0.0)
    close(out, [[(1 - 3.6) / sd, (2 - 3.6) / sd, 0.0], [(4 - 3.6) / sd, (5 - 3.6) / sd, (6 - 3.6) / sd]])
    # eps in the denominator
    close(masked_whiten(x, mask, eps=1.0)[1, 2], t((6 - 3.6) / (sd + 1.0)))
    # shift_mean=False only rescales by the same std
    out = masked_whiten(x, mask, eps=0.0, shift_mean=False)
    close(out, [[1 / sd, 2 / sd, 0.0], [4 / sd, 5 / sd, 6 / sd]])
    # a bool mask works the same
    close(masked_whiten(x, mask.bool(), eps=0.0), masked_whiten(x, mask, eps=0.0))
    # a single masked entry (zero variance) and an empty mask give 0, not NaN
    assert torch.equal(masked_whiten(x, t([[0, 1, 0], [0, 0, 0]])), torch.zeros(2, 3, dtype=F64))
    assert torch.equal(masked_whiten(x, torch.zeros(2, 3, dtype=F64)), torch.zeros(2, 3, dtype=F64))


def test_masked_whiten_reduce_receives_sum_sumsq_count():
    seen = []

    def reduce(v: torch.Tensor) -> torch.Tensor:
        seen.append(v.clone())
        return v

    masked_whiten(t([[1.0, 2.0, 3.0]]), t([[1, 0, 1]]), reduce=reduce)
    assert len(seen) == 1
    close(seen[0], [1.0 + 3.0, 1.0**2 + 3.0**2, 2.0])  # [Σ x, Σ x², count] over the masked entries


def test_masked_whiten_split_over_two_ranks_equals_whole_batch():
    x = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [-2.0, 0.5, 7.0]])
    mask = t([[1, 1, 0], [1, 1, 1], [0, 1, 1]])
    # rank A holds row 0, rank B rows 1-2; each rank's moment vector [Σ x, Σ x², count], by hand:
    moments_a = t([1.0 + 2.0, 1.0 + 4.0, 2.0])
    moments_b = t([4.0 + 5.0 + 6.0 + 0.5 + 7.0, 16.0 + 25.0 + 36.0 + 0.25 + 49.0, 5.0])
    out_a = masked_whiten(x[:1], mask[:1], eps=1e-6, reduce=lambda v: v + moments_b)
    out_b = masked_whiten(x[1:], mask[1:], eps=1e-6, reduce=lambda v: v + moments_a)
    whole = masked_whiten(x, mask, eps=1e-6)
    close(torch.cat([out_a, out_b]), whole, atol=1e-12)
    # and the whole batch by hand: n = 7, Σ x = 25.5, Σ x² = 131.25
    mean = 25.5 / 7
    sd = math.sqrt(131.25 / 7 - mean**2)
    close(whole, ((x - mean) / (sd + 1e-6)) * mask)


def test_reinforce_pp_split_over_two_ranks_equals_whole_batch():
    rewards = t([[1.0, 0.0], [2.0, NAN]])
    mask = t([[1, 1, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1]])
    # no baseline; rank A = group 0 (rows 0-1): tokens 1, 1, 0 → [2, 2, 3];
    # rank B = group 1 (rows 2-3): token 2 (the NaN row is not counted) → [2, 4, 1]
    moments_a, moments_b = t([2.0, 2.0, 3.0]), t([2.0, 4.0, 1.0])
    out_a = reinforce_pp_advantages(rewards[:1], mask[:2], False, reduce=lambda v: v + moments_b)
    out_b = reinforce_pp_advantages(rewards[1:], mask[2:], False, reduce=lambda v: v + moments_a)
    close(torch.cat([out_a, out_b]), reinforce_pp_advantages(rewards, mask, False), atol=1e-12)
    # with the group baseline: rank A tokens 0.5, 0.5, −0.5 → [0.5, 0.75, 3]; rank B token 0 → [0, 0, 1]
    moments_a, moments_b = t([0.5, 0.75, 3.0]), t([0.0, 0.0, 1.0])
    out_a = reinforce_pp_advantages(rewards[:1], mask[:2], True, reduce=lambda v: v + moments_b)
    out_b = reinforce_pp_advantages(rewards[1:], mask[2:], True, reduce=lambda v: v + moments_a)
    close(torch.cat([out_a, out_b]), reinforce_pp_advantages(rewards, mask, True), atol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------------------------------------------


def _gae_by_hand(rewards, values, gamma, lam):
    """Three response tokens: δ_t = r_t + γ V_{t+1} − V_t with V_3 = 0, Â_t = δ_t + γλ Â_{t+1}."""
    (r0, r1, r2), (v0, v1, v2) = rewards, values
    d2 = r2 + gamma * 0.0 - v2
    d1 = r1 + gamma * v2 - v1
    d0 = r0 + gamma * v1 - v0
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    return [a0, a1, a2]


def test_gae_hand_computed():
    gamma, lam = 0.9, 0.8
    # δ_2 = 1 − 0.6 = 0.4, δ_1 = 0.9·0.6 − 0.4 = 0.14, δ_0 = 0.2 + 0.9·0.4 − 0.5 = 0.06
    # Â_2 = 0.4, Â_1 = 0.14 + 0.72·0.4 = 0.428, Â_0 = 0.06 + 0.72·0.428 = 0.36816
    adv, ret = gae_advantages(t([[0.2, 0.0, 1.0]]), t([[0.5, 0.4, 0.6]]), t([[1, 1, 1]]), gamma, lam)
    close(adv, [[0.36816, 0.428, 0.4]])
    close(ret, [[0.36816 + 0.5, 0.428 + 0.4, 0.4 + 0.6]])  # R_t = Â_t + V_t
    close(adv, [_gae_by_hand([0.2, 0.0, 1.0], [0.5, 0.4, 0.6], gamma, lam)])


def test_gae_ignores_padding_before_and_after_the_response():
    gamma, lam = 0.9, 0.8
    expected = _gae_by_hand([0.2, 0.0, 1.0], [0.5, 0.4, 0.6], gamma, lam)
    # row 0: prompt/padding before (2 tokens) and after (1 token), with garbage rewards and values there;
    # row 1: the response at the start, padding after; row 2: padding before only
    rewards = t([[7.0, -3.0, 0.2, 0.0, 1.0, 5.0], [0.2, 0.0, 1.0, 9.0, 9.0, 9.0], [4.0, 4.0, 4.0, 0.2, 0.0, 1.0]])
    values = t([[9.0, 8.0, 0.5, 0.4, 0.6, 3.0], [0.5, 0.4, 0.6, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 0.5, 0.4, 0.6]])
    mask = t([[0, 0, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    adv, ret = gae_advantages(rewards, values, mask, gamma, lam)
    a0, a1, a2 = expected
    r0, r1, r2 = a0 + 0.5, a1 + 0.4, a2 + 0.6
    close(adv, [[0, 0, a0, a1, a2, 0], [a0, a1, a2, 0, 0, 0], [0, 0, 0, a0, a1, a2]])
    close(ret, [[0, 0, r0, r1, r2, 0], [r0, r1, r2, 0, 0, 0], [0, 0, 0, r0, r1, r2]])


def test_gae_gamma_lam_one_is_return_minus_value():
    # γ = λ = 1: Â_t = Σ_{k≥t} r_k − V_t (the V terms telescope); with the outcome reward 1 on the last token
    values = t([[0.2, 0.5, 0.9, 0.0]])
    mask = t([[1, 1, 1, 0]])
    adv, ret = gae_advantages(t([[0.0, 0.0, 1.0, 0.0]]), values, mask, 1.0, 1.0)
    close(adv, [[1 - 0.2, 1 - 0.5, 1 - 0.9, 0.0]])
    close(ret, [[1.0, 1.0, 1.0, 0.0]])
    # per-token rewards too: rewards 0.5, −0.25, 1 → returns-to-go 1.25, 0.75, 1
    adv, _ = gae_advantages(t([[0.5, -0.25, 1.0, 0.0]]), values, mask, 1.0, 1.0)
    close(adv, [[1.25 - 0.2, 0.75 - 0.5, 1.0 - 0.9, 0.0]])


def test_gae_length_one_response_and_empty_row():
    # one response token: Â = r − V (no bootstrap), whatever γ and λ
    adv, ret = gae_advantages(t([[0.0, 1.0, 0.0], [3.0, 3.0, 3.0]]), t([[5.0, 0.3, 5.0], [1.0, 1.0, 1.0]]),
                              t([[0, 1, 0], [0, 0, 0]]), 0.9, 0.7)
    close(adv, [[0.0, 1.0 - 0.3, 0.0], [0.0, 0.0, 0.0]])
    close(ret, [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_outcome_token_rewards():
    # the reward lands on the last response token; NaN → 0; a row without response tokens gets nothing
    rewards = t([1.0, NAN, 0.5, 2.0, -1.0])
    mask = t([[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0], [0, 1, 0]])
    out = outcome_token_rewards(rewards, mask)
    close(out, [[0, 1.0, 0], [0, 0, 0], [0, 0, 0.5], [0, 0, 0], [0, -1.0, 0]])
    # fed to GAE with γ = λ = 1: Â_t = r − V_t on the response
    adv, _ = gae_advantages(out, t([[0.25, 0.5, 9.0]] * 5), mask, 1.0, 1.0)
    close(adv[0], [1.0 - 0.25, 1.0 - 0.5, 0.0])
    close(adv[2], [0.0, 0.5 - 0.5, 0.5 - 9.0])


# --------------------------------------------------------------------------------------------------------------
# Advantage bounds
# --------------------------------------------------------------------------------------------------------------


def test_bound_advantages_clamp_and_scale():
    adv = t([[3.0, -0.5], [-4.0, 10.0]])
    mask = t([[1, 1], [1, 0]])  # the 10 is off the mask
    close(bound_advantages(adv, mask, 2.0, "clamp"), [[2.0, -0.5], [-2.0, 2.0]])  # entry by entry
    # scale: max |Â| over the mask = 4 > 2 → everything × 2/4
    close(bound_advantages(adv, mask, 2.0, "scale"), [[1.5, -0.25], [-2.0, 5.0]])
    # scale below the limit: min(1, 5/4) = 1 → unchanged
    close(bound_advantages(adv, mask, 5.0, "scale"), adv)
    # limit ≤ 0: no-op (even with an unknown mode)
    for limit in (0.0, -1.0):
        for mode in ("clamp", "scale", "nope"):
            assert torch.equal(bound_advantages(adv, mask, limit, mode), adv)
    # an all-zero batch does not divide by zero
    assert torch.equal(bound_advantages(torch.zeros(2, 2, dtype=F64), mask, 1.0, "scale"),
                       torch.zeros(2, 2, dtype=F64))
    with pytest.raises(ValueError, match="bound mode"):
        bound_advantages(adv, mask, 1.0, "nope")


def test_bound_advantages_scale_over_two_ranks():
    adv = t([[3.0, -0.5], [-4.0, 1.0], [0.25, -1.0]])
    mask = t([[1, 1], [1, 0], [1, 1]])
    seen = []

    def reduce_max_for(other_peak: float):
        def reduce_max(v: torch.Tensor) -> torch.Tensor:
            seen.append(v.clone())
            return torch.maximum(v, t([other_peak]))
        return reduce_max

    # rank A: rows 0-1, local peak 4; rank B: row 2, local peak 1; global peak 4 → factor 2/4 on both
    out_a = bound_advantages(adv[:2], mask[:2], 2.0, "scale", reduce_max_for(1.0))
    out_b = bound_advantages(adv[2:], mask[2:], 2.0, "scale", reduce_max_for(4.0))
    close(seen[0], [4.0])  # reduce_max gets a 1-element tensor: the local max of |Â| on the mask
    close(seen[1], [1.0])
    close(torch.cat([out_a, out_b]), adv * 0.5)
    close(torch.cat([out_a, out_b]), bound_advantages(adv, mask, 2.0, "scale"))


# --------------------------------------------------------------------------------------------------------------
# Policy losses
# --------------------------------------------------------------------------------------------------------------


def _policy(kind, logp_values, anchor, adv, mask=None, eps_low=0.2, eps_high=0.2, c=3.0):
    """(loss, indicators, d Σ_t mask·ℓ / d logp) with logp a leaf tensor."""
    logp = t(logp_values).requires_grad_(True)
    mask = torch.ones_like(logp) if mask is None else mask
    loss, ind = policy_loss(kind, logp, anchor, adv, mask, eps_low, eps_high, c)
    (loss * mask).sum().backward()
    return loss.detach(), ind, logp.grad


def test_ppo_loss_values_indicators_and_gradient():
    ratios = [1.5, 0.5, 1.1, 0.7, 1.5, 0.9]
    adv = t([[2.0, -1.0, 1.0, 1.0, -1.0, -1.0]])
    logp = [[math.log(r) for r in ratios]]  # anchor 0 → r = exp(logp)
    loss, ind, grad = _policy("ppo", logp, torch.zeros(1, 6, dtype=F64), adv, eps_low=0.2, eps_high=0.28)
    # ℓ = −min(r Â, clip(r, 0.8, 1.28) Â):
    #   r=1.5, Â=2:  min(3, 2.56) = 2.56   → −2.56, clipped high, no gradient
    #   r=0.5, Â=−1: min(−0.5, −0.8) = −0.8 → 0.8, clipped low, no gradient
    #   r=1.1, Â=1:  1.1 (inside)          → −1.1, grad −Â r = −1.1
    #   r=0.7, Â=1:  min(0.7, 0.8) = 0.7    → −0.7 (low side but Â>0: unclipped), grad −0.7
    #   r=1.5, Â=−1: min(−1.5, −1.28)=−1.5 → 1.5 (high side but Â<0: unclipped), grad 1.5
    #   r=0.9, Â=−1: inside                 → 0.9, grad 0.9
    close(loss, [[-2.56, 0.8, -1.1, -0.7, 1.5, 0.9]])
    close(grad, [[0.0, 0.0, -1.1, -0.7, 1.5, 0.9]])
    assert ind["clip_high"].tolist() == [[1, 0, 0, 0, 0, 0]]
    assert ind["clip_low"].tolist() == [[0, 1, 0, 0, 0, 0]]
    assert ind["dual_clip"].tolist() == [[0, 0, 0, 0, 0, 0]]


def test_ppo_gradient_is_zero_when_clipped():
    loss, _, grad = _policy("ppo", [[0.5]], torch.zeros(1, 1, dtype=F64), t([[1.0]]))
    assert grad.item() == 0.0
    _, _, grad = _policy("ppo", [[0.1]], torch.zeros(1, 1, dtype=F64), t([[1.0]]))  # d(−rÂ)/dlogp = −rÂ
    assert grad.item() == pytest.approx(-math.exp(0.1))


def test_ppo_ratio_is_taken_against_the_anchor():
    # logp −1.0, anchor −1.1 → r = e^{0.1}; Â = 0.5 → ℓ = −0.5 e^{0.1}, grad −0.5 e^{0.1}
    loss, _, grad = _policy("ppo", [[-1.0]], t([[-1.1]]), t([[0.5]]))
    close(loss, [[-0.5 * math.exp(0.1)]])
    close(grad, [[-0.5 * math.exp(0.1)]])


def test_dapo_clip_higher_is_asymmetric():
    # the same distance 0.25 from 1 on both sides; ε_low = 0.2, ε_high = 0.28
    logp = [[math.log(1.25), math.log(0.75)]]
    adv = t([[1.0, -1.0]])
    loss, ind, grad = _policy("ppo", logp, torch.zeros(1, 2, dtype=F64), adv, eps_low=0.2, eps_high=0.28)
    # r = 1.25 < 1.28 with Â > 0: unclipped → −1.25, grad −1.25;
    # r = 0.75 < 0.8 with Â < 0: clipped → −min(−0.75, −0.8) = 0.8, grad 0
    close(loss, [[-1.25, 0.8]])
    close(grad, [[-1.25, 0.0]])
    assert ind["clip_high"].tolist() == [[0, 0]] and ind["clip_low"].tolist() == [[0, 1]]
    # symmetric ε = 0.2: the r = 1.25 token is clipped too → −1.2, grad 0
    loss, ind, grad = _policy("ppo", logp, torch.zeros(1, 2, dtype=F64), adv, eps_low=0.2, eps_high=0.2)
    close(loss, [[-1.2, 0.8]])
    close(grad, [[0.0, 0.0]])
    assert ind["clip_high"].tolist() == [[1, 0]]


def test_dual_clip_loss_values_indicators_and_gradient():
    ratios = [4.0, 2.0, 4.0, 0.5, 1.0]
    adv = t([[-1.0, -1.0, 1.0, -1.0, -2.0]])
    logp = [[math.log(r) for r in ratios]]
    loss, ind, grad = _policy("dual_clip", logp, torch.zeros(1, 5, dtype=F64), adv, eps_low=0.2, eps_high=0.28,
                              c=3.0)
    #   r=4, Â=−1: PPO ℓ = −min(−4, −1.28) = 4 > −cÂ = 3 → 3, dual bound active, no gradient
    #   r=2, Â=−1: PPO ℓ = 2 ≤ 3 → 2, grad −Âr = 2
    #   r=4, Â=1:  Â > 0 → PPO: −min(4, 1.28) = −1.28, clipped high, no gradient
    #   r=0.5, Â=−1: PPO ℓ = −min(−0.5, −0.8) = 0.8 ≤ 3, clipped low, no gradient
    #   r=1, Â=−2: ℓ = 2 ≤ 6, grad 2
    close(loss, [[3.0, 2.0, -1.28, 0.8, 2.0]])
    close(grad, [[0.0, 2.0, 0.0, 0.0, 2.0]])
    assert ind["dual_clip"].tolist() == [[1, 0, 0, 0, 0]]
    assert ind["clip_high"].tolist() == [[0, 0, 1, 0, 0]]
    assert ind["clip_low"].tolist() == [[0, 0, 0, 1, 0]]
    # plain PPO on the same tokens leaves the r=4, Â=−1 loss unbounded (4) with gradient −Âr = 4
    loss, ind, grad = _policy("ppo", logp, torch.zeros(1, 5, dtype=F64), adv, eps_low=0.2, eps_high=0.28)
    close(loss[:, :1], [[4.0]])
    close(grad[:, :1], [[4.0]])
    assert ind["dual_clip"].sum().item() == 0


def test_dual_clip_bound_active_exactly_when_ratio_exceeds_c():
    # Â < 0, r > 1 + ε: ℓ = −r Â = r|Â|; the bound c|Â| binds iff r > c
    ratios = [2.5, 2.9, 3.1, 5.0]
    logp = [[math.log(r) for r in ratios]]
    loss, ind, _ = _policy("dual_clip", logp, torch.zeros(1, 4, dtype=F64), t([[-0.5] * 4]), c=3.0)
    close(loss, [[2.5 * 0.5, 2.9 * 0.5, 3.0 * 0.5, 3.0 * 0.5]])
    assert ind["dual_clip"].tolist() == [[0, 0, 1, 1]]


def test_gspo_sequence_ratio_value_indicators_and_gradient():
    eps = 0.05
    # log ratios (anchor 0): row 0 mean (0.3 − 0.1 + 0.1)/3 = 0.1 → s = e^{0.1} ≈ 1.105 > 1.05, Â = +1 → clipped
    # row 1 masked mean (0.02 − 0.04)/2 = −0.01 (the padding 5.0 is ignored) → s = e^{−0.01}, inside, Â = 2
    # row 2 mean −0.2 → s = e^{−0.2} ≈ 0.819 < 0.95, Â = −1 → clipped
    logp = [[0.3, -0.1, 0.1], [0.02, -0.04, 5.0], [-0.2, -0.2, -0.2]]
    mask = t([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    adv = t([[1.0] * 3, [2.0] * 3, [-1.0] * 3])
    loss, ind, grad = _policy("gspo", logp, torch.zeros(3, 3, dtype=F64), adv, mask=mask, eps_low=eps,
                              eps_high=eps)
    s1 = math.exp(-0.01)
    # value of every token's ratio is s_i: row 0 → −min(1.105, 1.05) = −1.05; row 1 → −2 s1; row 2 → 0.95
    close(loss * mask, [[-1.05] * 3, [-2 * s1, -2 * s1, 0.0], [0.95] * 3])
    # gradient on token t is −s_i Â (d s_{i,t} / d logp_t = s_i; no 1/|y| here, no cross-token terms),
    # zero where the sequence is clipped
    close(grad * mask, [[0.0] * 3, [-2 * s1, -2 * s1, 0.0], [0.0] * 3])
    assert (ind["clip_high"] * mask).tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert (ind["clip_low"] * mask).tolist() == [[0, 0, 0], [0, 0, 0], [1, 1, 1]]
    assert ind["dual_clip"].sum().item() == 0


def test_gspo_gradient_does_not_depend_on_the_other_tokens():
    # same s_i from different token log-ratios → the same per-token gradient −s_i Â
    mask = t([[1, 1]])
    _, _, g1 = _policy("gspo", [[0.01, -0.01]], torch.zeros(1, 2, dtype=F64), t([[1.5, 1.5]]), mask=mask)
    _, _, g2 = _policy("gspo", [[0.0, 0.0]], torch.zeros(1, 2, dtype=F64), t([[1.5, 1.5]]), mask=mask)
    close(g1, [[-1.5, -1.5]])  # s = e^0 = 1
    close(g2, [[-1.5, -1.5]])


def test_cispo_loss_values_indicators_and_gradient():
    ratios = [1.5, 0.5, 1.1, 1.5]
    adv = t([[1.0, -1.0, 2.0, -1.0]])
    logp_vals = [-0.5, -1.0, -2.0, -0.3]
    anchor = t([[lp - math.log(r) for lp, r in zip(logp_vals, ratios, strict=True)]])
    loss, ind, grad = _policy("cispo", [logp_vals], anchor, adv, eps_low=0.2, eps_high=0.28)
    # ℓ = −sg(clip(r, 0.8, 1.28)) Â log π: weights 1.28, 0.8, 1.1, 1.28
    close(loss, [[-1.28 * 1.0 * -0.5, -0.8 * -1.0 * -1.0, -1.1 * 2.0 * -2.0, -1.28 * -1.0 * -0.3]])
    # gradient −w Â, never zero (even where the ratio is outside the range, on either side of Â)
    close(grad, [[-1.28 * 1.0, -0.8 * -1.0, -1.1 * 2.0, -1.28 * -1.0]])
    assert (grad != 0).all()
    # the weight is capped whatever the sign of Â
    assert ind["clip_high"].tolist() == [[1, 0, 0, 1]]
    assert ind["clip_low"].tolist() == [[0, 1, 0, 0]]
    assert ind["dual_clip"].sum().item() == 0


def test_reinforce_loss_ignores_the_anchor():
    adv = t([[2.0, -0.5]])
    loss, ind, grad = _policy("reinforce", [[-0.5, -2.0]], t([[5.0, -5.0]]), adv)
    close(loss, [[-2.0 * -0.5, 0.5 * -2.0]])  # ℓ = −Â log π
    close(grad, [[-2.0, 0.5]])  # −Â
    assert all(v.sum().item() == 0 for v in ind.values())
    assert set(ind) == {"clip_low", "clip_high", "dual_clip"}


def test_every_policy_loss_kind_runs_and_unknown_raises():
    logp, anchor, adv, mask = t([[-1.0, -2.0]]), t([[-1.0, -2.0]]), t([[1.0, -1.0]]), t([[1, 1]])
    for kind in POLICY_LOSSES:
        loss, ind = policy_loss(kind, logp, anchor, adv, mask, 0.2, 0.2)
        assert loss.shape == (1, 2) and set(ind) == {"clip_low", "clip_high", "dual_clip"}
    # on-policy (r = 1): ppo, dual_clip, gspo all give ℓ = −Â
    for kind in ("ppo", "dual_clip", "gspo"):
        close(policy_loss(kind, logp, anchor, adv, mask, 0.2, 0.2)[0], [[-1.0, 1.0]])
    with pytest.raises(ValueError, match="unknown policy loss"):
        policy_loss("ppo2", logp, anchor, adv, mask, 0.2, 0.2)


# --------------------------------------------------------------------------------------------------------------
# Importance weights and the value loss
# --------------------------------------------------------------------------------------------------------------


def test_importance_weights_token_level():
    prox = t([[0.5, -1.0, 1.0, 3.0], [-0.2, 0.0, 0.0, 0.0]])
    behaviour = torch.zeros(2, 4, dtype=F64)
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0]])
    e = math.exp
    on = mask.bool()
    w, ind = importance_weights(prox, behaviour, mask, "plain", "token", cap=2.0)
    close(w[on], [e(0.5), e(-1.0), e(1.0), e(-0.2), 1.0])
    assert ind["truncated"].sum().item() == 0 and ind["masked"].sum().item() == 0
    # tis: min(ρ, 2): e^1 ≈ 2.718 → 2
    w, ind = importance_weights(prox, behaviour, mask, "tis", "token", cap=2.0)
    close(w[on], [e(0.5), e(-1.0), 2.0, e(-0.2), 1.0])
    assert ind["truncated"][on].tolist() == [0, 0, 1, 0, 0]
    # mis: keep 1/2 ≤ ρ ≤ 2: e^{−1} ≈ 0.368 and e^1 are dropped (weight 0)
    w, ind = importance_weights(prox, behaviour, mask, "mis", "token", cap=2.0)
    close(w[on], [e(0.5), 0.0, 0.0, e(-0.2), 1.0])
    assert ind["masked"][on].tolist() == [0, 1, 1, 0, 0]
    assert ind["truncated"].sum().item() == 0


def test_importance_weights_sequence_level():
    # ρ_i = Π_t ρ_t over the response: row 0 log ρ = 0.5 − 0.2 + 0.2 = 0.5 (padding 3.0 ignored) → e^{0.5};
    # row 1: 0.4 + 0.4 = 0.8 → e^{0.8} ≈ 2.2255; row 2: −0.5 − 0.5 = −1 → e^{−1} ≈ 0.368
    prox = t([[0.5, -0.2, 0.2, 3.0], [0.4, 0.4, 0.0, 0.0], [-0.5, -0.5, 0.0, 0.0]])
    behaviour = torch.zeros(3, 4, dtype=F64)
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]])
    e = math.exp
    w, _ = importance_weights(prox, behaviour, mask, "plain", "sequence", cap=2.0)
    close(w * mask, t([[e(0.5)] * 4, [e(0.8)] * 4, [e(-1.0)] * 4]) * mask)
    w, ind = importance_weights(prox, behaviour, mask, "tis", "sequence", cap=2.0)
    close(w * mask, t([[e(0.5)] * 4, [2.0] * 4, [e(-1.0)] * 4]) * mask)
    assert (ind["truncated"] * mask).tolist() == (t([[0] * 4, [1] * 4, [0] * 4]) * mask).tolist()
    w, ind = importance_weights(prox, behaviour, mask, "mis", "sequence", cap=2.0)
    close(w * mask, t([[e(0.5)] * 4, [0.0] * 4, [0.0] * 4]) * mask)
    assert (ind["masked"] * mask).tolist() == (t([[0] * 4, [1] * 4, [1] * 4]) * mask).tolist()


def test_importance_weights_carry_no_gradient_and_reject_unknown_names():
    prox = t([[0.1, -0.1]]).requires_grad_(True)
    mask = t([[1, 1]])
    for mode in ("plain", "tis", "mis"):
        for level in ("token", "sequence"):
            w, _ = importance_weights(prox, torch.zeros(1, 2, dtype=F64), mask, mode, level, 2.0)
            assert not w.requires_grad
    with pytest.raises(ValueError, match="importance-sampling mode"):
        importance_weights(prox, torch.zeros(1, 2, dtype=F64), mask, "nope", "token", 2.0)
    with pytest.raises(ValueError, match="importance-sampling level"):
        importance_weights(prox, torch.zeros(1, 2, dtype=F64), mask, "plain", "nope", 2.0)


def test_value_loss_clipped_and_unclipped():
    values = t([[1.0, 2.0, 0.5, 1.5]]).requires_grad_(True)
    old = t([[0.8, 1.0, 0.5, 1.0]])
    returns = t([[1.5, 0.0, 1.0, 2.0]])
    loss, clipped = value_loss(values, old, returns, clip=0.2)
    # token 0: (1 − 1.5)² = 0.25; V_clip = 0.8 + 0.2 = 1.0 → 0.25 too → ½·0.25
    # token 1: (2 − 0)² = 4;  V_clip = 1.0 + 0.2 = 1.2 → 1.44 → ½·4
    # token 2: V = V_old → both 0.25 → ½·0.25
    # token 3: (1.5 − 2)² = 0.25; V_clip = 1.0 + 0.2 = 1.2 → 0.64 larger → ½·0.64, clipped, no gradient
    close(loss.detach(), [[0.125, 2.0, 0.125, 0.32]])
    assert clipped.tolist() == [[0, 0, 0, 1]]
    loss.sum().backward()
    close(values.grad, [[1.0 - 1.5, 2.0 - 0.0, 0.5 - 1.0, 0.0]])  # d ½(V − R)² / dV = V − R
    # clip ≤ 0 disables clipping: ½ (V − R)²
    for c in (0.0, -1.0):
        loss, clipped = value_loss(values.detach(), old, returns, clip=c)
        close(loss, [[0.125, 2.0, 0.125, 0.125]])
        assert clipped.sum().item() == 0


# --------------------------------------------------------------------------------------------------------------
# Loss aggregation
# --------------------------------------------------------------------------------------------------------------

LENGTHS = np.array([4, 2, 0, 3, 5])
TRAINABLE = np.array([True, True, True, False, True])  # sample 2 has no tokens, sample 3 does not train


def test_sample_loss_weights_each_mode_by_hand():
    # counted: samples 0, 1, 4 → N = 3, Σ|y| = 4 + 2 + 5 = 11
    w = sample_loss_weights(LENGTHS, TRAINABLE, "token_mean", max_len=8)
    np.testing.assert_allclose(w, [1 / 11, 1 / 11, 0, 0, 1 / 11])
    w = sample_loss_weights(LENGTHS, TRAINABLE, "seq_mean_token_mean", max_len=8)
    np.testing.assert_allclose(w, [1 / (3 * 4), 1 / (3 * 2), 0, 0, 1 / (3 * 5)])
    w = sample_loss_weights(LENGTHS, TRAINABLE, "seq_mean_token_sum", max_len=8)
    np.testing.assert_allclose(w, [1 / 3, 1 / 3, 0, 0, 1 / 3])
    w = sample_loss_weights(LENGTHS, TRAINABLE, "constant", max_len=8)
    np.testing.assert_allclose(w, [1 / (3 * 8), 1 / (3 * 8), 0, 0, 1 / (3 * 8)])


def test_sample_loss_weights_per_minibatch():
    # mini-batch 0 = samples 0, 1 (N = 2, Σ|y| = 6); mini-batch 1 = samples 2, 3, 4 → only 4 counts (N = 1, Σ|y| = 5)
    ids = np.array([0, 0, 1, 1, 1])
    np.testing.assert_allclose(sample_loss_weights(LENGTHS, TRAINABLE, "token_mean", 8, ids),
                               [1 / 6, 1 / 6, 0, 0, 1 / 5])
    np.testing.assert_allclose(sample_loss_weights(LENGTHS, TRAINABLE, "seq_mean_token_mean", 8, ids),
                               [1 / (2 * 4), 1 / (2 * 2), 0, 0, 1 / (1 * 5)])
    np.testing.assert_allclose(sample_loss_weights(LENGTHS, TRAINABLE, "seq_mean_token_sum", 8, ids),
                               [1 / 2, 1 / 2, 0, 0, 1])
    np.testing.assert_allclose(sample_loss_weights(LENGTHS, TRAINABLE, "constant", 8, ids),
                               [1 / (2 * 8), 1 / (2 * 8), 0, 0, 1 / 8])
    # a mini-batch with nothing trainable gets all zeros (and does not disturb the others)
    ids = np.array([0, 0, 1, 1, 0])
    np.testing.assert_allclose(sample_loss_weights(LENGTHS, TRAINABLE, "token_mean", 8, ids),
                               [1 / 11, 1 / 11, 0, 0, 1 / 11])
    # nothing trainable anywhere: all zeros, no division by zero
    np.testing.assert_array_equal(sample_loss_weights(LENGTHS, np.zeros(5, bool), "token_mean", 8), np.zeros(5))


def test_sample_loss_weights_unknown_mode_raises():
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        sample_loss_weights(LENGTHS, TRAINABLE, "mean", max_len=8)


def test_weighted_loss_is_invariant_to_how_the_batch_is_split():
    rng = np.random.default_rng(0)
    T = int(LENGTHS.max())
    per_token = rng.normal(size=(len(LENGTHS), T)) * (np.arange(T)[None, :] < LENGTHS[:, None])  # ℓ_it, 0 off y
    row_sums = per_token.sum(axis=1)
    counted = [0, 1, 4]
    # the whole-batch losses each mode stands for, by hand
    expected = {
        "token_mean": row_sums[counted].sum() / 11,
        "seq_mean_token_mean": np.mean([row_sums[i] / LENGTHS[i] for i in counted]),
        "seq_mean_token_sum": row_sums[counted].sum() / 3,
        "constant": row_sums[counted].sum() / (3 * 8),
    }
    assert set(expected) == set(AGGREGATIONS)
    for mode in AGGREGATIONS:
        w = sample_loss_weights(LENGTHS, TRAINABLE, mode, max_len=8)
        whole = float((w * row_sums).sum())
        assert whole == pytest.approx(expected[mode], rel=1e-12)
        for split in ([[0, 1], [2, 3, 4]], [[0], [1], [2], [3], [4]], [[4, 0], [3, 1, 2]]):
            parts = sum(float((w[rows] * row_sums[rows]).sum()) for rows in split)
            assert parts == pytest.approx(whole, rel=1e-12)
    # the silent bug the weights avoid: a token-mean taken inside each micro-batch differs from the global one
    micro = [[0, 1], [4]]
    local = sum(row_sums[rows].sum() / LENGTHS[rows].sum() for rows in micro) / len(micro)
    assert local != pytest.approx(expected["token_mean"], rel=1e-6)


# --------------------------------------------------------------------------------------------------------------
# Shaping
# --------------------------------------------------------------------------------------------------------------


def test_overlong_penalty_by_hand():
    # L_max = 10, L_buf = 4 → penalty starts after 6: 0 up to 6, (6 − |y|)/4 on (6, 10], −1 beyond 10
    out = overlong_penalty(np.array([0, 5, 6, 7, 8, 10, 11, 100]), max_len=10, buffer_len=4)
    np.testing.assert_allclose(out, [0, 0, 0, (6 - 7) / 4, (6 - 8) / 4, (6 - 10) / 4, -1, -1])
    for buf in (0, -3):  # disabled
        np.testing.assert_array_equal(overlong_penalty(np.array([5, 10, 11]), 10, buf), np.zeros(3))
    # buffer as long as the limit: linear from 0 at |y| = 0
    np.testing.assert_allclose(overlong_penalty(np.array([0, 2, 4]), 4, 4), [0, -0.5, -1])


# --------------------------------------------------------------------------------------------------------------
# KL, log-probs, entropy
# --------------------------------------------------------------------------------------------------------------


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])  # log ρ = ref − logp = −1
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(1.0)  # −log ρ
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5)  # ½ (log ρ)²
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-1) - 1 + 1)  # ρ − 1 − log ρ
    # the other direction: log ρ = +0.5
    assert kl_estimate(ref, t([-1.5]).float(), "k1").item() == pytest.approx(-0.5)
    assert kl_estimate(ref, t([-1.5]).float(), "k2").item() == pytest.approx(0.125)
    assert kl_estimate(ref, t([-1.5]).float(), "k3").item() == pytest.approx(math.exp(0.5) - 1 - 0.5)
    assert kl_estimate(ref, ref, "k3").item() == 0.0
    assert kl_estimate(logp, ref).item() == pytest.approx(math.exp(-1))  # default k3
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, ref, "k4")


def test_k3_is_unbiased_for_the_true_kl():
    p, q = torch.tensor([0.7, 0.2, 0.1], dtype=F64), torch.tensor([0.4, 0.4, 0.2], dtype=F64)
    true_kl = float((p * (p / q).log()).sum())
    # exact expectation of k3 under p over the three outcomes
    k3 = kl_estimate(p.log(), q.log(), "k3")
    assert float((p * k3).sum()) == pytest.approx(true_kl, rel=1e-9)
    assert (k3 >= 0).all()


# The KL penalty's gradient. A categorical policy π_θ = softmax(θ) over V = 5 outcomes and a fixed π_ref. Sampling
# y ~ π_θ and differentiating the estimator only through logp = log π_θ(y) (the sample is not reparameterised) has
# expected gradient Σ_y sg(π_θ(y)) ∇_θ k(y): computed exactly below by enumerating the V outcomes with the weights
# detached, through the real kl_estimate. The references are autograd gradients of the closed-form KLs.
KL_THETA = (0.3, -1.2, 0.8, 0.0, -0.4)
KL_REF_LOGITS = (-0.5, 0.4, 0.1, -1.0, 0.9)


def _kl_grads(theta=KL_THETA, ref_logits=KL_REF_LOGITS):
    """(∇ KL(π_θ ‖ π_ref), ∇ KL(π_ref ‖ π_θ), log π_ref, a function f ↦ ∇_θ f(log π_θ)) at θ."""
    ref = torch.log_softmax(t(ref_logits), -1)

    def grad(f):
        theta_ = t(theta).requires_grad_(True)
        f(torch.log_softmax(theta_, -1)).backward()
        return theta_.grad

    reverse = grad(lambda logp: (logp.exp() * (logp - ref)).sum())  # Σ π log(π / π_ref)
    forward = grad(lambda logp: (ref.exp() * (ref - logp)).sum())  # Σ π_ref log(π_ref / π)
    return reverse, forward, ref, grad


def test_kl_estimators_gradient_in_the_loss_exactly():
    """kl_in=loss: E[∇k1] = E[∇ log π] = 0; E[∇k2] = E[(log π − log π_ref) ∇ log π] = ∇ KL(π ‖ π_ref);
    E[∇k3] = E[(1 − π_ref/π) ∇ log π] = −Σ π_ref ∇ log π = ∇ KL(π_ref ‖ π) — the forward KL."""
    reverse, forward, ref, grad = _kl_grads()
    # the two directions really differ here, so the assertions below tell them apart
    assert (reverse - forward).abs().max() > 0.05 and reverse.abs().max() > 0.1

    def expected(kind):  # Σ_y sg(π(y)) ∇ k(y)
        return grad(lambda logp: (logp.exp().detach() * kl_estimate(logp, ref, kind)).sum())

    np.testing.assert_allclose(expected("k1"), np.zeros(5), rtol=0, atol=1e-15)
    np.testing.assert_allclose(expected("k2"), reverse, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(expected("k3"), forward, rtol=1e-12, atol=1e-15)


def test_kl_estimators_gradient_in_the_reward_exactly():
    """kl_in=reward: the value is a (detached) reward, so the policy gradient is E[k ∇ log π]. Only k1 gives
    ∇ KL(π ‖ π_ref) (the score-function identity); k3 gives ∇ KL(π ‖ π_ref) − ∇ KL(π_ref ‖ π), and k2
    ∇ E[k2] − ∇ KL(π ‖ π_ref): both vanish to first order in θ − θ_ref (no pull back to the reference)."""
    reverse, forward, ref, grad = _kl_grads()

    def expected(kind):  # Σ_y sg(π(y) k(y)) ∇ log π(y)
        return grad(lambda logp: (logp.exp().detach() * kl_estimate(logp, ref, kind).detach() * logp).sum())

    mean_k2 = grad(lambda logp: (logp.exp() * 0.5 * (logp - ref).pow(2)).sum())  # ∇ Σ π ½ (log π − log π_ref)²
    np.testing.assert_allclose(expected("k1"), reverse, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(expected("k3"), reverse - forward, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(expected("k2"), mean_k2 - reverse, rtol=1e-10, atol=1e-15)
    # θ_ref + ε·d: relative to ∇ KL(π ‖ π_ref), k2's and k3's reward gradients shrink like ε, k1's stays 1
    direction = t([1.0, -0.5, 0.2, 0.7, -1.4])
    for eps in (1e-1, 1e-2, 1e-3):
        theta = (t(KL_THETA) + eps * direction).tolist()
        reverse, _, ref, grad = _kl_grads(theta, KL_THETA)
        for kind, lo, hi in (("k1", 1.0 - 1e-9, 1.0 + 1e-9), ("k2", 0.3 * eps, 1.0 * eps),
                             ("k3", 0.3 * eps, 1.0 * eps)):
            g = grad(lambda logp: (logp.exp().detach() * kl_estimate(logp, ref, kind).detach() * logp).sum())
            assert lo < float(g.norm() / reverse.norm()) < hi, (kind, eps)


def test_kl_estimators_gradient_monte_carlo():
    """The same with sampled tokens through token_logprobs, as the learner computes it: the mean of ∇k over N draws
    is within 5 standard errors of the exact expectation (k2 → reverse KL's gradient, k3 → forward's, k1 → 0)."""
    reverse, forward, ref, _ = _kl_grads()
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    tokens = torch.multinomial(torch.softmax(t(KL_THETA), -1), n, replacement=True, generator=gen).view(1, n)
    p = torch.softmax(t(KL_THETA), -1)
    for kind, exact in (("k1", torch.zeros(5, dtype=F64)), ("k2", reverse), ("k3", forward)):
        theta = t(KL_THETA).requires_grad_(True)
        logp = token_logprobs(theta.view(1, 1, 5).expand(1, n, 5), tokens).double()  # float32 inside, as in training
        kl_estimate(logp, ref[tokens], kind).mean().backward()
        # per-outcome gradient of k(y): k'(log π(y)) (e_y − π); its exact variance under π gives the standard error
        d = {"k1": torch.ones(5, dtype=F64), "k2": p.log() - ref, "k3": 1 - (ref - p.log()).exp()}[kind]
        per_y = d.view(5, 1) * (torch.eye(5, dtype=F64) - p)
        se = ((p.view(5, 1) * (per_y - exact).pow(2)).sum(0) / n).sqrt()
        assert ((theta.grad - exact).abs() < 5 * se + 1e-6).all(), (kind, theta.grad, exact, se)
        if kind == "k3":  # and it tells the two directions apart
            assert ((theta.grad - reverse).abs() > 10 * se).any()


def test_kl_estimators_values_expectation():
    """The logged value (train/kl): E_π[k1] = E_π[k3] = KL(π ‖ π_ref); E_π[k2] = ½ E_π[(log π − log π_ref)²] is not."""
    logp = torch.log_softmax(t(KL_THETA), -1)
    ref = torch.log_softmax(t(KL_REF_LOGITS), -1)
    p, q = logp.exp(), ref.exp()
    reverse = float((p * (p / q).log()).sum())
    mean = {k: float((p * kl_estimate(logp, ref, k)).sum()) for k in ("k1", "k2", "k3")}
    assert mean["k1"] == pytest.approx(reverse, rel=1e-12)
    assert mean["k3"] == pytest.approx(reverse, rel=1e-12)
    assert abs(mean["k2"] - reverse) > 0.01 * reverse  # biased (only a second-order approximation of the KL)
    assert mean["k2"] == pytest.approx(float((p * 0.5 * ((p / q).log()) ** 2).sum()), rel=1e-12)


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = [0.25, 0.75]
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    assert token_logprobs(logits, torch.tensor([[0]])).item() == pytest.approx(math.log(0.25))
    assert entropy_from_logits(logits).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    # temperature 2 divides the logits: p ∝ [1, sqrt(3)]
    p1 = math.sqrt(3) / (1 + math.sqrt(3))
    assert token_logprobs(logits, torch.tensor([[1]]), temperature=2.0).item() == pytest.approx(math.log(p1))
    assert entropy_from_logits(logits, temperature=2.0).item() == pytest.approx(
        -(p1 * math.log(p1) + (1 - p1) * math.log(1 - p1)))
    # uniform over 4 → log 4
    assert entropy_from_logits(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))
