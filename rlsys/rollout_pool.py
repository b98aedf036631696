"""The rollout workers as the controller sees them: which one gets the next request, which weights each holds, and
what to do when one crashes, restarts, hangs or is dead for good.

Per worker it keeps the requests out (counted until their batch is *in the buffer*, so a slow reward slows
admission), a hang clock, a restart back-off and whether it must be sent the latest weights before it generates
again. The controller decides *what* to generate and re-queues lost requests; this module decides *where*, and keeps
each worker on the policy version the controller last synced (:attr:`RolloutPool.version`).

A worker Ray is restarting answers every call at once with ``ActorUnavailableError``: it is sent nothing until its
back-off (``RESTART_BACKOFF_S``: 1 s, doubling per refusal, at most 30 s) is over, and then the latest weights ahead
of its next request — Ray restarts an actor from its constructor, with the initial weights.
"""

from __future__ import annotations

import itertools
import logging
import time

import ray
from ray.exceptions import ActorUnavailableError

from rlsys.actors.placement import ActorHandles
from rlsys.actors.rollout import WEIGHTS_GROUP
from rlsys.failures import ActorLost, Replacements, first_line
from rlsys.types import Prompt

log = logging.getLogger(__name__)

MAX_REQUESTS_PER_WORKER = 2  # one generating, one queued behind it: the worker never waits for the driver
# A rollout worker that lost this many requests in a row (no request finished in between) is dead for good (killed,
# out of Ray's restarts, or failing in its constructor): it is replaced by a new actor in its bundle, at most
# MAX_REPLACEMENTS times per worker (rlsys.failures.Replacements), after which the run stops with ActorLost. One
# crash loses at most MAX_REQUESTS_PER_WORKER requests, so two crashes in a row do not count as dead.
LOSSES_BEFORE_REPLACING = 2 * MAX_REQUESTS_PER_WORKER + 1
RESTART_BACKOFF_S = (1.0, 30.0)  # a restarting rollout worker is retried after 1 s, 2 s, 4 s, ... at most 30 s
# Every weight send carries the next number, so that a worker ignores one overtaken by a newer (an in-flight sync that
# lands after a roll-back's send). Counted for the driver process, not per pool: after a recovery a new controller
# (and pool) drives the same workers, and its roll-back must outnumber the abandoned pool's sends.
WEIGHT_SENDS = itertools.count(1)


