"""The names each algorithm setting accepts, apart from the maths (no torch): what the config checks against and
what the estimators, losses and aggregations of this package implement."""

OUTCOME_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
ESTIMATORS = (*OUTCOME_ESTIMATORS, "gae")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant")
POLICY_LOSSES = ("ppo", "dual_clip", "gspo", "cispo", "reinforce")
IS_MODES = ("plain", "tis", "mis")
IS_LEVELS = ("token", "sequence")
