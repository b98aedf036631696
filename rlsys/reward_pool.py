"""The reward pool: generated batches waiting for a reward worker, the calls that score them, and their losses.

Generated batches wait here (as object refs: the data stays in the object store) for a free reward worker, which
takes up to ``reward.max_batches_per_call`` of them in one call, so a reward model sees large batches; once the call
has succeeded, each scored batch goes to the buffer's ``put`` (by ref: the data moves from actor to actor). A call
that runs past ``reward.call_timeout_s`` gets its actor killed (Ray restarts it); a call whose actor died is scored
again from the same generated batch, at the front of the queue, once a worker answers a ping — up to
``MAX_REWARD_ATTEMPTS`` lost calls per batch, after which the controller generates its prompts again.
A worker that lost a call gets no work until it answers a ping.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import ray
from ray.exceptions import RayError

from rlsys.calls import Call, Putting, Request, RewardPing, Scoring
from rlsys.config import RewardConfig
from rlsys.failures import Replacements, first_line

log = logging.getLogger(__name__)

MAX_REWARD_ATTEMPTS = 3  # reward calls lost per generated batch before its prompts are generated again
PING_EVERY_S = 1.0  # how often a worker that lost a call is asked whether it is back
# A ping to a worker Ray is restarting waits until it is up; one that fails this many times in a row is to an
# actor that is dead for good (killed, or out of restarts): it is replaced by a new actor, at most MAX_REPLACEMENTS
# times per worker (rlsys.failures.Replacements), after which the run stops.
FAILED_PINGS_BEFORE_REPLACING = 3


class RewardPool:
    """``track(ref, call)`` registers a call with the controller, which hands a :class:`Scoring` back to
    :meth:`scored` (it succeeded) or :meth:`lost`, and a :class:`RewardPing` to :meth:`pinged`, when its ref is
    ready; ``replace(i)`` puts a new actor in place of worker ``i`` (in ``workers``, which it updates)."""

    def __init__(self, workers: list, buffer, cfg: RewardConfig, track: Callable[[ray.ObjectRef, Call], None],
                 replace: Callable[[int], object] | None = None) -> None:
        self.workers, self.buffer, self.cfg, self.track, self.replace = workers, buffer, cfg, track, replace
        self.queue: deque[Request] = deque()  # generated, waiting for a reward worker
        self.inflight = [0] * len(workers)  # batches in each worker's current call
        self.ready = [True] * len(workers)  # False from a lost call until the worker answers a ping
        self.ping_due: dict[int, float] = {}  # down worker → when to ping it next
        self.scoring: dict[int, Scoring] = {}  # id → each call in flight
        self.retries = 0  # reward calls lost and re-scored (or given up), over the run
        self.queue_max = 0  # most batches waiting at once since the controller last reset it
        self.failed_pings = [0] * len(workers)  # in a row, per worker
        self.replaced = Replacements("reward worker", len(workers))

    @property
    def waiting_for_a_restart(self) -> bool:
        """A worker is down and will be pinged: the pool may have work although no call is in flight."""
        return bool(self.ping_due)

    def submit(self, request: Request) -> None:
        self.queue.append(request)
        self.queue_max = max(self.queue_max, len(self.queue))
        self.dispatch()

    def dispatch(self) -> None:
        """Give queued batches to idle workers, up to ``reward.max_batches_per_call`` per call."""
        while self.queue:
            idle = [i for i, n in enumerate(self.inflight) if n == 0 and self.ready[i]]
            if not idle:
                return
            worker = idle[0]
            take = min(len(self.queue), self.cfg.max_batches_per_call)
            requests = [self.queue.popleft() for _ in range(take)]
            batches = [r.batch for r in requests]
            *scored, done = self.workers[worker].score.options(num_returns=take + 1).remote(*batches)
            scoring = Scoring(requests, worker, time.monotonic(), scored)
            self.scoring[id(scoring)] = scoring
            self.track(done, scoring)
            self.inflight[worker] = take

    def watch(self) -> None:
        """Kill (Ray restarts it) any worker whose call has run past ``reward.call_timeout_s`` — the call's batches
        then fail and are scored again — and ping the workers that are down."""
        limit, now = self.cfg.call_timeout_s, time.monotonic()
        for call in self.scoring.values():
            if not call.timed_out and now - call.start > limit:
                call.timed_out = True
                log.warning("reward worker %d has been scoring for more than reward.call_timeout_s=%.0f s; "
                            "restarting it", call.worker, limit)
                ray.kill(self.workers[call.worker], no_restart=False)
                self._down(call.worker)
        for worker, due in list(self.ping_due.items()):
            if due <= now:
                del self.ping_due[worker]
                self.track(self.workers[worker].versions.remote(), RewardPing(worker))

    def pinged(self, ping: RewardPing, ref: ray.ObjectRef, timeout_s: float) -> None:
        worker = ping.worker
        try:
            ray.get(ref, timeout=timeout_s)
        except RayError as e:  # still restarting, or dead for good
            self.failed_pings[worker] += 1
            if self.failed_pings[worker] >= FAILED_PINGS_BEFORE_REPLACING and self.replace is not None:
                self._replace(worker, e)
            self.ping_due[worker] = time.monotonic() + PING_EVERY_S
            return
        self.failed_pings[worker] = 0
        self.ready[worker] = True
        self.dispatch()

    def _replace(self, worker: int, error: Exception) -> None:
        self.replaced.spend(worker, f"did not answer {self.failed_pings[worker]} pings in a row", error)
        self.replace(worker)
        self.failed_pings[worker] = 0

    def scored(self, scoring: Scoring) -> None:
        """The call succeeded: each scored batch goes into the buffer (the controller gets each :class:`Putting`)."""
        self._finished(scoring)
        for request, batch in zip(scoring.requests, scoring.scored):
            self.track(self.buffer.put.remote(batch), Putting(request))

    def lost(self, scoring: Scoring, error: Exception) -> list[tuple[Request, str]]:
        """The call died or timed out: queue its requests to be scored again, except those that have lost
        ``MAX_REWARD_ATTEMPTS`` calls: (request, why) for each of those, whose prompts the controller generates
        again."""
        self._finished(scoring)
        self._down(scoring.worker)
        why = f"timed out after reward.call_timeout_s={self.cfg.call_timeout_s:.0f} s" if scoring.timed_out \
            else first_line(error)
        given_up = []
        for request in reversed(scoring.requests):  # appendleft: the call's requests keep their order at the front
            request.reward_attempts += 1
            self.retries += 1
            prompts = [q.prompt_id for q in request.prompts]
            if request.reward_attempts < MAX_REWARD_ATTEMPTS:
                log.warning("reward worker %d lost request %d (%s); re-scoring its prompts %s (attempt %d of %d)",
                            scoring.worker, request.id, why, prompts, request.reward_attempts + 1, MAX_REWARD_ATTEMPTS)
                self.queue.appendleft(request)
            else:
                log.error("request %d could not be scored in %d attempts (last: %s); generating its prompts again: %s",
                          request.id, request.reward_attempts, why, prompts)
                given_up.append((request, why))
        return given_up[::-1]

    def _finished(self, scoring: Scoring) -> None:
        self.inflight[scoring.worker] = 0
        del self.scoring[id(scoring)]

    def _down(self, worker: int) -> None:
        if self.ready[worker]:
            self.ready[worker] = False
            self.ping_due[worker] = time.monotonic()
