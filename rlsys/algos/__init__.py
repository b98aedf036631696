"""Pure torch maths for policy optimisation: advantages, losses, KL estimators, aggregation. No Ray in here."""

from rlsys.algos.grpo import (
    clipped_policy_loss,
    entropy_from_logits,
    group_advantages,
    kl_estimate,
    token_logprobs,
    token_sum_over,
)

__all__ = [
    "clipped_policy_loss",
    "entropy_from_logits",
    "group_advantages",
    "kl_estimate",
    "token_logprobs",
    "token_sum_over",
]
