"""Rewards of scope ``trajectory``: they read a multi-turn trajectory (:class:`rlsys.types.Trajectory`), not only
its final answer."""

from __future__ import annotations

from rlsys.rewards.registry import Scored, register_reward
from rlsys.types import Trajectory


@register_reward("env_reward", scope="trajectory")
def env_reward(trajectory: Trajectory, reference: str) -> Scored:
    """The sum of the environment's own per-step rewards (steps that gave none count 0); 0 with a note when it gave
    none at all, so a reward that never arrives is visible in the sample log."""
    rewards = trajectory.env_rewards
    if not rewards:
        return Scored(0.0, "the environment gave no reward")
    return Scored(float(sum(rewards)), f"{len(rewards)} step reward(s)")


@register_reward("tool_calls", scope="trajectory")
def tool_calls(trajectory: Trajectory, reference: str, cost: float = 1.0) -> float:
    """``cost`` × the number of tool calls (actions the environment answered without ending the trajectory): with a
    negative weight a cost per call, with weight 0 a logged monitor of tool use."""
    return cost * trajectory.tool_calls