class RolloutPool:
    """``actors.rollouts`` (which :meth:`ActorHandles.replace` updates); ``hang_timeout_s``: a worker with requests out
    that finishes none for this long is taken for hung and restarted (``rollout.hang_timeout_s``); ``inflight``:
    weight syncs are loaded while a batch generates (``rollout.inflight_weight_updates``), sent on the workers'
    :data:`WEIGHTS_GROUP` — every other weight send (after a restart, a roll-back) stays in line with the generate
    calls, so the worker loads it before the next batch."""

    def __init__(self, actors: ActorHandles, hang_timeout_s: float, inflight: bool = False, nccl: bool = False
                 ) -> None:
        n = len(actors.rollouts)
        self.actors, self.hang_timeout_s, self.inflight_updates = actors, hang_timeout_s, inflight
        self.nccl = nccl  # rollout.weight_transfer=nccl: syncs are the learners' broadcasts (synced())
        self.weights: ray.ObjectRef | None = None  # the latest synced weights (None: the initial checkpoint's)
        self.version = 0  # the version whose weights every worker holds (or has queued to load)
        self.inflight = [0] * n  # requests out, until their batch is in the buffer
        self.generating = [0] * n  # generate() calls out
        self.losses = [0] * n  # requests lost in a row
        # Since when a worker has had requests out without finishing one (None: it has none out, or it has not
        # finished one since it (re)started, so the hang clock does not run: a start-up is not a hang).
        self.busy_since: list[float | None] = [None] * n
        self.started = [False] * n  # finished a request since it (re)started
        self.hang_restarts = [0] * n  # since it last finished a request
        self.backoff = [0.0] * n
        self.resume_at = [0.0] * n  # time.monotonic() before which a restarting worker is sent nothing
        self.needs_weights = [False] * n  # (re)started: send the latest weights before it generates
        self.replaced = Replacements("rollout worker", n)

    # ------------------------------------------------------------------ requests
    def pick(self) -> int | None:
        """The worker for the next request: the one with the fewest out among those not backing off, if it has
        room for one more (``MAX_REQUESTS_PER_WORKER``)."""
        now = time.monotonic()
        ready = [w for w, at in enumerate(self.resume_at) if at <= now]
        worker = min(ready, key=self.inflight.__getitem__, default=None)
        return worker if worker is not None and self.inflight[worker] < MAX_REQUESTS_PER_WORKER else None

    def generate(self, worker: int, request_id: int, prompts: list[Prompt], **kwargs) -> tuple:
        """Send a generate call (``RolloutWorker.generate``'s two refs: the batch and its sample count) — preceded by
        the latest weights if the worker restarted. ``request_id`` -1 is an evaluation, not counted as a request."""
        self.send_weights_if_restarted(worker)
        refs = self.actors.rollouts[worker].generate.options(num_returns=2).remote(
            request_id, prompts, min_version=self.version, **kwargs)
        if request_id >= 0:
            if self.generating[worker] == 0 and self.started[worker]:
                self.busy_since[worker] = time.monotonic()
            self.generating[worker] += 1
            self.inflight[worker] += 1
        return refs

    def answered(self, worker: int, ok: bool) -> None:
        """A generate call of ``worker`` came back, generated (``ok``) or raised by generate() itself (the worker
        lives): the hang clock (re)starts if it has more out, stops if not."""
        self.generating[worker] -= 1
        if ok:
            self.losses[worker] = 0
        self.started[worker], self.hang_restarts[worker], self.backoff[worker] = True, 0, 0.0
        self.busy_since[worker] = time.monotonic() if self.generating[worker] else None

    def freed(self, worker: int) -> None:
        """A request of ``worker`` is done with: its batch is in the buffer, or it was lost and re-queued."""
        self.inflight[worker] -= 1

    def lost(self, worker: int, error: Exception) -> bool:
        """A generate call of ``worker`` failed because the worker died or is restarting (the caller re-queues the
        request). Returns whether this is news worth a warning (not the n-th refusal of one restart).

        Restarting (``ActorUnavailableError``): back off and send the latest weights before its next request. Dead:
        after ``LOSSES_BEFORE_REPLACING`` losses in a row a new actor takes its place; until then it is sent the
        latest weights again (Ray restarts it with the initial ones)."""
        self.generating[worker] -= 1
        if self.nccl:
            raise ActorLost(f"rollout worker {worker} failed ({first_line(error)}); with rollout.weight_transfer=nccl "
                            "a restarted worker is outside the learners' NCCL group, which cannot be re-formed without "
                            "every member (not implemented): resume the run with rlsys train --resume, or use "
                            "rollout.weight_transfer=object_store") from error
        restarting = isinstance(error, ActorUnavailableError)
        first = not restarting or self.backoff[worker] == 0
        self.started[worker], self.busy_since[worker] = False, None  # a new process, or none
        if restarting:
            low, high = RESTART_BACKOFF_S
            self.backoff[worker] = min(high, max(low, 2 * self.backoff[worker]))
            self.resume_at[worker] = time.monotonic() + self.backoff[worker]
            if first:
                log.warning("rollout worker %d is restarting; it is sent no requests until it answers (retried "
                            "every %g-%g s)", worker, low, high)
            self.needs_weights[worker] = True
            return first
        self.losses[worker] += 1
        if self.losses[worker] >= LOSSES_BEFORE_REPLACING:
            self._replace(worker, error)
        elif self.weights is not None:
            self._send(worker)
        return first

    @property
    def waiting_for_a_restart(self) -> bool:
        """A worker is backing off: the pool may take requests again soon although none is in flight."""
        return max(self.resume_at, default=0.0) > time.monotonic()

    # ------------------------------------------------------------------ weights
    def sync(self, weights: ray.ObjectRef, version: int) -> list[tuple[int, ray.ObjectRef]]:
        """Send every worker ``weights`` of ``version`` (each loads them after its current generation batch);
        returns each worker's acknowledgement ref (its load seconds)."""
        self.weights, self.version = weights, version
        return [(w, self._send(w, self.inflight_updates)) for w in range(len(self.actors.rollouts))]

    def synced(self, version: int) -> None:
        """``rollout.weight_transfer=nccl``: the learners' broadcast of ``version`` reached every worker (no object
        in the object store: a restart from here on is not survivable, :meth:`lost`)."""
        self.weights, self.version = None, version

    def resend(self, worker: int) -> None:
        """``worker`` failed to load the latest weights (it died loading them): send them again now, and again
        ahead of its next request in case Ray refused this one."""
        self._send(worker)
        self.needs_weights[worker] = True

    def roll_back(self, weights: ray.ObjectRef, version: int) -> None:
        """After a resume or a recovery: every worker holds other weights (the initial ones, or a discarded
        timeline's); ``weights`` of ``version`` go ahead of each one's next call."""
        self.weights, self.version = weights, version
        self.needs_weights = [True] * len(self.needs_weights)

    def send_weights_if_restarted(self, worker: int) -> None:
        """A worker that restarted (or rolls back) holds other weights: the latest go first in its queue, ahead of
        the call about to be sent (if that call is refused too, they are sent again with the next one)."""
        if self.needs_weights[worker] and self.weights is not None:
            self._send(worker)
        self.needs_weights[worker] = False

    def _send(self, worker: int, inflight: bool = False) -> ray.ObjectRef:
        """The latest weights to ``worker``: in line with its generate calls, or (``inflight``) on its weights
        group, loaded while it generates. Returns the acknowledgement ref (its load seconds)."""
        method = self.actors.rollouts[worker].update_weights
        if inflight:
            method = method.options(concurrency_group=WEIGHTS_GROUP)
        return method.remote(self.weights, self.version, next(WEIGHT_SENDS))

    # ------------------------------------------------------------------ hangs and deaths
    def watch(self, evaluating_on_0: bool) -> None:
        """Kill (Ray restarts it) a worker that has had requests out for ``hang_timeout_s`` without finishing one;
        its requests then fail and are re-queued. ``evaluating_on_0``: an evaluation is generating on worker 0 and
        holds up its requests for as long as the held-out set takes, so its clock restarts."""
        now = time.monotonic()
        if evaluating_on_0 and self.busy_since[0] is not None:
            self.busy_since[0] = now
        for worker, since in enumerate(self.busy_since):
            if since is not None and now - since > self.hang_timeout_s:
                log.warning("rollout worker %d has finished no request for more than rollout.hang_timeout_s=%g s "
                            "with %d out; taking it for hung and restarting it", worker, self.hang_timeout_s,
                            self.generating[worker])
                self.busy_since[worker] = None
                self.hang_restarts[worker] += 1
                ray.kill(self.actors.rollouts[worker], no_restart=False)

    def _replace(self, worker: int, error: Exception) -> None:
        """A new actor in place of a worker that is dead for good; it is sent the latest weights first."""
        symptom = f"lost {self.losses[worker]} requests in a row"
        if hung := self.hang_restarts[worker]:
            symptom += (f", after {hung} restarts for finishing no request within rollout.hang_timeout_s="
                        f"{self.hang_timeout_s:g} s (raise it if a request takes longer)")
        self.replaced.spend(worker, symptom, error)
        self.actors.replace("rollout worker", worker)
        self.losses[worker] = 0
        if self.weights is not None:
            self._send(worker)
