"""Advantage estimators: how much better than expected each response (or token) was.

Outcome estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++) see one scalar reward per response: ``rewards`` [G, n]
for G prompt groups of n samples; NaN marks a sample without a reward (its reward function failed), which is
left out of every baseline and gets Â = 0. GAE sees per-token rewards and a learned value per token.

Statistics over the *whole* batch (REINFORCE++'s normalisation, GAE's whitening, advantage scaling) take a
``reduce`` callable that sums a tensor over data-parallel ranks (identity on one rank), so the result does not
depend on how the batch is spread over learners.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums over data-parallel ranks (in place or not), returns the sum
ReduceMax = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _group_stats(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(valid mask, rewards with NaN → 0, count of valid per group [G, 1], group mean [G, 1])."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, group_size], got shape {tuple(rewards.shape)}")
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    count = valid.sum(dim=1, keepdim=True)
    return valid, r, count, r.sum(dim=1, keepdim=True) / count.clamp(min=1)


def _no_preference(rewards: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
    """[G, 1] bool: fewer than two rewarded samples, or max − min of the rewarded ones ≤ tol.

    Compared on the rewards themselves, not on r − mean: the float mean of equal values such as 0.2 is off by an
    ulp, which would otherwise give an all-equal group a small advantage of one sign for every sample."""
    valid = ~torch.isnan(rewards)
    hi = torch.where(valid, rewards, torch.full_like(rewards, -torch.inf)).max(dim=1, keepdim=True).values
    lo = torch.where(valid, rewards, torch.full_like(rewards, torch.inf)).min(dim=1, keepdim=True).values
    return (valid.sum(dim=1, keepdim=True) < 2) | (hi - lo <= tol)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: Â_i = (r_i − mean(r)) / (std(r) + eps) within each group.  [G, n] → [G, n].

    ``std`` is the unbiased sample standard deviation. A group with fewer than two rewarded samples, or whose
    rewards are all equal, carries no preference between its samples and gets Â = 0.
    """
    valid, r, count, mean = _group_stats(rewards)
    centered = torch.where(valid, r - mean, torch.zeros_like(r))
    std = (centered.pow(2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    adv = centered / (std + eps)
    return torch.where(_no_preference(rewards), torch.zeros_like(adv), adv)


def group_centered_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO (and REINFORCE++-baseline's first step): Â_i = r_i − mean(r), no division by the group std.

    Dividing by the std up-weights prompts that are nearly always solved or nearly always failed; Dr. GRPO
    drops it (together with the per-response length normaliser, see :mod:`rlsys.algos.aggregation`).
    """
    valid, r, count, mean = _group_stats(rewards)
    adv = torch.where(valid, r - mean, torch.zeros_like(r))
    return torch.where(_no_preference(rewards), torch.zeros_like(adv), adv)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO: Â_i = r_i − (1 / (k − 1)) Σ_{j ≠ i} r_j, the leave-one-out baseline over the k rewarded samples.

    Equals k / (k − 1) · (r_i − mean(r)). A group with fewer than two rewarded samples gets Â = 0.
    """
    valid, r, count, _ = _group_stats(rewards)
    total = r.sum(dim=1, keepdim=True)
    baseline = (total - r) / (count - 1).clamp(min=1)
    adv = torch.where(valid, r - baseline, torch.zeros_like(r))
    return torch.where(_no_preference(rewards), torch.zeros_like(adv), adv)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6, reduce: Reduce = _identity,
                  shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / (std + eps) over the entries where ``mask`` is 1, summed over ranks by ``reduce``.

    ``std`` is the population standard deviation over all masked entries of the global batch. Entries outside
    the mask come back as 0. ``shift_mean=False`` only rescales (keeps the sign of every entry).
    """
    mask = mask.to(x.dtype)
    moments = reduce(torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()]))
    n = moments[2].clamp(min=1.0)
    mean = moments[0] / n
    var = (moments[1] / n - mean * mean).clamp(min=0.0)
    centred = x - mean if shift_mean else x
    return centred / (var.sqrt() + eps) * mask


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_baseline: bool, eps: float = 1e-6,
                            reduce: Reduce = _identity) -> torch.Tensor:
    """REINFORCE++: the reward (optionally minus its group mean, "REINFORCE++-baseline") broadcast to every token
    of the response, then normalised over all response tokens of the global batch.

    ``rewards`` [G, n]; ``mask`` [G·n, T] marks response tokens (rows in group order). Returns [G·n, T].
    """
    base = group_centered_advantages(rewards) if group_baseline else torch.nan_to_num(rewards, nan=0.0)
    rewarded = (~torch.isnan(rewards)).reshape(-1, 1).to(mask.dtype)
    token_mask = mask * rewarded
    per_token = base.reshape(-1, 1).expand_as(mask)
    return masked_whiten(per_token, token_mask, eps, reduce)


def gae_advantages(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                   lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (Schulman et al. 2016).

    δ_t = r_t + γ V_{t+1} − V_t (V past the last response token is 0);  Â_t = Σ_k (γλ)^k δ_{t+k};  R_t = Â_t + V_t.
    ``token_rewards``, ``values``, ``mask`` [B, T]; t runs over the positions where ``mask`` is 1, so tokens off
    the mask — the prompt and padding around the response, and inside a multi-turn response the observations
    between the policy's turns — are not steps: the sum runs through them unchanged, and V_{t+1} is the value at
    the next policy token. Returns (advantages, returns), both 0 off the mask.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = token_rewards * mask
    adv = torch.zeros_like(values)
    next_value = torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    running = torch.zeros_like(next_value)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(m > 0, delta + gamma * lam * running, running)  # off the mask: not a step
        adv[:, t] = running * m
        next_value = torch.where(m > 0, values[:, t], next_value)
    return adv, (adv + values) * mask


def outcome_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards for GAE from one reward per response: the reward on the last response token, 0 elsewhere.

    ``rewards`` [B] (NaN → 0), ``mask`` [B, T] → [B, T].
    """
    mask = mask.to(torch.float32)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values
    out = torch.zeros_like(mask)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    out[rows, last[rows]] = torch.nan_to_num(rewards.to(out.dtype), nan=0.0)[rows]
    return out


def bound_advantages(adv: torch.Tensor, mask: torch.Tensor, limit: float, mode: str,
                     reduce_max: ReduceMax = _identity) -> torch.Tensor:
    """Bound advantages to |Â| ≤ ``limit`` to keep one outlier from dominating a step's gradient.

    ``clamp``: Â ← clip(Â, −limit, limit), entry by entry. ``scale``: Â ← Â · min(1, limit / max|Â|) with the max
    over the global batch (``reduce_max`` takes it over ranks): keeps the ranking and relative size of every
    advantage and only shrinks the whole batch when its largest advantage exceeds the limit. ``limit`` ≤ 0: no-op.
    """
    if limit <= 0:
        return adv
    if mode == "clamp":
        return adv.clamp(-limit, limit)
    if mode == "scale":
        peak = reduce_max((adv.abs() * mask).max().reshape(1)).squeeze()
        return adv * torch.clamp(limit / peak.clamp(min=1e-12), max=1.0)
    raise ValueError(f"unknown advantage bound mode {mode!r}; use clamp or scale")


def zero_variance_groups(rewards: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """[G, n] → [G] bool: groups whose rewarded samples all got the same reward (or fewer than two were rewarded).

    Such a group carries no preference between its samples: GRPO gives it Â = 0, yet it still dilutes a
    token-mean. Filtering removes it from the loss and its normaliser.
    """
    return _no_preference(rewards, tol).squeeze(1)
