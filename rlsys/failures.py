"""When to give up: bounded retries for prompts that keep failing, and a reward that fails on most samples.

Pure bookkeeping, no Ray: the controller feeds it what it sees and acts on the answers.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rlsys.types import Prompt

if TYPE_CHECKING:  # the data pipeline imports transformers, which the buffer actor (FailedExample) does not need
    from rlsys.data.tasks import PromptStream

log = logging.getLogger(__name__)

MAX_PROMPT_ATTEMPTS = 3  # failed requests (not dead workers) a prompt may be part of before it is dropped
MAX_FAILED_REQUESTS_IN_A_ROW = 20  # requests that failed (not lost to a dead worker) in a row: nothing works


class RequestsFailing(RuntimeError):
    """Every one of the last ``MAX_FAILED_REQUESTS_IN_A_ROW`` requests failed: nothing in the pipeline works."""


class RewardsFailing(RuntimeError):
    """The reward failed on more than ``reward.max_failure_rate`` of the last ``reward.failure_window`` samples."""


class Terminated(KeyboardInterrupt):
    """The driver got SIGTERM (a scheduler's stop, ``kill``): raised where the driver is, so that a run stops as on
    Ctrl-C — the sample log flushed, the actors stopped — instead of as Ray's own handler would (an abort)."""


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler: raise :class:`Terminated` (install it in the main thread, after ``ray.init``, which
    installs a handler of its own)."""
    raise Terminated


class ActorLost(RuntimeError):
    """An actor the run cannot go on without died: a learner rank, the buffer, the reference actor, or a worker
    replaced ``MAX_REPLACEMENTS`` times already (:class:`Replacements`)."""


class StateLost(ActorLost):
    """An actor holding the run's state died — a learner rank, the buffer or the reference actor — so the learner
    group must go back to a checkpoint (:mod:`rlsys.recovery`); ``actor`` names it."""

    def __init__(self, message: str, actor: str) -> None:
        super().__init__(message)
        self.actor = actor


MAX_REPLACEMENTS = 3  # new actors one worker slot may get before the run gives up on it


def first_line(error: BaseException) -> str:
    """``Type: first line of the message``: an error in one line of a log or a report."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


@dataclass
class Replacements:
    """New actors given to the worker slots of one role (``role``: "rollout worker", "reward worker"), at most
    ``MAX_REPLACEMENTS`` per slot."""

    role: str
    slots: int
    used: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.used = self.used or [0] * self.slots

    def spend(self, worker: int, symptom: str, error: BaseException) -> None:
        """Allow one more replacement of ``worker`` (logged with ``symptom``, e.g. "lost 5 requests in a row"), or
        raise :class:`ActorLost` if its slot has had ``MAX_REPLACEMENTS`` already."""
        if self.used[worker] >= MAX_REPLACEMENTS:
            raise ActorLost(f"{self.role} {worker} {symptom} again after {MAX_REPLACEMENTS} replacements "
                            f"({first_line(error)}); no {self.role} can be had in its place")
        log.error("%s %d %s (last: %s): replacing it with a new actor", self.role, worker, symptom, first_line(error))
        self.used[worker] += 1


class PromptRetries:
    """Which prompts to retry after a failed request, and which to give up on.

    A request fails when generation raises or its batch could not be scored (not when its worker dies: that is
    the worker's fault and costs nothing here). Each of its prompts then counts one failure and is handed out
    again *alone* (:meth:`next_prompts`), so a prompt the engine rejects fails by itself and the others of its
    request go through; after ``MAX_PROMPT_ATTEMPTS`` failures a prompt is dropped (for its epoch), with the
    error recorded in :attr:`dropped`. ``MAX_FAILED_REQUESTS_IN_A_ROW`` failed requests in a row raise
    :class:`RequestsFailing`: then nothing works, and retrying would only loop through the data set."""

    def __init__(self, stream: PromptStream) -> None:
        self.stream = stream
        self.failures: dict[tuple[str, int], int] = {}  # (prompt id, epoch) → failed requests it was in
        self.dropped: list[dict] = []  # prompt id, epoch, attempts, the last error
        self.failed_in_a_row = 0

    def next_prompts(self, n: int) -> list[Prompt]:
        """Up to ``n`` prompts for one request: a prompt that was in a failed request comes alone."""
        prompts: list[Prompt] = []
        while len(prompts) < n:
            p = self.stream.next()
            if (p.prompt_id, p.epoch) in self.failures:
                if prompts:
                    self.stream.requeue([p])
                    break
                return [p]
            prompts.append(p)
        return prompts

    def succeeded(self) -> None:
        self.failed_in_a_row = 0

    def state(self) -> dict:
        """The failure counts and the dropped prompts, JSON-serialisable (the stream's own state is separate)."""
        return {"failures": [[pid, epoch, n] for (pid, epoch), n in self.failures.items()],
                "dropped": list(self.dropped), "failed_in_a_row": self.failed_in_a_row}

    def restore(self, state: dict) -> None:
        self.failures = {(pid, epoch): n for pid, epoch, n in state["failures"]}
        self.dropped = list(state["dropped"])
        self.failed_in_a_row = state["failed_in_a_row"]

    def lost(self, prompts: list[Prompt], error: str, failed: bool) -> list[Prompt]:
        """A request of ``prompts`` was lost — ``failed``: by its own failure (with ``error``), else with its worker.
        Re-queues the prompts to retry and returns them; the others are dropped and recorded."""
        retry = []
        for q in prompts:
            key = (q.prompt_id, q.epoch)
            attempts = self.failures.get(key, 0) + failed
            if attempts < MAX_PROMPT_ATTEMPTS:
                retry.append(q)
                if failed:
                    self.failures[key] = attempts
                continue
            del self.failures[key]
            self.dropped.append({"prompt_id": q.prompt_id, "epoch": q.epoch, "attempts": attempts, "error": error})
            log.error("dropping prompt %r (epoch %d): its requests failed %d times; last error: %s", q.prompt_id,
                      q.epoch, attempts, error)
        self.stream.requeue(retry)
        self.failed_in_a_row = self.failed_in_a_row + 1 if failed else 0
        if self.failed_in_a_row >= MAX_FAILED_REQUESTS_IN_A_ROW:
            raise RequestsFailing(f"the last {self.failed_in_a_row} requests all failed, the last one with: {error}")
        return retry


@dataclass(frozen=True)
class FailedExample:
    """One sample whose reward failed: enough for a user to reproduce the failure by hand."""

    prompt_id: str
    completion: str
    error: str


@dataclass
class RewardFailureWindow:
    """The reward failures among the last ``window`` samples, overall and per reward term.

    A sample fails when a term with non-zero weight fails (:func:`rlsys.rewards.components.combine`); a term's
    own failures (NaN values, zero-weight monitors included) are counted to name the culprit.
    """

    max_rate: float
    window: int
    _failed: deque = field(default_factory=deque)  # one bool per sample, newest last
    _terms: dict[str, deque] = field(default_factory=dict)  # term → one bool per sample (True: that term failed)
    _examples: deque = field(default_factory=lambda: deque(maxlen=3))

    def observe(self, rewards: list[float], components: dict[str, list[float]],
                example: FailedExample | None = None) -> None:
        """Add one batch: ``rewards`` (NaN where the sample failed) and each term's values (NaN where it failed)."""
        self._failed.extend(math.isnan(r) for r in rewards)
        for name, values in components.items():
            self._terms.setdefault(name, deque()).extend(math.isnan(v) for v in values)
        for q in (self._failed, *self._terms.values()):
            while len(q) > self.window:
                q.popleft()
        if example is not None:
            self._examples.append(example)

    @property
    def rate(self) -> float:
        return sum(self._failed) / len(self._failed) if self._failed else 0.0

    def check(self, final: bool = False) -> None:
        """Raise :class:`RewardsFailing` once a full window fails at more than ``max_rate`` — or earlier, as soon as
        the failures seen already exceed what a full window may hold (``max_rate`` × ``window``): whatever the next
        samples do, the window will fail, so a reward failing on every sample stops after about half a window.
        ``final``: the run has ended, so the samples seen are all there will be: a window not filled is held to the
        same rate."""
        failed = sum(self._failed)
        full = len(self._failed) >= self.window or final
        if failed <= self.max_rate * self.window and (not full or self.rate <= self.max_rate):
            return
        terms = sorted(((sum(q), name) for name, q in self._terms.items() if sum(q)), reverse=True)
        by_term = ", ".join(f"{name!r} on {n}" for n, name in terms) or "no single term (the whole call failed)"
        lines = [f"the reward failed on {failed} of the last {len(self._failed)} samples ({self.rate:.0%}), more "
                 f"than reward.max_failure_rate={self.max_rate:g} allows in reward.failure_window={self.window}; "
                 f"failing terms: {by_term}. Stopping: training on this reward would teach nothing."]
        for ex in self._examples:
            lines.append(f"  e.g. prompt {ex.prompt_id!r}, completion {ex.completion[:200]!r}: {ex.error[:500]}")
        lines.append("Fix the reward function or its params (run it by hand on the example), or raise "
                     "reward.max_failure_rate (1 never stops).")
        raise RewardsFailing("\n".join(lines))
