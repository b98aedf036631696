"""The driver's calls in flight: one small record per kind, keyed by the object ref the controller waits on.

A rollout :class:`Request` lives through three of them — :class:`Generating` (on a rollout worker),
:class:`Scoring` (on a reward worker) and :class:`Putting` (into the buffer) — and is re-queued or dropped if it is
lost on the way. The learner's step is :class:`Taking` (the buffer's ``take``) → :class:`Learning` →
:class:`GatheringWeights` → one :class:`LoadingWeights` per rollout worker. :class:`Evaluating` (generate, then
score) and :class:`RewardPing` stand alone.
Every field is plain data or an object ref, so the controller's state is explicit (and can be checkpointed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import ray

from rlsys.types import Prompt


@dataclass
class Request:
    """A rollout request: prompt groups generated together by one worker and scored together."""

    id: int
    prompts: list[Prompt]
    worker: int  # the rollout worker that generates it
    batch: ray.ObjectRef  # its RolloutBatch, once generated; kept in the object store until it is in the buffer
    reward_attempts: int = 0  # reward calls lost so far (the actor died or ran too long)


@dataclass
class Generating:
    request: Request


@dataclass
class Scoring:
    """One reward call: up to ``reward.max_batches_per_call`` requests scored together by one worker. The ref waited
    on is the call's last return, its sample count; ``scored`` holds each request's scored batch, handed to the
    buffer's ``put`` once the call is known to have succeeded -- never as a pending argument: Ray runs a caller's
    calls to an actor in order, so a put waiting on a slow reward call would hold up every later call to the
    buffer, the learner's ``take`` among them."""

    requests: list[Request]
    worker: int
    start: float  # time.monotonic() when it was sent
    scored: list[ray.ObjectRef]
    timed_out: bool = False  # ran past reward.call_timeout_s: its actor was killed


@dataclass
class Putting:
    """A scored request on its way into the buffer; the ref waited on is the put's summary."""

    request: Request


@dataclass
class RewardPing:
    """Asks a reward worker that lost a call whether it is back."""

    worker: int


@dataclass
class Taking:
    batch: ray.ObjectRef  # the groups taken (None when too few were fresh enough)


@dataclass
class Learning:
    refs: list[ray.ObjectRef]  # one train_step per learner rank
    staleness: list[int]  # of each group in the step


@dataclass
class GatheringWeights:
    refs: list[ray.ObjectRef]  # get_weights on every rank (a collective under ZeRO-3); rank 0 returns them
    start: float  # time.perf_counter()


@dataclass
class SyncRound:
    """One weight sync to every rollout worker."""

    version: int
    gather_s: float
    waiting: int  # workers that have not acknowledged yet
    load_s: list[float] = field(default_factory=list)


@dataclass
class LoadingWeights:
    round: SyncRound
    worker: int


@dataclass
class Evaluating:
    """A held-out evaluation: generated on rollout worker 0 (``generated`` is its batch, the call waits on the
    sample count), then scored on reward worker 0 (``generated`` None, the call waits on the scored batch)."""

    version: int
    attempt: int = 0  # evaluations of this version lost before this one
    generated: ray.ObjectRef | None = None


@dataclass
class Checkpointing:
    """Every learner rank writing its part of the checkpoint of ``version`` into ``directory`` (a temporary one);
    ``state`` is the driver's state at that version, taken when the call was made."""

    refs: list[ray.ObjectRef]  # save_checkpoint on every rank
    version: int
    directory: Path
    state: dict
    log_parts: ray.ObjectRef  # the buffer's flush_log: how many sample-log parts the checkpoint's timeline has


Call = (Generating | Scoring | Putting | RewardPing | Taking | Learning | GatheringWeights | LoadingWeights
        | Evaluating | Checkpointing)
