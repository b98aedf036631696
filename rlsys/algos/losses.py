"""Per-token policy losses, importance weights for off-policy correction, the value loss, KL and entropy.

Every loss here returns a per-token tensor ℓ [B, T]; how tokens are averaged into one scalar is the separate
business of :mod:`rlsys.algos.aggregation`. Conventions: ``logp`` is log π_θ (with gradient) of the sampled
tokens; ``anchor_logp`` is the policy the ratio is taken against — the behaviour policy (naive PPO) or the
proximal policy recomputed by the learner at the start of the step (decoupled PPO); ``adv`` [B, T] is the
advantage broadcast to tokens. Ratios: r_t = exp(logp_t − anchor_logp_t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlsys.algos.names import IS_MODES, POLICY_LOSSES

MAX_LOG_RATIO = 20.0  # exp(20) ≈ 5e8: sequence-level ratios are products and overflow otherwise


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

    With log ρ = ref_logp − logp:  k1 = −log ρ;  k2 = ½ (log ρ)²;  k3 = ρ − 1 − log ρ.

    Values (E over y ~ π): k1 and k3 are unbiased for KL(π ‖ π_ref) (k3 is also ≥ 0 per token, lower variance);
    k2 is biased, ½ E[(log π − log π_ref)²], equal to the KL only to second order.

    Gradients (y ~ π, differentiated only through ``logp``, as in the loss; ``tests/test_algos.py`` pins them):

    - in the loss (``kl_in=loss``): E[∇k1] = E[∇ log π] = 0 (no penalty at all);
      E[∇k2] = E[(log π − log π_ref) ∇ log π] = ∇ KL(π ‖ π_ref), the reverse KL; E[∇k3] = E[(1 − ρ) ∇ log π] =
      ∇ KL(π_ref ‖ π), the *forward* KL (close to the reverse one's only near π_ref). Use k2. Per token this is
      the gradient of the KL at each sampled prefix; the prefixes' own dependence on θ is not differentiated.
    - in the reward (``kl_in=reward``, the value is a detached reward): E[k ∇ log π] is ∇ KL(π ‖ π_ref) for k1
      (summed over a response: the sequence-level KL's gradient); for k3 it is ∇ KL(π ‖ π_ref) − ∇ KL(π_ref ‖ π),
      for k2 ∇ E[k2] − ∇ KL(π ‖ π_ref): both vanish to first order in π − π_ref (no pull back). Use k1.
    """
    log_ratio = ref_logp - logp
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.pow(2)
    if kind == "k3":
        return log_ratio.exp() - 1.0 - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


