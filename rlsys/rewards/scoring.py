"""Score a batch with a composite reward: rule terms in an isolated child process (a deadline per item), model
terms in the caller's process.

Why a child process: reward functions are arbitrary user code that can hang, crash the interpreter, or (like
math-verify) rely on signal-based timeouts that only work in a process's main thread -- and the scorer is used
inside Ray actors, where it is called from non-main threads. A child process runs the function in its own main
thread, and it can be killed when a reward hangs, which a thread cannot.

How a hang is stopped: the parent watches the child; nothing relies on the reward noticing a signal. The child
makes one *rule call* at a time -- a term on one item (sample and process scope) or on one prompt group (group
scope) -- and before each writes the call's position and start time into a slot of shared memory; it sends the
finished rows back every ``_FLUSH_S`` seconds and at the end, so a batch costs one request and a few messages, not
a round trip per item. The parent reads the slot: a call past its deadline gets the child SIGKILLed -- which no
reward can block, ignore or catch, whether it spins in Python, sits in a C call or has masked every signal -- and
fails; a fresh child then makes the calls still without a result (those finished since its last message are
made again). A child that dies fails the call it was in, the same way.

The child is started with "spawn", which re-imports the parent's main module: a plain script that builds a
RewardScorer must do so under ``if __name__ == "__main__":`` (Ray workers and pytest already do).
"""

from __future__ import annotations

import io
import logging
import math
import multiprocessing
import multiprocessing.util
import numbers
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from types import TracebackType
from typing import Any

from rlsys.rewards.components import (
    FLOAT32_MAX,
    RewardComponent,
    RewardItem,
    RewardOutcome,
    TermRow,
    combine,
    group_slices,
    trajectory_of,
)
from rlsys.rewards.process import split_steps, summarize_steps
from rlsys.rewards.registry import RewardFn, Scored, get_reward_fn

logger = logging.getLogger(__name__)

# Spawning the child and importing the reward's module is not counted against any item's deadline (a restart
# after a hang is against its score() call's budget); this bounds it separately, generously, because imports on
# a loaded node can be slow.
_START_TIMEOUT_S = 120.0
# The child sends finished rows at least this often (seconds): a killed child loses at most about this much work,
# which the next child redoes, while a batch of cheap rules costs a handful of messages instead of one per item.
_FLUSH_S = 0.05
# The parent re-reads the child's progress slot at least this often (seconds) while a call runs; deadlines count
# from the child's own start times, so this is about the most by which one is overrun.
_POLL_S = 0.1
# After this many rule calls in a row of one score() call each lost the child (it crashed, or hung past its
# deadline) with no call succeeding in between, the calls left fail without being run: a reward that kills its
# process on every sample would otherwise cost a restart per sample (~0.3 s on 2 cores; a timeout_s per sample for
# one that hangs), and a run stopped by reward.max_failure_rate would take minutes to get there.
MAX_LOST_IN_A_ROW = 8
# Ray SIGKILLs an actor's child processes as the actor is killed (RAY_kill_child_processes_on_worker_exit), just
# before the actor itself. A child SIGKILLed by someone else may mean this process is next: the scorer waits this
# long (seconds) before failing the call, so that a reward call the driver has given up on (reward.call_timeout_s,
# or a worker killed mid-call) does not answer "crashed" for its samples in the moment before the actor dies,
# and the driver scores the batch again instead. Any other SIGKILL (the OOM killer) costs only the wait.
_KILLED_FROM_OUTSIDE_WAIT_S = 2.0

# What reward functions print reaches the reward worker's log (and the driver's console) up to this many characters
# per stream and score() request (_BoundedOutput): enough to debug a reward, not enough to flood a run.
REWARD_OUTPUT_CHARS = 4096

# A rule call (term, start, stop): rule term number ``term`` on items[start:stop] -- one item (sample and process
# scope) or one prompt group (group scope). A plain tuple: a batch has one per item and term.
_RuleCall = tuple[int, int, int]


class _StartFailed(Exception):
    """The child process reported or showed that it cannot serve; the message says why."""


