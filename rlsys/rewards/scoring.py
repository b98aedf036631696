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
from dataclasses import dataclass
from functools import cache
from types import TracebackType

from rlsys.rewards.registry import RewardFn, get_reward_fn

logger = logging.getLogger(__name__)

# Spawning the child and importing the reward's module is not counted against the per-item timeout; this bounds
# it separately, generously, because imports on a loaded node can be slow.
_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RewardOutcome:
    """The score for one item. ``failed`` means the reward function did not produce a usable number (it raised,
    timed out, crashed, or returned a non-number); ``reward`` is then 0.0 and ``error`` says what happened."""

    reward: float
    failed: bool
    error: str | None = None


class _WorkerLost(Exception):
    """The child process had to be discarded (timeout, crash, failed start); the message is the reason."""


class RewardScorer:
    """Scores ``(completion, reference)`` pairs with the reward function ``fn_name`` in one child process.

    A batch is scored in a single call to the child, with a budget of ``timeout_s`` per item. If that call times
    out or the child dies, the child is killed and the batch is rescored one item at a time, so one bad item fails
    alone instead of taking the whole batch with it. ``score`` never raises because of the reward function.
    Unknown names raise ValueError here at construction, not at the first score. Thread-safe: calls are serialized.
    """

    def __init__(self, fn_name: str, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        get_reward_fn(fn_name)  # resolve in the parent too, so a bad name fails here and not in the child
        self._fn_name = fn_name
        self._timeout_s = timeout_s
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
            pool.submit(_child_resolve, self._fn_name).result(timeout=_START_TIMEOUT_S)
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
        future = pool.submit(_child_score, self._fn_name, items)
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
        return [RewardOutcome(reward=r, failed=f, error=err) for r, f, err in rows]

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


def _child_resolve(fn_name: str) -> None:
    _child_fn(fn_name)


def _child_score(fn_name: str, items: list[tuple[str, str]]) -> list[tuple[float, bool, str | None]]:
    fn = _child_fn(fn_name)
    return [_score_one(fn, completion, reference) for completion, reference in items]


def _score_one(fn: RewardFn, completion: str, reference: str) -> tuple[float, bool, str | None]:
    try:
        value = fn(completion, reference)
    except (Exception, SystemExit) as e:  # SystemExit too: sys.exit() in a reward must fail one item, not the batch
        return 0.0, True, f"{type(e).__name__}: {e}"
    bad = f"reward function returned {_short_repr(value)} ({type(value).__name__}); expected a finite real number"
    if not isinstance(value, numbers.Real):  # bool is a Real, scored as 0.0/1.0
        return 0.0, True, bad
    try:
        reward = float(value)
    except (OverflowError, ValueError):
        return 0.0, True, bad
    if not math.isfinite(reward):
        return 0.0, True, bad
    return reward, False, None


def _short_repr(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
