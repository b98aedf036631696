"""GRPO: group-normalised advantages and a PPO-style clipped objective, with an optional KL to a reference.

Shapes: G groups of n samples; B = G·n sequences; T response tokens (padded, ``mask`` marks real tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Â_i = (r_i − mean(r)) / (std(r) + eps) within each group.

    ``rewards`` [G, n] → [G, n]. ``std`` is the unbiased sample standard deviation (as in the GRPO paper's
    reference implementations). NaN marks a sample without a reward (its reward function failed): it is left
    out of its group's mean and std and gets Â = 0. A group with fewer than two rewarded samples, or whose
    rewards are all equal, carries no preference between its samples and gets Â = 0.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, group_size], got shape {tuple(rewards.shape)}")
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    count = valid.sum(dim=1, keepdim=True)
    mean = r.sum(dim=1, keepdim=True) / count.clamp(min=1)
    centered = torch.where(valid, r - mean, torch.zeros_like(r))
    std = (centered.pow(2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    adv = centered / (std + eps)
    return torch.where(count >= 2, adv, torch.zeros_like(adv))


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[token] per position. ``logits`` [B, T, V], ``tokens`` [B, T] → [B, T]."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1).long()).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """H = −Σ_v p_v log p_v of softmax(logits / temperature). [B, T, V] → [B, T]."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimators of KL(π ‖ π_ref) from samples of π (Schulman, "Approximating KL divergence").

    With log ρ = ref_logp − logp:  k1 = −log ρ;  k2 = ½ (log ρ)²;  k3 = ρ − 1 − log ρ  (unbiased and ≥ 0).
    """
    log_ratio = ref_logp - logp
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.pow(2)
    if kind == "k3":
        return log_ratio.exp() - 1.0 - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


def clipped_policy_loss(
    logp: torch.Tensor, behaviour_logp: torch.Tensor, adv: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate per token: ℓ_t = −min(ρ_t Â, clip(ρ_t, 1 − ε, 1 + ε) Â), ρ_t = exp(logp − behaviour_logp).

    ``logp``, ``behaviour_logp`` [B, T]; ``adv`` [B] (one advantage per sequence, broadcast over tokens).
    Returns (ℓ [B, T], clipped [B, T] as float: 1 where the clipped branch was taken and is the active minimum).
    """
    ratio = torch.exp(logp - behaviour_logp)
    adv = adv.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).float()


def token_sum_over(x: torch.Tensor, mask: torch.Tensor, num_tokens: float) -> torch.Tensor:
    """Σ_t x_t·mask_t / num_tokens: a token-mean whose denominator is the token count of the *whole* batch.

    Passing the global count (over all micro-batches and data-parallel ranks) makes the summed gradient
    independent of how the batch is split: each micro-batch contributes its share of one token-mean.
    """
    return (x * mask).sum() / max(float(num_tokens), 1.0)