class RewardScorer:
    """Scores items with the reward ``spec``: a reward name or import path, or a list of weighted
    :class:`RewardComponent` terms, summed.

    Rule-based terms run in one child process, each call of a rule with its own deadline: ``timeout_s`` seconds
    for a sample- or process-scope term on one item, and ``timeout_s`` × the group's size for a group-scope term's
    single call on a prompt group (per sample, as for the other scopes: the group gets its samples' time). A call
    past its deadline fails its item(s) with "timed out after … s", one that kills the child with "… crashed
    (…)"; the child is killed and restarted and the other items are scored as usual. The rule terms of one
    ``score()`` call share a budget of ``timeout_s`` × items × rule terms (what every call using its whole
    deadline would take), or ``max_call_s`` if that is smaller, restarts after hangs included: once it is used up
    no further call starts and the items left fail with "not scored: …", so even a reward that hangs on every item
    returns after about that budget plus one call's deadline (and a first start of the child, if the last call's
    final item took it, which is not charged). After ``MAX_LOST_IN_A_ROW`` calls in a row each lost the child, the
    calls left fail unscored ("not scored: the … rule calls before it …") rather than paying a restart each.
    Model-based terms run here, in the caller's process, on ``device`` (:mod:`rlsys.rewards.model_terms`).
    ``score`` never raises because of a reward function or a reward model.
    Unknown names raise ValueError here at construction, not at the first score, and a child process that cannot
    start raises RuntimeError. Thread-safe: calls are serialized.
    """

    def __init__(self, spec: str | list, timeout_s: float, device: str = "cpu", max_call_s: float | None = None
                 ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self._terms = (RewardComponent.single(spec),) if isinstance(spec, str) else tuple(spec)
        if not self._terms:
            raise ValueError("a reward needs at least one component")
        self._rule_terms = tuple(t for t in self._terms if not t.is_model)
        for term in self._rule_terms:
            get_reward_fn(term.fn)  # resolve in the parent too, so a bad name fails here and not in the child
        self._fn_name = ", ".join(t.fn for t in self._rule_terms)
        self._timeout_s = timeout_s  # per item and rule term
        self._max_call_s = max_call_s  # caps the rule budget of one score() call (the reward pool's call timeout)
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._closed = False
        self.last_seconds: dict[str, float] = {}  # each term's compute time in the last score() call
        if self._rule_terms:
            self._worker = self._start_worker(_START_TIMEOUT_S)  # eager: an unimportable function fails here
        self._models = {}
        if any(t.is_model for t in self._terms):
            from rlsys.rewards.model_terms import ModelTerm  # torch + transformers: only where a model scores

            self._models = {t.name: ModelTerm(t, device) for t in self._terms if t.is_model}

    @property
    def versions(self) -> dict[str, str]:
        """The version of the reward model(s) behind each model-based term."""
        return {name: m.version for name, m in self._models.items()}

    def score(self, items: list[RewardItem | tuple]) -> list[RewardOutcome]:
        """Score the items (``(completion, reference[, prompt[, group]])``); one outcome per item, in order."""
        items = [RewardItem(*item) for item in items]
        if not items:
            return []
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardScorer.score() called after close(); create a new RewardScorer")
            seconds = dict.fromkeys((t.name for t in self._terms), 0.0)
            rule_rows = self._score_rules(items, seconds) if self._rule_terms else [[] for _ in items]
            model_rows = {}
            for name, model in self._models.items():
                start = time.perf_counter()
                model_rows[name] = model.score(items)
                seconds[name] += time.perf_counter() - start
            self.last_seconds = seconds
        outcomes, versions = [], self.versions
        for i, rules in enumerate(rule_rows):
            next_rule = iter(rules)
            rows = [model_rows[t.name][i] if t.is_model else next(next_rule) for t in self._terms]
            outcomes.append(combine(self._terms, rows, versions))
        return outcomes

    def close(self) -> None:
        """Shut the child process down and release the reward models. Idempotent."""
        with self._lock:
            self._closed = True
            self._models = {}
            if self._worker is not None:
                self._worker.stop()  # nothing is in flight: we hold the lock
                self._worker = None

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start_worker(self, timeout: float) -> _Worker:
        """A ready child. Raises RuntimeError saying why not; its __cause__ is a TimeoutError after ``timeout`` s."""
        try:
            return _Worker(self._rule_terms, timeout)
        except Exception as e:
            why = str(e) if isinstance(e, _StartFailed) else f"{type(e).__name__}: {e}"
            raise RuntimeError(f"reward worker process for {self._fn_name!r} failed to start: {why}") from e

    def _deadline(self, call: _RuleCall) -> float:
        """Seconds a rule call may take: ``timeout_s`` per item, so a group call gets its group's share."""
        term, start, stop = call
        return self._timeout_s * (stop - start) if self._rule_terms[term].scope == "group" else self._timeout_s

    def _score_rules(self, items: list[RewardItem], seconds: dict[str, float]) -> list[list[TermRow]]:
        """rows[item][rule term] for every item; adds each term's compute seconds to ``seconds``."""
        batch = _Batch(self._rule_terms, items)
        if self._worker is not None and self._worker.process.exitcode is not None:
            self._discard_worker()  # it died while idle (killed from outside?): not this batch's fault
        if self._worker is None:  # the last batch's final rule call took it; this start is not charged
            try:
                self._worker = self._start_worker(_START_TIMEOUT_S)
            except RuntimeError as e:
                batch.fail_rest(str(e))
        budget = self._timeout_s * len(items) * len(self._rule_terms)
        why = f"timeout_s × {len(items)} samples × {len(self._rule_terms)} rule terms"
        if self._max_call_s is not None and self._max_call_s < budget:
            budget, why = self._max_call_s, "the cap on one reward call, below reward.call_timeout_s"
        out_of_time = (f"not scored: this reward call ran out of its time budget of {_secs(budget)} s ({why}), spent "
                       "on rule calls that hung or crashed and on restarting the worker process")
        call_deadline = time.monotonic() + budget
        lost_in_a_row = 0
        while batch.left:
            if self._worker is None:  # a hang or a crash in this batch took it: restart, on the batch's budget
                left = call_deadline - time.monotonic()
                if left <= 0:
                    batch.fail_rest(out_of_time)
                    break
                try:
                    self._worker = self._start_worker(min(_START_TIMEOUT_S, left))
                except RuntimeError as e:
                    cut_short = isinstance(e.__cause__, TimeoutError) and left < _START_TIMEOUT_S
                    batch.fail_rest(out_of_time if cut_short else str(e))
                    break
            left, first = batch.left, batch.todo()[0]
            self._run(batch, seconds, call_deadline, out_of_time)
            if self._worker is not None or not batch.left:
                continue
            # Lost on the first call it was given, with nothing else made: no call succeeded since the last loss.
            # (A call that succeeded just before a crash may not have been reported yet: then ``first`` is still
            # to do, and the count starts again.)
            lost_in_a_row = lost_in_a_row + 1 if left - batch.left == 1 and batch.made[first] else 1
            if lost_in_a_row >= MAX_LOST_IN_A_ROW:
                last = next(row.error for row in reversed([r for rs in batch.rows for r in rs if r is not None])
                            if row.failed)
                logger.warning("reward: %d rule calls in a row lost the worker process; failing the %d left "
                               "unscored", lost_in_a_row, batch.left)
                batch.fail_rest(f"not scored: the {lost_in_a_row} rule calls before it in this reward call each "
                                f"crashed or hung the reward's worker process (the last: {last})")
        return batch.rows  # type: ignore[return-value]  # every row is set now

    def _run(self, batch: _Batch, seconds: dict[str, float], call_deadline: float, out_of_time: str) -> None:
        """Send the batch's rule calls not made yet to the child, and collect its rows.

        Returns when the child has made them all; or after it was lost -- killed past a call's deadline, or dead
        -- with the call it was making failed and ``self._worker`` None. A call that started before
        ``call_deadline`` keeps its own deadline; past ``call_deadline`` no other one starts: every call left
        fails with ``out_of_time``.
        """
        worker = self._worker
        assert worker is not None
        todo = batch.todo()
        try:
            request = ForkingPickler.dumps((batch.items, todo))
        except Exception as e:  # e.g. an item field that does not pickle: nothing was sent, the child is fine
            batch.fail_rest(f"{type(e).__name__}: {e}")
            return
        term_seconds: list[float] = [0.0] * len(self._rule_terms)  # this request's, as last reported
        k = 0  # todo[:k] have their rows
        try:
            worker.progress[0], worker.progress[1] = time.monotonic(), -1.0  # the child is idle: no call yet
            worker.conn.send_bytes(request)
            while True:
                while worker.conn.poll():
                    kind, rows, term_seconds = worker.conn.recv()
                    if kind == "error":  # outside any rule call: a bug in the child's loop
                        batch.fail_rest(rows)
                        return
                    k = batch.take(todo, k, rows)
                    if kind == "done":
                        self._add_seconds(seconds, term_seconds)
                        return
                if worker.process.exitcode is not None:
                    raise EOFError  # dead, though a process it started may still hold the pipe open
                pos, started = int(worker.progress[1]), worker.progress[0]  # position first: see _child_score
                running = pos >= 0 and not batch.made[pos]
                # A call started within the budget keeps its whole deadline; past the budget, none may run.
                own = running and started < call_deadline
                deadline = started + self._deadline(batch.calls[pos]) if own else call_deadline
                now = time.monotonic()
                if now >= deadline and int(worker.progress[1]) == pos:  # re-read: that call has not just ended
                    break
                wait([worker.conn, worker.process.sentinel], min(deadline - now, _POLL_S))
        except (EOFError, OSError):  # the child died: EOF on recv, a broken pipe on send
            self._lost_to_a_crash(worker, batch, todo, k, seconds, term_seconds)
            return
        except BaseException:  # e.g. KeyboardInterrupt: the child would answer this request to the next one
            self._discard_worker()
            raise
        self._discard_worker()  # past a deadline: kill it mid-call
        self._add_seconds(seconds, term_seconds)
        if running:
            seconds[self._rule_terms[batch.calls[pos][0]].name] += now - started
        if not own:
            logger.warning("reward call out of time; failing its %d rule calls left: %s", batch.left, out_of_time)
            batch.fail_rest(out_of_time)
            return
        term, start, stop = batch.calls[pos]
        limit = _secs(self._deadline(batch.calls[pos]))
        error = f"timed out after {limit} s"
        if self._rule_terms[term].scope == "group":
            error += f" (a group call: {_secs(self._timeout_s)} s × {stop - start} completions)"
        batch.fail(pos, error)
        logger.warning("reward term %r timed out after %s s on item(s) %d-%d; restarting its worker process",
                       self._rule_terms[term].name, limit, start, stop - 1)

    def _lost_to_a_crash(self, worker: _Worker, batch: _Batch, todo: list[int], k: int, seconds: dict[str, float],
                         term_seconds: list[float]) -> None:
        """The child died mid-request: keep the rows it sent, fail the call it was making, discard it."""
        try:
            while worker.conn.poll():  # what it sent before dying is still in the pipe
                kind, rows, reported = worker.conn.recv()
                if kind != "error":
                    k, term_seconds = batch.take(todo, k, rows), reported
        except (EOFError, OSError):
            pass
        pos = int(worker.progress[1])
        self._discard_worker()  # reaps it, so its exit code is known
        error = f"reward worker process crashed ({_exit_reason(worker.process)})"
        if worker.process.exitcode == -signal.SIGKILL:
            time.sleep(_KILLED_FROM_OUTSIDE_WAIT_S)
        self._add_seconds(seconds, term_seconds)
        if pos >= 0 and not batch.made[pos]:
            term, start, stop = batch.calls[pos]
            batch.fail(pos, error)
            logger.warning("reward term %r crashed its worker process on item(s) %d-%d (%s); restarting it",
                           self._rule_terms[term].name, start, stop - 1, error)
        elif k == 0:  # died outside any rule call having made none: do not retry it forever
            batch.fail_rest(error)
        # else: it died between calls (killed from outside?) after making some; the next child makes the rest

    def _add_seconds(self, seconds: dict[str, float], term_seconds: list[float]) -> None:
        for term, s in zip(self._rule_terms, term_seconds):
            seconds[term.name] += s

    def _discard_worker(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None


class _Batch:
    """One ``score()`` call's rule calls (:func:`_rule_calls`) and their rows so far: ``rows[item][rule term]``,
    ``made[call]`` (1: it has its rows, whether scored, failed or not scored), ``left`` (how many have none)."""

    def __init__(self, terms: tuple[RewardComponent, ...], items: list[RewardItem]) -> None:
        self.items = items
        self.calls = _rule_calls(terms, items)
        self.rows: list[list[TermRow | None]] = [[None] * len(terms) for _ in items]
        self.made = bytearray(len(self.calls))
        self.left = len(self.calls)

    def todo(self) -> list[int]:
        """The positions of the calls without rows, in order: the order the child makes them."""
        return [p for p, made in enumerate(self.made) if not made]

    def take(self, todo: list[int], k: int, flat: list[TermRow]) -> int:
        """Store ``flat``, the rows of the calls ``todo[k], todo[k + 1], …`` (one per item of each, in order, as
        the child sends them); returns the position in ``todo`` after them."""
        calls, rows, made, i, n = self.calls, self.rows, self.made, 0, len(flat)
        while i < n:
            p = todo[k]
            t, start, stop = calls[p]
            if stop - start == 1:
                rows[start][t] = flat[i]
                i += 1
            else:
                for item in range(start, stop):
                    rows[item][t] = flat[i]
                    i += 1
            made[p] = 1
            k += 1
            self.left -= 1
        return k

    def fail(self, p: int, error: str) -> None:
        t, start, stop = self.calls[p]
        for item in range(start, stop):
            self.rows[item][t] = TermRow(0.0, True, error)
        self.made[p] = 1
        self.left -= 1

    def fail_rest(self, error: str) -> None:
        """Fail every call without rows."""
        for p in self.todo():
            self.fail(p, error)


class _Worker:
    """The child process, the pipe to it, and its progress slot: ``[start of the rule call it is making, by
    time.monotonic() (one clock for every process of the machine), that call's position; -1: none yet]``.

    Not daemonic, so that a reward may start processes of its own (multiprocessing gives a daemonic one none).
    Raises TimeoutError if the child is not ready within ``timeout`` seconds, _StartFailed if it cannot start.
    """

    def __init__(self, terms: tuple[RewardComponent, ...], timeout: float) -> None:
        # "spawn", not fork: forking a process that has threads (Ray actors do) can deadlock the child.
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.progress = ctx.RawArray("d", 2)
        self.process = ctx.Process(target=_child_main, args=(child_conn, self.progress, terms), name="reward-rules")
        self.process.start()
        child_conn.close()  # the child holds the only other end: its death reads as EOF here
        # Killed at interpreter exit before multiprocessing joins its non-daemonic children (exit priority ≥ 0 runs
        # first): an idle child would wait for a request forever.
        self._finalizer = multiprocessing.util.Finalize(self, _kill, args=(self.process, self.conn), exitpriority=10)
        try:
            if not wait([self.conn, self.process.sentinel], timeout):
                raise TimeoutError(f"not ready after {_secs(timeout)} s")
            try:
                kind, error, _ = self.conn.recv()
            except EOFError:
                raise _StartFailed(f"it exited ({_exit_reason(self.process)})") from None
            if kind != "ready":
                raise _StartFailed(error)
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """Ask the child to exit; kill it if it has not within a few seconds."""
        self._finalizer.cancel()
        try:
            self.conn.send(None)
            self.process.join(timeout=5)
        except (OSError, ValueError):  # already gone
            pass
        _kill(self.process, self.conn)

    def kill(self) -> None:
        """SIGKILL the child -- the one signal a reward can neither block nor handle -- and reap it."""
        self._finalizer.cancel()
        _kill(self.process, self.conn)


def _kill(process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
    try:
        process.kill()
    except (OSError, ValueError, AttributeError):  # already exited and reaped
        pass
    try:
        process.join(timeout=5)  # reap it, so repeated timeouts do not pile up zombies
    except (OSError, ValueError, AssertionError):
        pass
    conn.close()


def _exit_reason(process: multiprocessing.process.BaseProcess) -> str:
    try:
        process.join(timeout=1)
        code = process.exitcode
    except (OSError, ValueError, AssertionError):
        code = None
    if code is not None and code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code}" if code is not None else "exit status unknown"


def _secs(seconds: float) -> str:
    return str(round(seconds, 3))


def _rule_calls(terms: tuple[RewardComponent, ...], items: list[RewardItem]) -> list[_RuleCall]:
    """Every rule call that scores ``items``, term by term; parent and child number them alike from this."""
    calls: list[_RuleCall] = []
    for t, term in enumerate(terms):
        if term.scope == "group":
            calls.extend((t, part.start, part.stop) for part in group_slices(items))
        else:
            calls.extend((t, i, i + 1) for i in range(len(items)))
    return calls


# ---- run in the child process ----


def _child_main(conn: Connection, progress: Any, terms: tuple[RewardComponent, ...]) -> None:
    """Resolve the rule functions and say so, then serve requests ``(items, rule-call positions)`` until the pipe
    closes or ``None`` comes.

    Messages back are ``(kind, payload, seconds)``: ``ready``; ``rows`` and finally ``done``, each with the rows
    of the calls made since the last message (flat, in ``todo`` order: one per item of each call) and every term's
    compute seconds so far in the request; ``error`` with the reason.
    """
    outputs = [_BoundedOutput(sys.stdout, "stdout"), _BoundedOutput(sys.stderr, "stderr")]
    sys.stdout, sys.stderr = outputs  # before the import: a module that prints there is bounded too
    try:
        fns = [get_reward_fn(term.fn) for term in terms]
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}", None))
        return
    conn.send(("ready", None, None))
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the parent closed the pipe, or died
            return
        if request is None:
            return
        items, todo = request
        try:
            _child_score(conn, progress, terms, fns, items, todo)
        except OSError:  # a broken pipe: the parent is gone (a reward's own OSError is caught per call)
            return
        except Exception as e:  # a bug here, not in a reward
            conn.send(("error", f"reward worker process failed: {type(e).__name__}: {e}", None))
        finally:
            for out in outputs:
                out.end_request()


class _BoundedOutput(io.TextIOBase):
    """What reward functions print (``print``, ``sys.stdout.write``; not writes to the file descriptor itself),
    passed on to ``stream`` up to ``REWARD_OUTPUT_CHARS`` characters per score() request; the rest is counted, and
    one line at the end of the request says how much was left out. A reward that prints per sample would otherwise
    send megabytes a step through the reward worker's log to the driver's console."""

    def __init__(self, stream: Any, name: str) -> None:
        self.stream, self.name, self.left, self.cut = stream, name, REWARD_OUTPUT_CHARS, 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        shown = text[:max(self.left, 0)]
        if shown:
            self.stream.write(shown)
        self.left -= len(shown)
        self.cut += len(text) - len(shown)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def end_request(self) -> None:
        if self.cut:
            self.stream.write(f"\n[rlsys: {self.cut} more characters the reward functions wrote to {self.name} "
                              f"during this batch were left out; at most {REWARD_OUTPUT_CHARS} are shown a batch]\n")
        self.stream.flush()
        self.left, self.cut = REWARD_OUTPUT_CHARS, 0


def _child_score(conn: Connection, progress: Any, terms: tuple[RewardComponent, ...], fns: list[RewardFn],
                 items: list[RewardItem], todo: list[int]) -> None:
    """Make the rule calls at positions ``todo``, in order, sending their rows (flat: one per item of each call)
    every ``_FLUSH_S`` and at the end."""
    calls = _rule_calls(terms, items)
    seconds = [0.0] * len(terms)
    done: list[TermRow] = []
    now = sent = time.monotonic()
    for p in todo:
        t, start, stop = calls[p]
        term, fn, began = terms[t], fns[t], now  # what is done between two calls is charged to the next
        progress[0] = began  # the start before the position, which the parent reads first: a torn read pairs an
        progress[1] = p  # old position with a new start (a later deadline), never a new position with an old one
        try:
            if term.scope == "sample":
                done.append(_score_sample(fn, items[start], term))
            elif term.scope == "process":
                done.append(_score_process(fn, items[start], term))
            elif term.scope == "trajectory":
                done.append(_score_trajectory(fn, items[start], term))
            else:
                done.extend(_score_group(fn, items[start:stop], term.params))
        except BaseException as e:  # _call catches what rewards raise; this is e.g. KeyboardInterrupt
            done.extend([TermRow(0.0, True, f"{type(e).__name__}: {e}")] * (stop - start))
        now = time.monotonic()
        seconds[t] += now - began
        if now - sent >= _FLUSH_S:
            conn.send(("rows", done, seconds))
            done, now = [], time.monotonic()
            sent = now
    conn.send(("done", done, seconds))


def _call(fn: RewardFn, *args: Any, **params: Any) -> tuple[Any, str | None]:
    try:
        return fn(*args, **params), None
    except (Exception, SystemExit) as e:  # SystemExit too: sys.exit() in a reward must fail one item, not the batch
        return None, f"{type(e).__name__}: {e}"


def _as_row(value: Any) -> TermRow:
    """A reward function's return value as a row: a finite real number (or Scored), else a failure saying why."""
    note = ""
    if isinstance(value, Scored):
        value, note = value.value, str(value.reason)
    bad = f"reward function returned {_short_repr(value)} ({type(value).__name__}); expected a finite real number"
    if not isinstance(value, numbers.Real):  # bool is a Real, scored as 0.0/1.0
        return TermRow(0.0, True, bad, note)
    try:
        reward = float(value)
    except (OverflowError, ValueError):
        return TermRow(0.0, True, bad, note)
    if not math.isfinite(reward):
        return TermRow(0.0, True, bad, note)
    if abs(reward) > FLOAT32_MAX:  # rewards are stored and trained as float32: it would become inf there
        return TermRow(0.0, True, f"{bad} within float32's range (|x| ≤ {FLOAT32_MAX:.3g})", note)
    return TermRow(reward, False, None, note)


def _score_sample(fn: RewardFn, item: RewardItem, term: RewardComponent) -> TermRow:
    value, error = _call(fn, item.completion, item.reference, **term.params)
    return TermRow(0.0, True, error) if error else _as_row(value)


def _score_trajectory(fn: RewardFn, item: RewardItem, term: RewardComponent) -> TermRow:
    value, error = _call(fn, trajectory_of(item), item.reference, **term.params)
    return TermRow(0.0, True, error) if error else _as_row(value)


def _call_per_unit(fn: RewardFn, units: list, reference: str, params: dict, what: str) -> tuple[Any, str | None]:
    """``fn(units, reference, **params)`` for a function that returns one value per unit (a group's completions,
    a completion's steps): the values, or the error, also when it returned something else."""
    values, error = _call(fn, units, reference, **params)
    if error is None and not (isinstance(values, (list, tuple)) and len(values) == len(units)):
        error = (f"{what} reward function returned {_short_repr(values)}; expected a list of {len(units)} numbers, "
                 f"one per {'completion of the group' if what == 'group' else 'step'}")
    return values, error


def _score_group(fn: RewardFn, group: list[RewardItem], params: dict) -> list[TermRow]:
    values, error = _call_per_unit(fn, [item.completion for item in group], group[0].reference, params, "group")
    if error:
        return [TermRow(0.0, True, error) for _ in group]
    return [_as_row(v) for v in values]


def _score_process(fn: RewardFn, item: RewardItem, term: RewardComponent) -> TermRow:
    steps = split_steps(item.completion, term.step_split)
    if not steps:  # nothing to ask fn about
        value, note = summarize_steps([])
        return TermRow(value, False, None, note)
    values, error = _call_per_unit(fn, steps, item.reference, term.params, "process")
    if error:
        return TermRow(0.0, True, error)
    rows = [_as_row(v) for v in values]
    bad = next((r for r in rows if r.failed), None)
    if bad is not None:
        return bad
    value, note = summarize_steps([r.value for r in rows], term.step_aggregate, term.step_tau)
    return TermRow(value, False, None, note)


def _short_repr(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
