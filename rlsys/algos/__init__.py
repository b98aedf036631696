"""Pure torch/numpy maths for policy optimisation: advantages, losses, importance weights, aggregation, shaping.

No Ray and no model in here, so every formula is tested on small hand-computed tensors (tests/test_algos.py).
The functions are imported on first use (PEP 562), so what needs only the names of the choices
(:mod:`rlsys.algos.names`: the config, a reward worker unpickling it) does not import torch.
"""

import importlib

from rlsys.algos.names import AGGREGATIONS, ESTIMATORS, IS_LEVELS, IS_MODES, OUTCOME_ESTIMATORS, POLICY_LOSSES

_HOME = {  # function → the module of this package that defines it
    **dict.fromkeys(["bound_advantages", "gae_advantages", "group_advantages", "group_centered_advantages",
                     "masked_whiten", "outcome_token_rewards", "reinforce_pp_advantages", "rloo_advantages",
                     "zero_variance_groups"], "advantages"),
    "sample_loss_weights": "aggregation",
    **dict.fromkeys(["entropy_from_logits", "importance_weights", "kl_estimate", "policy_loss", "token_logprobs",
                     "value_loss"], "losses"),
    **dict.fromkeys(["overlong_penalty", "untrained_reasons"], "shaping"),
}

__all__ = ["AGGREGATIONS", "ESTIMATORS", "IS_LEVELS", "IS_MODES", "OUTCOME_ESTIMATORS", "POLICY_LOSSES", *_HOME]


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"rlsys.algos.{_HOME[name]}"), name)
    raise AttributeError(f"module 'rlsys.algos' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
