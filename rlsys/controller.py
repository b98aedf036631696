"""The controller: the driver's event loop that keeps rollout, reward and learning running concurrently.

::

    prompts ──admit──▶ rollout.generate ──▶ reward queue ──▶ reward.score ──▶ buffer.put   (object refs:
       ▲  (capacity from η)                (free worker)                        │    data never visits the driver)
       │ requeue on loss                                  buffer.take(B, v)  ◀── when the learner is idle
       │                                                          │  drops groups older than η, records all
       └──────── rollout.update_weights(v) ◀── learner.get_weights ◀── learner.train_step × N ranks
                      (every sync_every steps)                     version v → v + 1

One loop iteration: admit → learn (if idle and enough is buffered) → wait for any completion → handle it
(generated: queue for a reward worker; put: count; take: start a step; step: sync, log, maybe eval) → restart
reward workers whose call ran past ``reward.call_timeout_s``. Every wait has a timeout; a pipeline that makes no
progress for ``STALL_TIMEOUT_S`` raises :class:`PipelineStalled` rather than hanging.

The reward pool (queue, calls, timeouts, re-scoring) is :mod:`rlsys.reward_pool`, the rollout workers' bookkeeping
(where a request goes, restarts, hangs, replacements, which weights each holds) :mod:`rlsys.rollout_pool`; every
call in flight is a typed record of :mod:`rlsys.calls`; going back to a checkpoint is :mod:`rlsys.recovery`. A
rollout worker's request counts against its in-flight limit until its batch is *in the buffer*, so a slow reward
slows admission instead of piling up generated data: the reward queue never holds more than
``rlsys.rollout_pool.MAX_REQUESTS_PER_WORKER`` batches per rollout worker.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from rlsys.actors.buffer import PutSummary, TakeSummary
from rlsys.actors.learner import StepResult, combine_rank_metrics
from rlsys.actors.placement import ActorHandles
from rlsys.calls import (
    Call,
    Checkpointing,
    Evaluating,
    GatheringWeights,
    Generating,
    Learning,
    LoadingWeights,
    Putting,
    Request,
    RewardPing,
    Scoring,
    SyncRound,
    Taking,
)
from rlsys.checkpoint import CheckpointDir
from rlsys.config import RLConfig
from rlsys.data.tasks import PromptStream
from rlsys.evaluate import accuracy
from rlsys.failures import PromptRetries, RewardFailureWindow, StateLost, first_line
from rlsys.metrics import MetricsWriter, json_safe, reward_scalars, trajectory_scalars, trajectory_totals
from rlsys.reward_pool import RewardPool
from rlsys.rollout_pool import RolloutPool
from rlsys.staleness import AdmissionGate
from rlsys.types import Prompt

log = logging.getLogger(__name__)

STALL_TIMEOUT_S = 600.0
RESULT_TIMEOUT_S = 300.0
# A lost evaluation (rollout worker 0 or reward worker 0 died under it) is repeated after each of these waits
# (seconds) -- time for Ray to restart the worker, or for the controller to replace it -- then skipped with an error.
# Repeated at once, all attempts were spent within the seconds a restart takes.
EVAL_RETRY_WAITS_S = (5.0, 15.0, 45.0)
MAX_FILTERED_STEPS = 20  # dynamic sampling: give up after this many steps' worth of groups filtered in a row


class PipelineStalled(RuntimeError):
    """Nothing completed for too long: a worker hangs or the cluster lost the resources the run needs."""


@dataclass
class _Window:
    """What happened since the last optimizer step: turned into per-step metrics, then reset."""

    start: float = field(default_factory=time.perf_counter)
    samples: int = 0
    tokens: int = 0
    rewards: list[float] = field(default_factory=list)  # NaN where the reward failed
    filtered_groups: int = 0  # dropped by dynamic sampling
    components: dict[str, list[float]] = field(default_factory=dict)  # reward term → values (NaN: failed)
    component_s: dict[str, float] = field(default_factory=dict)  # reward term → compute seconds
    reward_s: float = 0.0
    response_lengths: list[int] = field(default_factory=list)
    trajectories: dict[str, int] = field(default_factory=dict)  # multi-turn counts (rlsys.metrics.trajectory_totals)
    generate_s: float = 0.0
    learner_s: float = 0.0


@dataclass
class RunSummary:
    steps: int
    eval_accuracy: dict[int, float]  # policy version → held-out accuracy
    wall_s: float
    samples_generated: int
    samples_per_s: float
    learner_idle_frac: float
    rollout_idle_frac: float
    dropped_stale_groups: int
    lost_requests: int
    reward_failures: int
    reward_retries: int  # reward calls lost (actor died or timed out) and re-scored
    filtered_groups: int
    max_staleness_seen: int
    sync_s_mean: float
    failed_prompts: list[dict] = field(default_factory=list)  # dropped after failed requests (PromptRetries)
    replaced_workers: int = 0  # rollout and reward actors found dead for good and replaced by new ones
    recoveries: int = 0  # the learner group rebuilt from a checkpoint inside the job (rlsys.recovery)
    eval_reward_failures: int = 0  # held-out samples whose reward failed (counted as wrong in eval_accuracy)
    # Multi-turn runs: policy version → the held-out trajectories' turns and tool_calls (means per trajectory),
    # tool_call_rate (fraction with at least one call) and env_failures (count); empty for single completions.
    eval_trajectories: dict[int, dict[str, float]] = field(default_factory=dict)


class Controller:
    """Runs the asynchronous loop over already created and set-up actors (see :mod:`rlsys.actors.placement`)."""

    def __init__(self, cfg: RLConfig, actors: ActorHandles, train_prompts: list[Prompt], eval_prompts: list[Prompt],
                 metrics: MetricsWriter, on_step: Callable[[int, dict], None] | None = None,
                 run_dir: Path | None = None, lost_at: float | None = None) -> None:
        """``lost_at``: when the actor whose death this controller recovers from (:mod:`rlsys.recovery`) was found
        dead (``time.monotonic()``); its first step logs ``recovery/seconds``, the time from then to training."""
        self.cfg, self.actors, self.metrics, self.on_step = cfg, actors, metrics, on_step
        # train.checkpoint_every > 0 needs the run directory to write into
        self.checkpoints = CheckpointDir(run_dir, cfg.train.keep_checkpoints) \
            if run_dir is not None and cfg.train.checkpoint_every > 0 else None
        self.stream = PromptStream(train_prompts, cfg.train.seed)
        self.eval_prompts = eval_prompts
        self.gate = AdmissionGate(cfg.train.groups_per_step, cfg.train.max_staleness)
        self.pending: dict[ray.ObjectRef, Call] = {}
        self.requests = itertools.count()
        self.rollouts = RolloutPool(actors, cfg.rollout.hang_timeout_s, cfg.rollout.inflight_weight_updates,
                                    nccl=cfg.rollout.weight_transfer == "nccl")
        self.rewards = RewardPool(actors.rewards, actors.buffer, cfg.reward, self.pending.__setitem__,
                                  lambda i: actors.replace("reward worker", i))
        # A hung worker must be restarted before the whole pipeline counts as stalled.
        hang = cfg.rollout.hang_timeout_s
        self.stall_timeout_s = max(STALL_TIMEOUT_S, 2 * hang) if math.isfinite(hang) else STALL_TIMEOUT_S
        self.version = 0  # learner's policy version = optimizer steps done
        self.buffer_depth = 0
        self.buffer_seq = 0  # depth reports older than this are ignored
        self.learning = False
        self.window = _Window()
        self.eval_accuracy: dict[int, float] = {}
        self.eval_trajectories: dict[int, dict[str, float]] = {}
        self.eval_retry: tuple[float, int] | None = None  # (when, attempt) of a lost evaluation's next attempt
        # A weight sync held back while a lost evaluation waits to be repeated: the rollout workers keep the weights
        # of the version it evaluates (admission is relative to that version, so η still holds)
        self.sync_deferred = False
        self.sync_s: list[float] = []
        self.staleness_seen: list[int] = []
        self.totals = {"samples": 0, "tokens": 0, "dropped_stale": 0, "lost_requests": 0, "reward_failures": 0,
                       "eval_reward_failures": 0, "filtered_groups": 0, "learner_s": 0.0, "generate_s": 0.0}
        self.filtered_in_a_row = 0
        self.retries = PromptRetries(self.stream)
        # Every prompt admitted and not yet trained, dropped or given back ((prompt id, epoch) → prompt): what a
        # checkpoint must re-queue, since the groups in flight and in the buffer are not in it.
        self.outstanding: dict[tuple[str, int], Prompt] = {}
        self.resumed, self.elapsed_before = False, 0.0
        self.lost_at = lost_at
        self.reward_failures = RewardFailureWindow(cfg.reward.max_failure_rate, cfg.reward.failure_window)
        # Actors that hold the run's state: the death of one stops this controller with StateLost, naming it (the
        # learner group is then rebuilt from a checkpoint, rlsys.recovery, or the run stops).
        essential = {f"learner rank {i}": a for i, a in enumerate(actors.learners)}
        essential |= {"the buffer actor": actors.buffer, "the reference actor": actors.reference}
        self.essential = {a._actor_id.hex(): name for name, a in essential.items() if a is not None}

    # ------------------------------------------------------------------ the loop
    def run(self) -> RunSummary:
        self.t0 = time.perf_counter() - self.elapsed_before
        if self.resumed or self.lost_at is not None:  # rollout workers hold the initial checkpoint's weights, or
            # a discarded timeline's: the learners' (restored or initial) go ahead of each one's first call
            refs = [learner.get_weights.remote() for learner in self.actors.learners]  # a collective under ZeRO-3
            self.rollouts.roll_back(refs[0], self.version)
        if self.version not in self.eval_accuracy and (self.version == 0 or self._eval_due()):
            self._evaluate()  # a resume may have evaluated this version already
        last_progress = time.monotonic()
        while self.version < self.cfg.train.num_steps or self._finishing():
            self._admit()
            self._maybe_learn()
            self.rewards.watch()
            self.rollouts.watch(evaluating_on_0=any(isinstance(c, Evaluating) and c.generated is not None
                                                    for c in self.pending.values()))
            self._retry_eval_when_due()
            if not self.pending and (self.rewards.waiting_for_a_restart or self.eval_retry
                                     or self.rollouts.waiting_for_a_restart):  # only waits
                time.sleep(0.1)
                continue
            if not self.pending:
                raise PipelineStalled(
                    f"nothing in flight at version {self.version}: buffer holds {self.buffer_depth} groups, admission "
                    f"capacity is {self.gate.capacity(self.rollouts.version)}; this is a bug in the controller")
            done, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0)
            if done:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > self.stall_timeout_s:
                raise PipelineStalled(f"no rollout, reward or learner call finished for {self.stall_timeout_s:.0f} s; "
                                      f"waiting on {sorted(type(c).__name__ for c in self.pending.values())}")
            for ref in done:
                self._handle(ref, self.pending.pop(ref))
        self._drain_rollouts()
        self.reward_failures.check(final=True)  # a run shorter than the window is held to the same rate
        return self._summary()

    def abandon(self) -> None:
        """After :class:`StateLost`: cancel what is still queued on the rollout and reward workers, which outlive
        this controller, so that the requests of the one that carries on do not wait behind it (best effort: a call
        already running finishes, and its result is never read)."""
        for ref, call in self.pending.items():
            if isinstance(call, Generating | Scoring | Evaluating | LoadingWeights | RewardPing):
                try:
                    ray.cancel(ref)
                except (RayError, ValueError, TypeError) as e:  # already finished, or not cancellable
                    log.debug("could not cancel %s: %s", type(call).__name__, e)
        self.pending.clear()

    def _drain_rollouts(self) -> None:
        """Let requests still generating or being scored land in the buffer, so the sample log accounts for them."""
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        rollout = (Generating, Scoring, Putting, RewardPing)
        while time.monotonic() < deadline:
            self.rewards.watch()
            refs = [ref for ref, c in self.pending.items() if isinstance(c, rollout)]
            if not refs and not self.rewards.queue:
                return
            done, _ = ray.wait(refs, num_returns=1, timeout=1.0) if refs else ([], [])
            for ref in done:
                self._handle(ref, self.pending.pop(ref))
        for c in self.pending.values():
            requests = c.requests if isinstance(c, Scoring) else \
                [c.request] if isinstance(c, Generating | Putting) else []
            for request in requests:
                log.warning("a rollout request did not finish within %.0f s of the end of the run: prompts %s",
                            RESULT_TIMEOUT_S, [q.prompt_id for q in request.prompts])

    def _finishing(self) -> bool:
        """After the last step: wait for its weight sync and evaluation, not for surplus rollouts."""
        return self.eval_retry is not None or any(
            isinstance(c, Learning | GatheringWeights | LoadingWeights | Evaluating | Checkpointing)
            for c in self.pending.values())

    # ------------------------------------------------------------------ admit → generate → score → buffer
    def _admit(self) -> None:
        if self.version >= self.cfg.train.num_steps:
            return
        while True:
            capacity = self.gate.capacity(self.rollouts.version)
            worker = self.rollouts.pick()
            if capacity == 0 or worker is None:
                return
            prompts = self.retries.next_prompts(min(self.cfg.rollout.groups_per_request, capacity))
            self.outstanding.update(((p.prompt_id, p.epoch), p) for p in prompts)
            self.gate.admit(len(prompts), self.rollouts.version)
            rid = next(self.requests)
            batch, generated = self.rollouts.generate(worker, rid, prompts)
            self.pending[generated] = Generating(Request(rid, prompts, worker, batch))

    def _on_generated(self, call: Generating, ref: ray.ObjectRef) -> None:
        worker = call.request.worker
        try:
            ray.get(ref, timeout=RESULT_TIMEOUT_S)
        except RayTaskError as e:  # generate() raised: the worker is alive, the request itself failed
            self.rollouts.answered(worker, ok=False)
            self._requeue(call.request, e, failed=True)
            return
        except RayError as e:  # the worker died or is restarting (rlsys.rollout_pool)
            self._requeue(call.request, e, quiet=not self.rollouts.lost(worker, e))
            return
        self.retries.succeeded()
        self.rollouts.answered(worker, ok=True)
        self.rewards.submit(call.request)

    def _on_scored(self, call: Scoring, ref: ray.ObjectRef) -> None:
        try:
            ray.get(ref, timeout=RESULT_TIMEOUT_S)  # the call's sample count: the batches stay in the object store
        except RayError as e:
            for request, why in self.rewards.lost(call, e):  # the rollout worker is fine: it keeps its weights
                self._requeue(request, RuntimeError(why), failed=True)
        else:
            self.rewards.scored(call)
        self.rewards.dispatch()

    def _on_put_done(self, call: Putting, ref: ray.ObjectRef) -> None:
        put = ray.get(ref, timeout=RESULT_TIMEOUT_S)  # the buffer's death stops the run (_handle)
        self.rollouts.freed(call.request.worker)
        self._on_put(put)

    def _on_put(self, put: PutSummary) -> None:
        self._buffer_report(put.depth, put.seq)
        self.reward_failures.observe(put.rewards, put.components, put.failed_example)
        self.reward_failures.check()
        self.totals["reward_failures"] += sum(math.isnan(r) for r in put.rewards)  # every put: the sample log's count
        w = self.window
        w.samples += put.num_samples
        w.tokens += put.num_tokens
        w.rewards.extend(put.rewards)
        w.response_lengths.extend(put.response_lengths)
        for name, total in put.trajectories.items():
            w.trajectories[name] = w.trajectories.get(name, 0) + total
        for name, values in put.components.items():
            w.components.setdefault(name, []).extend(values)
        w.generate_s += put.generate_s
        w.reward_s += put.reward_s
        for name, seconds in put.component_s.items():
            w.component_s[name] = w.component_s.get(name, 0.0) + seconds
        for error in put.reward_errors[:3]:
            log.warning("reward function failed on a sample of request %d: %s", put.request_id, error)
        if put.filtered_keys:  # dynamic sampling dropped them: free their slots so more are generated
            self._settled(put.filtered_keys)
            self.gate.discard(len(put.filtered_keys))
            w.filtered_groups += len(put.filtered_keys)
            self.totals["filtered_groups"] += len(put.filtered_keys)  # here, not per step: drained puts count too
            self.filtered_in_a_row += len(put.filtered_keys)
        if put.num_groups > len(put.filtered_keys):
            self.filtered_in_a_row = 0
        limit = MAX_FILTERED_STEPS * self.cfg.train.groups_per_step
        if self.filtered_in_a_row > limit:
            raise PipelineStalled(
                f"dynamic sampling dropped {self.filtered_in_a_row} groups in a row (every group's rewards were all "
                f"equal) at version {self.version}: the task is too easy or too hard for the policy. Turn off "
                "algo.dynamic_sampling or raise rollout.group_size")

    def _requeue(self, request: Request, error: Exception, failed: bool = False, quiet: bool = False) -> None:
        """A request whose batch was lost (not generated, or never scored): its prompts go back to the front of the
        queue, and its admission slot and its rollout worker's in-flight slot are freed.

        ``failed``: the request itself failed (generation raised, or scoring failed every attempt), as opposed to
        its worker dying: its prompts are retried alone and dropped after a few failures (:class:`PromptRetries`)."""
        prompts, worker = request.prompts, request.worker
        self._settled((p.prompt_id, p.epoch) for p in prompts)  # back to the stream (or dropped), not in flight
        self.rollouts.freed(worker)
        self.gate.discard(len(prompts))
        self.totals["lost_requests"] += 1
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        retry = self.retries.lost(prompts, message, failed)
        (log.debug if quiet else log.warning)(
            "lost a request of %d prompt groups from rollout worker %d (re-queued: %s): %s", len(prompts), worker,
            [q.prompt_id for q in retry], message if failed else error)

    def _buffer_report(self, depth: int, seq: int) -> None:
        if seq > self.buffer_seq:
            self.buffer_depth, self.buffer_seq = depth, seq

    # ------------------------------------------------------------------ learn → sync
    def _maybe_learn(self) -> None:
        busy = self.learning or any(isinstance(c, Taking) for c in self.pending.values())
        if busy or self.version >= self.cfg.train.num_steps or self.buffer_depth < self.cfg.train.groups_per_step:
            return
        batch, summary = self.actors.buffer.take.options(num_returns=2).remote(
            self.cfg.train.groups_per_step, self.version)
        self.pending[summary] = Taking(batch)

    def _settled(self, keys) -> None:
        """These admitted groups are done with: trained, dropped, or given back to the prompt stream."""
        for key in keys:
            self.outstanding.pop(tuple(key), None)

    def _on_take(self, call: Taking, take: TakeSummary) -> None:
        self._buffer_report(take.depth, take.seq)
        self._settled(take.dropped_keys + take.taken_keys)
        if take.dropped_keys:
            self.gate.discard(len(take.dropped_keys))
            self.totals["dropped_stale"] += len(take.dropped_keys)
            log.warning("dropped %d group(s) older than max_staleness=%d at version %d: %s", len(take.dropped_keys),
                        self.cfg.train.max_staleness, self.version, take.dropped_keys)
        if not take.taken:
            return
        staleness = [self.version - v for v in take.batch_versions]
        batch = call.batch
        ref = self.actors.reference.logprobs.remote(batch) if self.actors.reference is not None else None
        refs = [learner.train_step.remote(batch, ref) for learner in self.actors.learners]
        self.pending[refs[0]] = Learning(refs, staleness)
        self.learning = True

    def _on_learn(self, call: Learning, results: list[StepResult]) -> None:
        self.learning = False
        self.version = results[0].version
        assert all(r.version == self.version for r in results), "learner ranks disagree on the policy version"
        step_s = max(r.seconds for r in results)
        self.window.learner_s += step_s
        self.staleness_seen.extend(call.staleness)
        train = combine_rank_metrics([r.metrics for r in results])
        self._log_step(train, call.staleness, step_s)
        if self.lost_at is not None:
            seconds, self.lost_at = time.monotonic() - self.lost_at, None
            log.warning("training again at version %d, %.0f s after the failure", self.version, seconds)
            self.metrics.log(self.version, {"recovery/seconds": seconds})
        last = self.version >= self.cfg.train.num_steps
        if self.checkpoints is not None and (last or self.version % self.cfg.train.checkpoint_every == 0):
            self._checkpoint()
        if last or self.version % self.cfg.train.sync_every == 0:
            if self.eval_retry is None:
                self._sync()
            else:
                self.sync_deferred = True
        elif self._eval_due():
            self._evaluate()

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> None:
        """Every learner rank writes its part of the checkpoint of this version (calls run in order: after the
        step just finished, before the next one), the buffer flushes its sample log, and the driver's state is
        taken now, at the same version. No take is in flight here (it waits for the step), so every admitted group
        is in :attr:`outstanding` or trained."""
        directory = self.checkpoints.begin(self.version)
        refs = [learner.save_checkpoint.remote(str(directory)) for learner in self.actors.learners]
        log_parts = self.actors.buffer.flush_log.remote()
        self.pending[refs[0]] = Checkpointing(refs, self.version, directory, self.checkpoint_state(), log_parts)

    def checkpoint_state(self) -> dict:
        """The driver's part of a checkpoint (``state.json``): the policy version, the prompt stream's position
        (:meth:`PromptStream.state`) with the prompts admitted but not trained (to generate again on a resume), the
        retry bookkeeping, the held-out accuracy so far, the run's totals and how many metrics records were
        written."""
        return json_safe({"version": self.version, "stream": self.stream.state(),
                          "outstanding": [[pid, epoch] for pid, epoch in self.outstanding],
                          "retries": self.retries.state(),
                          "eval_accuracy": [[v, a] for v, a in self.eval_accuracy.items()],
                          "eval_trajectories": [[v, t] for v, t in self.eval_trajectories.items()],
                          "totals": dict(self.totals), "metrics_records": self.metrics.records,
                          "elapsed_s": time.perf_counter() - self.t0})

    def restore(self, state: dict) -> None:
        """Continue from :meth:`checkpoint_state` (the learners loaded the same checkpoint): the prompts that were
        outstanding come first, and the admission gate counts the trained groups only, so the staleness bound holds
        relative to the restored version exactly as in a run that reached it with an empty pipeline."""
        self.version = state["version"]  # the rollout workers are rolled back to it when the run starts (run)
        self.stream.restore(state["stream"])
        self.retries.restore(state["retries"])
        self.stream.requeue(self.stream.prompts_for(state["outstanding"]))
        self.eval_accuracy = {int(v): (math.nan if a is None else a) for v, a in state["eval_accuracy"]}
        self.eval_trajectories = {int(v): t for v, t in state.get("eval_trajectories", [])}  # none before 2026-12-03
        self.totals.update(state["totals"])
        self.elapsed_before = state["elapsed_s"]  # the run's time so far, for its throughput figures
        self.gate = AdmissionGate(self.cfg.train.groups_per_step, self.cfg.train.max_staleness,
                                  admitted=self.version * self.cfg.train.groups_per_step)
        self.resumed = True

    def _on_checkpointed(self, call: Checkpointing) -> None:
        saved = ray.get(call.refs, timeout=RESULT_TIMEOUT_S)
        assert all(v == call.version for v in saved), f"learner ranks saved versions {saved}, not {call.version}"
        state = {**call.state, "log_parts": ray.get(call.log_parts, timeout=RESULT_TIMEOUT_S)}
        written = self.checkpoints.commit(call.directory, call.version, state)
        log.info("checkpoint of version %d: %s (%.2f GB in %.1f s)", call.version, written.path, written.bytes / 1e9,
                 written.seconds)
        self.metrics.log(call.version, {"checkpoint/seconds": written.seconds, "checkpoint/gb": written.bytes / 1e9})

    def _sync(self) -> None:
        """Put the new weights in the object store once (rank 0's return value); every rollout worker fetches
        that one object. Whatever is submitted to a worker after the sync uses the new version: rollout calls run in
        order, and with in-flight updates a generate call waits for the weights synced before it
        (:class:`rlsys.actors.rollout.EngineWeights`)."""
        if self.cfg.rollout.weight_transfer == "nccl":  # learner rank 0 broadcasts to every worker (untested)
            refs = [learner.broadcast_weights.remote(self.version) for learner in self.actors.learners]
        else:
            refs = [learner.get_weights.remote() for learner in self.actors.learners]
        self.pending[refs[0]] = GatheringWeights(refs, time.perf_counter())

    def _on_weights(self, call: GatheringWeights) -> None:
        if self.cfg.rollout.weight_transfer == "nccl":  # every worker holds the version already
            seconds = time.perf_counter() - call.start
            self.rollouts.synced(self.version)
            self.sync_s.append(seconds)
            self.metrics.log(self.version, {"sync/seconds": seconds})
        else:
            sync = SyncRound(self.version, time.perf_counter() - call.start, waiting=len(self.actors.rollouts))
            # acked after the worker's current batch, or (in-flight updates) after its next decoding step
            for worker, ack in self.rollouts.sync(call.refs[0], self.version):
                self.pending[ack] = LoadingWeights(sync, worker)
        if self._eval_due() and self.version not in self.eval_accuracy:  # a resume may have evaluated it already
            self._evaluate()

    def _on_sync_ack(self, call: LoadingWeights, ref: ray.ObjectRef) -> None:
        sync, worker = call.round, call.worker
        sync.waiting -= 1
        try:
            sync.load_s.append(ray.get(ref, timeout=RESULT_TIMEOUT_S))
        except RayError as e:  # died while loading: Ray restarts it with the initial weights, so resend
            log.warning("rollout worker %d failed to load version %d, resending: %s", worker, sync.version, e)
            self.rollouts.resend(worker)
        if sync.waiting == 0 and sync.load_s:
            total = sync.gather_s + max(sync.load_s)
            self.sync_s.append(total)
            self.metrics.log(sync.version, {"sync/seconds": total, "sync/gather_s": sync.gather_s,
                                            "sync/load_s": max(sync.load_s)})

    # ------------------------------------------------------------------ evaluation
    def _eval_due(self) -> bool:
        every = self.cfg.train.eval_every
        return self.version >= self.cfg.train.num_steps or (every > 0 and self.version % every == 0)

    def _evaluate(self, attempt: int = 0) -> None:
        """Greedy accuracy on the held-out prompts, queued on rollout worker 0 behind its weight update. The batch
        is sent to be scored once generated (:meth:`_on_eval_done`), not as a pending argument: Ray runs a caller's
        calls to an actor in order, so a score call waiting for its argument would hold up every reward call after
        it for as long as the evaluation generates."""
        generated, count = self.rollouts.generate(0, -1, self.eval_prompts, greedy=True)
        self.pending[count] = Evaluating(self.rollouts.version, attempt, generated)

    def _on_eval(self, call: Evaluating, batch) -> None:
        term = self.cfg.reward.accuracy_term
        samples = [s for g in batch.groups for s in g.samples]
        rewards = np.array([s.reward for s in samples], dtype=np.float64)
        acc = accuracy(np.array([s.reward_components.get(term, np.nan) for s in samples], dtype=np.float64))
        self.eval_accuracy[call.version] = acc
        scored = rewards[~np.isnan(rewards)]  # NaN: the reward failed on that sample
        failed = [s for s in samples if s.reward_failed or math.isnan(s.reward)]
        if failed:  # counted as wrong: say so, or a reward that times out looks like a policy that got worse
            self.totals["eval_reward_failures"] += len(failed)
            log.warning("evaluation at version %d: the reward failed on %d of %d held-out samples (counted as wrong), "
                        "e.g. on prompt %r: %s", call.version, len(failed), len(samples), failed[0].prompt_id,
                        failed[0].reward_error)
        trajectories = trajectory_scalars(trajectory_totals(samples), "eval")
        if trajectories:
            self.eval_trajectories[call.version] = {k.removeprefix("eval/"): v for k, v in trajectories.items()}
        self.metrics.log(call.version, {"eval/accuracy": acc, "eval/reward_failures": float(len(failed)),
                                        "eval/reward_mean": float(scored.mean()) if scored.size else math.nan,
                                        **trajectories})
        if self.on_step:
            self.on_step(self.version, {"eval_acc": acc})

    # ------------------------------------------------------------------ dispatch
    def _handle(self, ref: ray.ObjectRef, call: Call) -> None:
        """Act on a finished call; the death of an actor the run cannot go on without stops it with StateLost."""
        try:
            self._dispatch(ref, call)
        except RayError as e:
            name = self._dead_state_holder(e, call)
            if name is None:
                raise
            raise StateLost(f"{name} died at version {self.version} ({first_line(e)})", name) from e

    def _dead_state_holder(self, error: RayError, call: Call) -> str | None:
        """The learner rank(s), buffer or reference actor whose death ``error`` is, if it is one. When a learner
        call failed, every rank is asked whether it lives — the survivors of a rank's death fail in their
        collectives, or die of it — and the dead ones are named; if all live, the error is the learner's own (a bug,
        bad data) and is raised as it is."""
        name = self.essential.get(error.actor_id or "") if isinstance(error, RayActorError) else None
        if name is not None and not name.startswith("learner"):
            return name
        if name is None and not isinstance(call, Learning | GatheringWeights | Checkpointing):
            return None
        dead = []
        for rank, learner in enumerate(self.actors.learners):
            try:
                ray.get(learner.__ray_ready__.remote(), timeout=RESULT_TIMEOUT_S)
            except RayError:
                dead.append(rank)
        if not dead:
            return name  # the actor that raised answers now (a Ray hiccup) — still not to be trusted
        return f"learner rank {dead[0]}" if len(dead) == 1 else f"learner ranks {', '.join(map(str, dead))}"

    def _dispatch(self, ref: ray.ObjectRef, call: Call) -> None:
        match call:
            case Generating():
                self._on_generated(call, ref)
            case Scoring():
                self._on_scored(call, ref)
            case Putting():
                self._on_put_done(call, ref)
            case RewardPing():
                self.rewards.pinged(call, ref, RESULT_TIMEOUT_S)
            case Taking():
                self._on_take(call, ray.get(ref, timeout=RESULT_TIMEOUT_S))
            case Learning():
                self._on_learn(call, ray.get(call.refs, timeout=RESULT_TIMEOUT_S))
            case GatheringWeights():
                self._on_weights(call)
            case LoadingWeights():
                self._on_sync_ack(call, ref)
            case Evaluating():
                self._on_eval_done(call, ref)
            case Checkpointing():
                self._on_checkpointed(call)
            case _:
                raise AssertionError(f"unknown call {call!r}")

    def _on_eval_done(self, call: Evaluating, ref: ray.ObjectRef) -> None:
        try:
            batch = ray.get(ref, timeout=RESULT_TIMEOUT_S)
            if call.generated is not None:  # generated (ref: its sample count): now score it
                scored, _ = self.actors.rewards[0].score.options(num_returns=2).remote(call.generated)
                self.pending[scored] = Evaluating(call.version, call.attempt)
                return
        except RayError as e:  # the evaluating worker died; evaluate again on its restarted (or new) self
            if call.attempt >= len(EVAL_RETRY_WAITS_S):
                log.error("evaluation at version %d failed %d times; skipping it: %s", call.version, call.attempt + 1,
                          first_line(e))
                self._sync_if_deferred()
                return
            wait = EVAL_RETRY_WAITS_S[call.attempt]
            log.warning("evaluation at version %d was lost (%s); repeating it in %.0f s", call.version, first_line(e),
                        wait)
            self.eval_retry = (time.monotonic() + wait, call.attempt + 1)
            return
        self._on_eval(call, batch)

    def _retry_eval_when_due(self) -> None:
        """Repeat a lost evaluation once its wait is over, at the version the workers then hold — the lost one's,
        unless a weight sync was already under way: the syncs due meanwhile wait for it (:attr:`sync_deferred`).
        Without that, a replacement worker up in seconds trained the run ahead and version 0 went unevaluated."""
        if self.eval_retry is not None and self.eval_retry[0] <= time.monotonic():
            attempt, self.eval_retry = self.eval_retry[1], None
            self._evaluate(attempt)
            self._sync_if_deferred()  # queued behind the evaluation on worker 0

    def _sync_if_deferred(self) -> None:
        if self.sync_deferred:
            self.sync_deferred = False
            self._sync()

    # ------------------------------------------------------------------ metrics
    def _log_step(self, train: dict[str, float], staleness: list[int], step_s: float) -> None:
        w, now = self.window, time.perf_counter()
        elapsed = max(now - w.start, 1e-9)
        n_workers = len(self.actors.rollouts)
        scalars = {
            **{f"train/{k}": v for k, v in train.items()},
            **reward_scalars(w.rewards, w.response_lengths, w.components),
            "rollout/response_len": float(np.mean(w.response_lengths)) if w.response_lengths else math.nan,
            **trajectory_scalars(w.trajectories, "rollout"),
            "perf/samples_per_s": w.samples / elapsed,
            "perf/tokens_per_s": w.tokens / elapsed,
            "perf/step_s": elapsed,
            "perf/learner_idle_frac": max(0.0, 1.0 - w.learner_s / elapsed),
            "perf/rollout_idle_frac": max(0.0, 1.0 - w.generate_s / (elapsed * n_workers)),
            "buffer/depth": float(self.buffer_depth),
            "staleness/mean": float(np.mean(staleness)),
            "staleness/max": float(np.max(staleness)),
            "pipeline/dropped_stale_total": float(self.totals["dropped_stale"]),
            "pipeline/lost_requests_total": float(self.totals["lost_requests"]),
            "pipeline/filtered_groups": float(w.filtered_groups),
            "pipeline/reward_queue_max": float(self.rewards.queue_max),
            "pipeline/reward_retries_total": float(self.rewards.retries),
            "perf/reward_busy_frac": min(1.0, w.reward_s / (elapsed * len(self.actors.rewards))),
            **{f"reward_latency/{k}_ms_per_sample": 1e3 * v / max(1, w.samples) for k, v in w.component_s.items()},
        }
        self.metrics.log(self.version, scalars, {"staleness": staleness})
        for key, value in (("samples", w.samples), ("tokens", w.tokens), ("learner_s", w.learner_s),
                           ("generate_s", w.generate_s)):
            self.totals[key] += value
        if self.on_step:
            self.on_step(self.version, {"reward": scalars["reward/mean"], "stale": scalars["staleness/mean"]})
        self.window = _Window(start=now)
        self.rewards.queue_max = len(self.rewards.queue)

    def _summary(self) -> RunSummary:
        wall = time.perf_counter() - self.t0
        t = self.totals
        return RunSummary(
            steps=self.version, eval_accuracy=dict(sorted(self.eval_accuracy.items())), wall_s=wall,
            eval_trajectories=dict(sorted(self.eval_trajectories.items())),
            samples_generated=t["samples"], samples_per_s=t["samples"] / wall,
            learner_idle_frac=1.0 - t["learner_s"] / wall,
            rollout_idle_frac=1.0 - t["generate_s"] / (wall * len(self.actors.rollouts)),
            dropped_stale_groups=t["dropped_stale"], lost_requests=t["lost_requests"],
            reward_failures=t["reward_failures"], reward_retries=self.rewards.retries,
            filtered_groups=t["filtered_groups"],
            max_staleness_seen=max(self.staleness_seen, default=0),
            sync_s_mean=float(np.mean(self.sync_s)) if self.sync_s else math.nan,
            failed_prompts=list(self.retries.dropped),
            replaced_workers=sum(self.rollouts.replaced.used) + sum(self.rewards.replaced.used),
            eval_reward_failures=t["eval_reward_failures"],
        )