def _masked_seq_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t x·mask / Σ_t mask per row, [B, T] → [B, 1] (0 for a row without tokens)."""
    return (x * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)


def policy_loss(
    kind: str, logp: torch.Tensor, anchor_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, eps_low: float,
    eps_high: float, dual_clip_c: float = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token policy loss ℓ [B, T] and indicator tensors for metrics ({name: [B, T] float}).

    - ``ppo``: ℓ = −min(r Â, clip(r, 1 − ε_low, 1 + ε_high) Â). With ε_high > ε_low this is DAPO's clip-higher.
    - ``dual_clip``: PPO, and for Â < 0 additionally ℓ ≤ −c Â (Ye et al. 2020): a huge ratio on a bad token cannot
      produce an unbounded loss.
    - ``gspo``: the sequence ratio s_i = exp(mean_t (logp − anchor)) replaces r, clipped at the sequence level
      (Zheng et al. 2025, "GSPO-token" form: s_{i,t} = sg(s_i) · π_θ(y_t) / sg(π_θ(y_t)), so the value is s_i and
      the gradient is s_i Â ∇ log π_θ(y_t)). Pair it with ``seq_mean_token_mean`` aggregation and small ε.
    - ``cispo``: ℓ = −sg(clip(r, 1 − ε_low, 1 + ε_high)) Â log π_θ (MiniMax-M1): the importance weight is clipped and
      detached, so no token's gradient is ever zeroed, only re-weighted.
    - ``reinforce``: ℓ = −Â log π_θ (no ratio; off-policy correction comes only from importance weights).

    Indicators: ``clip_low`` / ``clip_high`` mark tokens whose ratio is outside [1 − ε_low, 1 + ε_high] on the
    side where it changes the gradient (PPO/GSPO: clipped to zero; CISPO: weight capped); ``dual_clip`` marks
    tokens where the dual-clip bound is active.
    """
    zeros = torch.zeros_like(logp)
    if kind == "reinforce":
        return -adv * logp, {"clip_low": zeros, "clip_high": zeros, "dual_clip": zeros}
    log_ratio = (logp - anchor_logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    if kind == "gspo":
        seq_log_ratio = _masked_seq_mean(log_ratio, mask).detach()
        ratio = torch.exp(seq_log_ratio + logp - logp.detach())
    else:
        ratio = torch.exp(log_ratio)
    low, high = 1.0 - eps_low, 1.0 + eps_high
    clip_low = ((ratio < low) & (adv < 0)).float()
    clip_high = ((ratio > high) & (adv > 0)).float()
    if kind == "cispo":
        weight = ratio.detach().clamp(low, high)
        clip_low, clip_high = (ratio < low).float(), (ratio > high).float()
        return -weight * adv * logp, {"clip_low": clip_low, "clip_high": clip_high, "dual_clip": zeros}
    if kind not in ("ppo", "dual_clip", "gspo"):
        raise ValueError(f"unknown policy loss {kind!r}; use one of {', '.join(POLICY_LOSSES)}")
    loss = -torch.minimum(ratio * adv, ratio.clamp(low, high) * adv)
    dual = zeros
    if kind == "dual_clip":
        bound = -dual_clip_c * adv
        dual = ((adv < 0) & (bound < loss)).float()
        loss = torch.where(adv < 0, torch.minimum(loss, bound), loss)
    return loss, {"clip_low": clip_low, "clip_high": clip_high, "dual_clip": dual}


def importance_weights(prox_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, mode: str,
                       level: str, cap: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Behaviour-policy importance weights w [B, T] (no gradient) for decoupled PPO, and indicators for metrics.

    ρ = π_prox / π_behaviour, per token (``token``) or per sequence (``sequence``: ρ_i = Π_t ρ_t, the same weight
    on every token of the response). π_behaviour is what the generation engine sampled with (older weights,
    and a different kernel or precision); π_prox is the learner's policy at the start of the step.

    - ``plain``: w = ρ (unbiased, unbounded variance).
    - ``tis``: truncated IS, w = min(ρ, cap).
    - ``mis``: masked IS, w = ρ where 1/cap ≤ ρ ≤ cap and 0 elsewhere: tokens (or sequences) the two policies
      disagree on too much do not train at all. They still count in the loss normaliser — weight 0, not removed.
    """
    log_rho = (prox_logp - behaviour_logp).detach() * mask
    if level == "sequence":
        log_rho = log_rho.sum(-1, keepdim=True).expand_as(mask)
    elif level != "token":
        raise ValueError(f"unknown importance-sampling level {level!r}; use token or sequence")
    rho = torch.exp(log_rho.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    zeros = torch.zeros_like(rho)
    if mode == "plain":
        return rho, {"truncated": zeros, "masked": zeros}
    if mode == "tis":
        return rho.clamp(max=cap), {"truncated": (rho > cap).float(), "masked": zeros}
    if mode == "mis":
        keep = (rho <= cap) & (rho >= 1.0 / cap)
        return torch.where(keep, rho, zeros), {"truncated": zeros, "masked": (~keep).float()}
    raise ValueError(f"unknown importance-sampling mode {mode!r}; use one of {', '.join(IS_MODES)}")


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss per token: ½ max((V − R)², (V_clip − R)²), V_clip = V_old + clip(V − V_old, ±c).

    ``clip`` ≤ 0 disables clipping (½ (V − R)²). Returns (loss [B, T], clipped [B, T] float: the clipped branch is
    the larger one, so the gradient through V is zero there).
    """
    unclipped = (values - returns).pow(2)
    if clip <= 0:
        return 0.5 * unclipped, torch.zeros_like(values)
    v_clip = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (v_clip - returns).pow(2)
    return 0.5 * torch.maximum(unclipped, clipped), (clipped > unclipped).float()
