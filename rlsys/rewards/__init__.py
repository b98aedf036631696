"""Reward functions (pure Python), reward-model wrappers, and the scorer that runs a composite reward."""

from rlsys.rewards import code, rules, structured, text, trajectory  # noqa: F401  (imported to register the built-in rewards)
from rlsys.rewards.components import RewardComponent, RewardItem, RewardModelSpec, RewardOutcome
from rlsys.rewards.registry import RewardFn, Scored, get_reward_fn, register_reward, reward_names
from rlsys.rewards.scoring import RewardScorer

__all__ = ["RewardComponent", "RewardFn", "RewardItem", "RewardModelSpec", "RewardOutcome", "RewardScorer", "Scored",
           "get_reward_fn", "register_reward", "reward_names"]
