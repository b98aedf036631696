"""Score a batch with a composite reward: rule terms in an isolated child process (per-item timeouts), model terms
in the caller's process.

Why a child process: reward functions are arbitrary user code that can hang, crash the interpreter, or (like
math-verify) rely on signal-based timeouts that only work in a process's main thread -- and the scorer is used
inside Ray actors, where it is called from non-main threads. A child process runs the function in its own main
thread, and it can be killed when a reward hangs, which a thread cannot.

The child is started with "spawn", which re-imports the parent's main module: a plain script that builds a
RewardScorer must do so under ``if __name__ == "__main__":`` (Ray workers and pytest already do).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import numbers
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import cache
from types import TracebackType
from typing import Any

from rlsys.rewards.components import RewardComponent, RewardItem, RewardOutcome, TermRow, combine, group_slices
from rlsys.rewards.process import split_steps, summarize_steps
from rlsys.rewards.registry import RewardFn, Scored, get_reward_fn

logger = logging.getLogger(__name__)

# Spawning the child and importing the reward's module is not counted against the per-item timeout; this bounds
# it separately, generously, because imports on a loaded node can be slow.
_START_TIMEOUT_S = 120.0


class _WorkerLost(Exception):
    """The child process had to be discarded (timeout, crash, failed start); the message is the reason."""


class RewardScorer:
    """Scores items with the reward ``spec``: a reward name or import path, or a list of weighted
    :class:`RewardComponent` terms, summed.

    Rule-based terms run in one child process: a batch is scored in a single call to it, with a budget of
    ``timeout_s`` per item and term. If that call times out or the child dies, the child is killed and the batch
    is rescored one prompt group at a time, so one bad group fails alone instead of taking the whole batch with
    it. Model-based terms run here, in the caller's process, on ``device`` (:mod:`rlsys.rewards.model_terms`).
    ``score`` never raises because of a reward function or a reward model. Unknown names raise ValueError here at
    construction, not at the first score. Thread-safe: calls are serialized.
    """

    def __init__(self, spec: str | list, timeout_s: float, device: str = "cpu") -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self._terms = (RewardComponent.single(spec),) if isinstance(spec, str) else tuple(spec)
        if not self._terms:
            raise ValueError("a reward needs at least one component")
        self._rule_terms = tuple(t for t in self._terms if not t.is_model)
        for term in self._rule_terms:
            get_reward_fn(term.fn)  # resolve in the parent too, so a bad name fails here and not in the child
        self._fn_name = ", ".join(t.fn for t in self._rule_terms)
        self._timeout_s = timeout_s * len(self._rule_terms)  # per item: every term gets the configured budget
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        self.last_seconds: dict[str, float] = {}  # each term's compute time in the last score() call
        if self._rule_terms:
            self._start_pool()  # eager: a function the child cannot import fails construction, not every score()
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

    def _score_rules(self, items: list[RewardItem], seconds: dict[str, float]) -> list[list[TermRow]]:
        try:
            return self._run(items, self._timeout_s * len(items), seconds)
        except _WorkerLost as e:
            logger.warning("reward batch of %d lost (%s); rescoring one group at a time", len(items), e)
        rows: list[list[TermRow]] = []
        for part in group_slices(items):
            group = items[part]
            try:
                rows.extend(self._run(group, self._timeout_s * len(group), seconds))
            except _WorkerLost as e:
                rows.extend([[TermRow(0.0, True, str(e)) for _ in self._rule_terms] for _ in group])
        return rows

    def close(self) -> None:
        """Shut the child process down and release the reward models. Idempotent."""
        with self._lock:
            self._closed = True
            self._models = {}
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)  # nothing is in flight: we hold the lock
                self._pool = None

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start_pool(self) -> None:
        # "spawn", not fork: forking a process that has threads (Ray actors do) can deadlock the child.
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        try:
            pool.submit(_child_resolve, self._rule_terms).result(timeout=_START_TIMEOUT_S)
        except Exception as e:
            _kill_pool(pool)
            raise RuntimeError(
                f"reward worker process for {self._fn_name!r} failed to start: {type(e).__name__}: {e}"
            ) from e
        self._pool = pool

    def _run(self, items: list[RewardItem], timeout: float, seconds: dict[str, float]) -> list[list[TermRow]]:
        """Score ``items`` in one child call. Raises _WorkerLost (after discarding the pool) on timeout or crash."""
        if self._pool is None:
            try:
                self._start_pool()
            except RuntimeError as e:
                raise _WorkerLost(str(e)) from e
        pool = self._pool
        assert pool is not None
        processes = list((pool._processes or {}).values())  # kept to read the exit code if the child dies
        future = pool.submit(_child_score, self._rule_terms, items)
        try:
            rows, term_seconds = future.result(timeout=timeout)
        except TimeoutError:
            self._discard_pool()
            raise _WorkerLost(f"timed out after {self._timeout_s} s") from None
        except BrokenProcessPool as e:
            self._discard_pool()
            raise _WorkerLost(f"reward worker process crashed ({_exit_reason(processes)}): {e}") from None
        except Exception as e:  # unexpected failure of the call itself (e.g. unpicklable item); fail these items
            return [[TermRow(0.0, True, f"{type(e).__name__}: {e}") for _ in self._rule_terms] for _ in items]
        for term, s in zip(self._rule_terms, term_seconds):
            seconds[term.name] += s
        return rows

    def _discard_pool(self) -> None:
        if self._pool is not None:
            _kill_pool(self._pool)
            self._pool = None


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's worker processes and shut the pool down without waiting.

    ProcessPoolExecutor has no public kill: shutdown() cancels only pending work and waits for (or abandons) the
    running call, so a reward stuck in a loop would keep its process busy forever. We SIGKILL the workers through
    the private ``_processes`` map, then shut down; the executor's manager thread sees the dead worker and exits.
    """
    processes = list((pool._processes or {}).values())
    for p in processes:
        try:
            p.kill()
        except (OSError, ValueError):  # already exited, or already closed by the executor
            pass
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        try:
            p.join(timeout=5)  # reap it, so repeated timeouts do not pile up zombies
        except (OSError, ValueError, AssertionError):
            pass


