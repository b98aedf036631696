"""The data that crosses actors: prompts, samples and prompt groups. Plain, numpy-backed, saveable to Parquet.

Identity: a prompt has a stable ``prompt_id``; a sample is (prompt id, sample index, epoch). Versions: the
learner's policy version counts optimizer steps; every sample records the version whose weights generated it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Prompt:
    """One dataset row. ``text`` is the prompt a reward function sees: the row's ``prompt``, or for a conversation
    the content of its last user turn; ``messages`` is the conversation, ((role, content), ...), and empty for a
    ``prompt`` row. How either becomes the policy's token ids is :class:`rlsys.data.chat.PromptFormat`."""

    prompt_id: str
    text: str
    answer: str  # the reference the reward function checks against
    epoch: int = 0
    messages: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Turn:
    """One step of a multi-turn trajectory: the policy's ``action`` (its text, decoded from the tokens it sampled)
    and what the environment's ``step`` answered (:mod:`rlsys.envs`)."""

    action: str
    observation: str | None = None  # None: the environment showed nothing (e.g. it ended the trajectory)
    reward: float | None = None  # the environment's own reward for this step, if it gives one
    done: bool = False
    info: dict = field(default_factory=dict)  # the environment's step info (JSON-able values)


@dataclass(frozen=True)
class Trajectory:
    """The turns of one multi-turn sample, as the environment saw them (the token ids are the sample's).

    ``first_observation``: what ``reset`` showed before the first action (None: the prompt alone); ``error``: why
    the environment failed this trajectory (it raised, hung past ``env.step_timeout_s``, or its worker died) — the
    sample's reward then fails with it and it does not train."""

    turns: tuple[Turn, ...] = ()
    first_observation: str | None = None
    error: str | None = None

    @property
    def tool_calls(self) -> int:
        """Actions the environment answered without ending the trajectory: the calls of a tool."""
        return sum(not t.done and t.observation is not None for t in self.turns)

    @property
    def env_rewards(self) -> list[float]:
        """The environment's per-step rewards, where it gave one."""
        return [t.reward for t in self.turns if t.reward is not None]

    @property
    def final_action(self) -> str:
        return self.turns[-1].action if self.turns else ""


@dataclass(frozen=True)
class Sample:
    """One completion of one prompt, as the generation engine produced it, plus its reward once scored.

    Shapes: ``prompt_ids`` [P] int32; ``response_ids`` [R] int32 (ends with the tokens that stopped it when
    ``finish_reason == "stop"``: an end token, or those completing a stop string);
    ``behaviour_logprobs`` [R] float32, the engine's log π_behaviour(token) for each response token;
    ``loss_mask`` [R] uint8 or None: 1 for the tokens the policy generated, 0 for the tokens it did not (a tool's
    or environment's observation, template tokens around it, in a multi-turn trajectory); None: every response
    token is the policy's. Only masked-in tokens enter the loss, the KL and entropy terms, the importance weights
    and the token counts that aggregation normalises by; ``behaviour_logprobs`` is 0 (finite) off the mask.
    ``token_versions`` [R] int32 or None: the policy version whose weights sampled each response token, where the
    weights changed while the sample was generated (in-flight weight updates, ``rollout.inflight_weight_updates``);
    None: every token is at ``version``. ``version`` is always the *oldest* token's: what staleness admission and
    the bound η hold a sample to. The behaviour logprobs stay per token, each under its own version's policy.
    """

    prompt_id: str
    sample_index: int
    epoch: int
    prompt_ids: np.ndarray
    response_ids: np.ndarray
    behaviour_logprobs: np.ndarray
    finish_reason: str  # "stop" (an end token or a stop string) | "length" (max_new_tokens reached)
    version: int  # the policy version of its oldest token (= of every token, without in-flight updates)
    response_text: str
    stop_reason: str = ""  # what stopped it: the end token's text (e.g. "<|im_end|>") or the stop string
    reward: float = math.nan
    reward_failed: bool = False
    reward_error: str | None = None
    reward_components: dict[str, float] = field(default_factory=dict)  # each term's value (NaN: that term failed)
    reward_notes: dict[str, str] = field(default_factory=dict)  # term → the reason it gave with its value
    reward_versions: dict[str, str] = field(default_factory=dict)  # model-based term → reward-model version
    loss_mask: np.ndarray | None = None
    trajectory: Trajectory | None = None
    token_versions: np.ndarray | None = None

    @property
    def answer_text(self) -> str:
        """What a reward checks as the answer: the final action of a trajectory, else the whole response."""
        return self.trajectory.final_action if self.trajectory is not None else self.response_text

    @property
    def policy_tokens(self) -> int:
        """How many response tokens the policy generated (the ones that train)."""
        return len(self.response_ids) if self.loss_mask is None else int(np.count_nonzero(self.loss_mask))


@dataclass(frozen=True)
class Group:
    """The ``group_size`` samples of one prompt: the unit that moves from reward to buffer to learner."""

    prompt: Prompt
    samples: tuple[Sample, ...]
    worker: int = field(default=-1, compare=False)  # rollout worker that generated it, for metrics
    prompt_text: str = ""  # the prompt exactly as the policy read it (chat template applied: rlsys.data.chat)

    @property
    def version(self) -> int:
        """The oldest policy version in the group: what staleness is measured against."""
        return min(s.version for s in self.samples)

    @property
    def rewards(self) -> np.ndarray:
        return np.array([s.reward for s in self.samples], dtype=np.float32)


@dataclass(frozen=True)
class RolloutBatch:
    """The groups of one generate request (a rollout worker's answer, which the reward workers and the buffer
    take), plus timings the controller turns into throughput and idle metrics."""

    request_id: int
    groups: list[Group]
    worker: int
    generate_s: float
    reward_s: float = 0.0
    reward_term_s: dict[str, float] = field(default_factory=dict)  # each reward component's compute seconds
