"""Pure torch/numpy maths for policy optimisation: advantages, losses, importance weights, aggregation, shaping.

No Ray and no model in here, so every formula is tested on small hand-computed tensors (tests/test_algos.py).
"""

from rlsys.algos.advantages import (
    ESTIMATORS,
    OUTCOME_ESTIMATORS,
    bound_advantages,
    gae_advantages,
    group_advantages,
    group_centered_advantages,
    masked_whiten,
    outcome_token_rewards,
    reinforce_pp_advantages,
    rloo_advantages,
    zero_variance_groups,
)
from rlsys.algos.aggregation import AGGREGATIONS, sample_loss_weights
from rlsys.algos.losses import (
    IS_LEVELS,
    IS_MODES,
    POLICY_LOSSES,
    entropy_from_logits,
    importance_weights,
    kl_estimate,
    policy_loss,
    token_logprobs,
    value_loss,
)
from rlsys.algos.shaping import overlong_penalty, untrained_reasons

__all__ = [
    "AGGREGATIONS", "ESTIMATORS", "IS_LEVELS", "IS_MODES", "OUTCOME_ESTIMATORS", "POLICY_LOSSES",
    "bound_advantages", "entropy_from_logits", "gae_advantages", "group_advantages", "group_centered_advantages",
    "importance_weights", "kl_estimate", "masked_whiten", "outcome_token_rewards", "overlong_penalty",
    "policy_loss", "reinforce_pp_advantages", "rloo_advantages", "sample_loss_weights", "token_logprobs",
    "untrained_reasons", "value_loss", "zero_variance_groups",
]