def _exit_reason(processes: list[multiprocessing.process.BaseProcess]) -> str:
    reasons = []
    for p in processes:
        try:
            p.join(timeout=1)
            code = p.exitcode
        except (OSError, ValueError, AssertionError):
            continue
        if code is not None and code < 0:
            reasons.append(f"killed by signal {signal.Signals(-code).name}")
        elif code is not None:
            reasons.append(f"exit code {code}")
    return ", ".join(reasons) or "exit status unknown"


# ---- run in the child process ----


@cache
def _child_fn(fn_name: str) -> RewardFn:
    return get_reward_fn(fn_name)


def _child_resolve(terms: tuple[RewardComponent, ...]) -> None:
    for term in terms:
        _child_fn(term.fn)


def _child_score(terms: tuple[RewardComponent, ...], items: list[RewardItem]
                 ) -> tuple[list[list[TermRow]], list[float]]:
    """Every rule term on every item: rows[item][term], and each term's compute seconds."""
    rows: list[list[TermRow]] = [[] for _ in items]
    seconds = []
    for term in terms:
        fn, start = _child_fn(term.fn), time.perf_counter()
        if term.scope == "group":
            for part in group_slices(items):
                for row, result in zip(rows[part], _score_group(fn, items[part], term.params)):
                    row.append(result)
        else:
            score = _score_process if term.scope == "process" else _score_sample
            for row, item in zip(rows, items):
                row.append(score(fn, item, term))
        seconds.append(time.perf_counter() - start)
    return rows, seconds


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
    return TermRow(reward, False, None, note)


def _score_sample(fn: RewardFn, item: RewardItem, term: RewardComponent) -> TermRow:
    value, error = _call(fn, item.completion, item.reference, **term.params)
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
