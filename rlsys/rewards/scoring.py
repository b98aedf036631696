"""Run a reward function over a batch in an isolated child process, with per-item timeouts.

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
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import cache
from types import TracebackType
from typing import Any

from rlsys.rewards.registry import RewardFn, Scored, get_reward_fn

logger = logging.getLogger(__name__)

# Spawning the child and importing the reward's module is not counted against the per-item timeout; this bounds
# it separately, generously, because imports on a loaded node can be slow.
_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RewardOutcome:
    """The score for one item. ``failed`` means a reward function with non-zero weight did not produce a usable
    number (it raised, timed out, crashed, or returned a non-number); ``reward`` is then 0.0 and ``error`` says
    which and what happened. ``components``: each term's own value (NaN where that term failed); ``notes``: the
    reason a term gave with its value (:class:`~rlsys.rewards.registry.Scored`), for terms that gave one."""

    reward: float
    failed: bool
    error: str | None = None
    components: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class RewardComponent:
    """One named term of a composite reward: ``weight × fn(completion, reference, **params)``.

    Also the type of ``reward.components`` entries in the config (:class:`rlsys.config.RewardConfig`)."""

    name: str = ""
    fn: str = ""  # a registered reward name or module:function
    weight: float = 1.0  # 0 computes and logs the term without adding it to the reward (a monitor)
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments for fn

    @staticmethod
    def single(fn: str) -> RewardComponent:
        """The whole reward is ``fn``: one term, named after the function."""
        return RewardComponent(name=fn.rpartition(":")[2], fn=fn)


# One term's result for one item: (value, failed, error, note).
TermRow = tuple[float, bool, "str | None", str]


def combine(terms: tuple[RewardComponent, ...], rows: list[TermRow]) -> RewardOutcome:
    """The weighted sum of one item's term values; failed if any term with non-zero weight failed."""
    failed = [(t, err) for t, (_, f, err, _) in zip(terms, rows) if f and t.weight != 0]
    components = {t.name: (math.nan if f else v) for t, (v, f, _, _) in zip(terms, rows)}
    notes = {t.name: note for t, (_, _, _, note) in zip(terms, rows) if note}
    if failed:
        error = failed[0][1] if len(terms) == 1 else "; ".join(f"{t.name}: {e}" for t, e in failed)
        return RewardOutcome(0.0, True, error, components, notes)
    total = sum(t.weight * v for t, (v, f, _, _) in zip(terms, rows) if t.weight != 0)
    return RewardOutcome(float(total), False, None, components, notes)


class _WorkerLost(Exception):
    """The child process had to be discarded (timeout, crash, failed start); the message is the reason."""


class RewardScorer:
    """Scores ``(completion, reference)`` pairs with the reward ``spec`` in one child process: a reward name or
    import path, or a list of weighted :class:`RewardComponent` terms, summed.

    A batch is scored in a single call to the child, with a budget of ``timeout_s`` per item. If that call times
    out or the child dies, the child is killed and the batch is rescored one item at a time, so one bad item fails
    alone instead of taking the whole batch with it. ``score`` never raises because of the reward function.
    Unknown names raise ValueError here at construction, not at the first score. Thread-safe: calls are serialized.
    """

    def __init__(self, spec: str | list, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self._terms = (RewardComponent.single(spec),) if isinstance(spec, str) else tuple(spec)
        if not self._terms:
            raise ValueError("a reward needs at least one component")
        for term in self._terms:
            get_reward_fn(term.fn)  # resolve in the parent too, so a bad name fails here and not in the child
        self._fn_name = ", ".join(t.fn for t in self._terms)
        self._timeout_s = timeout_s * len(self._terms)  # per item: every term gets the configured budget
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        self._start_pool()  # eager: a function the child cannot import fails construction, not every score()

    def score(self, items: list[tuple[str, str]]) -> list[RewardOutcome]:
        """Score ``(completion, reference)`` pairs; returns one outcome per item, in order."""
        items = list(items)
        if not items:
            return []
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardScorer.score() called after close(); create a new RewardScorer")
            try:
                return self._run(items, self._timeout_s * len(items))
            except _WorkerLost as e:
                logger.warning("reward batch of %d lost (%s); rescoring items one at a time", len(items), e)
            outcomes: list[RewardOutcome] = []
            for item in items:
                try:
                    outcomes.extend(self._run([item], self._timeout_s))
                except _WorkerLost as e:
                    outcomes.append(RewardOutcome(reward=0.0, failed=True, error=str(e)))
            return outcomes

    def close(self) -> None:
        """Shut the child process down. Idempotent."""
        with self._lock:
            self._closed = True
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
            pool.submit(_child_resolve, self._terms).result(timeout=_START_TIMEOUT_S)
        except Exception as e:
            _kill_pool(pool)
            raise RuntimeError(
                f"reward worker process for {self._fn_name!r} failed to start: {type(e).__name__}: {e}"
            ) from e
        self._pool = pool

    def _run(self, items: list[tuple[str, str]], timeout: float) -> list[RewardOutcome]:
        """Score ``items`` in one child call. Raises _WorkerLost (after discarding the pool) on timeout or crash."""
        if self._pool is None:
            try:
                self._start_pool()
            except RuntimeError as e:
                raise _WorkerLost(str(e)) from e
        pool = self._pool
        assert pool is not None
        processes = list((pool._processes or {}).values())  # kept to read the exit code if the child dies
        future = pool.submit(_child_score, self._terms, items)
        try:
            rows = future.result(timeout=timeout)
        except TimeoutError:
            self._discard_pool()
            raise _WorkerLost(f"timed out after {self._timeout_s} s") from None
        except BrokenProcessPool as e:
            self._discard_pool()
            raise _WorkerLost(f"reward worker process crashed ({_exit_reason(processes)}): {e}") from None
        except Exception as e:  # unexpected failure of the call itself (e.g. unpicklable item); fail these items
            return [RewardOutcome(reward=0.0, failed=True, error=f"{type(e).__name__}: {e}") for _ in items]
        return [combine(self._terms, item_rows) for item_rows in rows]

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


def _child_score(terms: tuple[RewardComponent, ...], items: list[tuple[str, str]]) -> list[list[TermRow]]:
    fns = [(_child_fn(t.fn), t.params) for t in terms]
    return [[_score_one(fn, completion, reference, params) for fn, params in fns] for completion, reference in items]


def _score_one(fn: RewardFn, completion: str, reference: str, params: dict) -> TermRow:
    try:
        value = fn(completion, reference, **params)
    except (Exception, SystemExit) as e:  # SystemExit too: sys.exit() in a reward must fail one item, not the batch
        return 0.0, True, f"{type(e).__name__}: {e}", ""
    note = ""
    if isinstance(value, Scored):
        value, note = value.value, str(value.reason)
    bad = f"reward function returned {_short_repr(value)} ({type(value).__name__}); expected a finite real number"
    if not isinstance(value, numbers.Real):  # bool is a Real, scored as 0.0/1.0
        return 0.0, True, bad, note
    try:
        reward = float(value)
    except (OverflowError, ValueError):
        return 0.0, True, bad, note
    if not math.isfinite(reward):
        return 0.0, True, bad, note
    return reward, False, None, note


def _short_repr(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
