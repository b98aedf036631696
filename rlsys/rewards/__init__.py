"""Reward functions (pure Python) and a scorer that runs them in an isolated child process."""

from rlsys.rewards import rules, structured, text  # noqa: F401  (imported to register the built-in rewards)
from rlsys.rewards.registry import RewardFn, Scored, get_reward_fn, register_reward, reward_names
from rlsys.rewards.scoring import RewardComponent, RewardOutcome, RewardScorer

__all__ = ["RewardComponent", "RewardFn", "RewardOutcome", "RewardScorer", "Scored", "get_reward_fn", "register_reward",
           "reward_names"]
