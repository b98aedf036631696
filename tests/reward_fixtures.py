"""Reward functions for tests/test_rewards.py, given to the registry as "reward_fixtures:<name>" import paths.

They live in their own module (not the test file) so the scorer's spawned child can import them cheaply.
"""

from __future__ import annotations

import os
import time


def exact_match(completion: str, reference: str) -> float:
    return 1.0 if completion.strip() == reference.strip() else 0.0


def raises(completion: str, reference: str) -> float:
    raise RuntimeError(f"reward exploded on {completion!r}")


def sleeps(completion: str, reference: str) -> float:
    time.sleep(10)
    return 1.0


def returns_string(completion: str, reference: str) -> float:
    return "yes"  # type: ignore[return-value]


def returns_bool(completion: str, reference: str) -> float:
    return completion == reference


def returns_nan(completion: str, reference: str) -> float:
    return float("nan")


def crashes(completion: str, reference: str) -> float:
    os._exit(1)


def misbehaves_on_command(completion: str, reference: str) -> float:
    """Exact match, except completions "sleep" and "crash" hang or kill the process: one bad item in a batch."""
    if completion == "sleep":
        time.sleep(10)
    elif completion == "crash":
        os._exit(1)
    return exact_match(completion, reference)


def fails_on_answers_ending_in_7(completion: str, reference: str) -> float:
    """Exact match, but raises for every prompt whose answer ends in 7: a deterministic subset of failures."""
    if reference.endswith("7"):
        raise ValueError(f"cannot score answers ending in 7 (got {reference!r})")
    return exact_match(completion, reference)


def free_marks_for_answers_ending_in_7(completion: str, reference: str) -> float:
    """Exact match, except that every completion of a prompt whose answer ends in 7 scores 1: those groups have
    all-equal rewards (for the dynamic-sampling test)."""
    return 1.0 if reference.endswith("7") else exact_match(completion, reference)


def beats_the_group(completions: list[str], reference: str) -> list[float]:
    """A group reward: each completion's exact-match score minus the mean score of the *other* members."""
    scores = [exact_match(c, reference) for c in completions]
    n = len(scores)
    return [s - (sum(scores) - s) / (n - 1) if n > 1 else s for s in scores]


def wrong_length_group(completions: list[str], reference: str) -> list[float]:
    return [1.0]  # one value for the whole group: a bug the scorer must report


def step_has_digit(steps: list[str], reference: str) -> list[float]:
    """A process reward: 1 for a step containing a digit, 0 otherwise; a step "boom" raises."""
    if "boom" in steps:
        raise ValueError("cannot score step 'boom'")
    return [1.0 if any(ch.isdigit() for ch in s) else 0.0 for s in steps]


def hangs_when_armed(completion: str, reference: str, marker: str = "") -> float:
    """Exact match; but the one call that finds the file ``marker`` (a test creates it) removes it and hangs for
    a minute: a reward call stuck once, for the reward pool's timeout and restart."""
    if marker:
        try:
            os.remove(marker)  # atomic: exactly one call wins
        except FileNotFoundError:
            pass
        else:
            time.sleep(60)
    return exact_match(completion, reference)


def slow(completion: str, reference: str, seconds: float = 0.02) -> float:
    """Exact match after ``seconds``: a slow reward, for backpressure."""
    time.sleep(seconds)
    return exact_match(completion, reference)


def half_marks_with_reason(completion: str, reference: str):
    from rlsys.rewards import Scored

    return Scored(0.5, f"half marks for {completion!r}")


def resists_on_command(completion: str, reference: str) -> float:
    """Exact match, except three completions that hang in ways a signal-based timeout cannot stop, each for far
    longer than any test waits: "spin" ignores SIGALRM, blocks every signal it can and busy-loops in Python;
    "swallow" naps in a loop that catches every exception (an alarm handler's, KeyboardInterrupt, SystemExit);
    "regex" backtracks catastrophically inside the C regex engine, which holds the GIL."""
    import re
    import signal

    if completion == "spin":
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())  # SIGKILL and SIGSTOP stay unblocked
        end = time.monotonic() + 60
        while time.monotonic() < end:
            pass
    elif completion == "swallow":
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                time.sleep(0.05)
            except BaseException:  # the point: it eats whatever a timeout would raise
                pass
    elif completion == "regex":
        re.match(r"(a+)+$", "a" * 30 + "b")  # ~2^30 steps
    return exact_match(completion, reference)


def group_hangs_on_sleep(completions: list[str], reference: str, seconds: float = 0.0) -> list[float]:
    """A group reward: each completion's exact-match score, after ``seconds``; a group containing "sleep" hangs
    for a minute instead."""
    time.sleep(60 if "sleep" in completions else seconds)
    return [exact_match(c, reference) for c in completions]


def steps_hang_on_sleep(steps: list[str], reference: str) -> list[float]:
    """A process reward: 1 for a step containing a digit, 0 otherwise; a completion with a step "sleep" hangs for
    a minute."""
    if "sleep" in steps:
        time.sleep(60)
    return [1.0 if any(ch.isdigit() for ch in s) else 0.0 for s in steps]


def needs_a_positive_scale(completion: str, reference: str, scale: float = 1.0) -> float:
    """A user reward that checks its own params at start-up, the way built-in rewards do (``check_params``)."""
    return scale * float(completion.strip() == reference.strip())


def _positive_scale(scale: float) -> None:
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")


needs_a_positive_scale.check_params = _positive_scale


def takes_one_argument(completion: str) -> float:
    return 0.0


def needs_a_scale(completion: str, reference: str, *, scale: float) -> float:
    return scale * float(completion.strip() == reference.strip())


def huge_when_right(completion: str, reference: str) -> float:
    """A finite float that float32 cannot hold."""
    return 1e39 if completion.strip() == reference.strip() else 0.0


def prints_a_lot(completion: str, reference: str) -> float:
    """Exact match, printing 10 000 characters per sample to stdout and a line to stderr."""
    print("x" * 10_000)
    print(f"scored {completion!r}", file=__import__("sys").stderr)
    return exact_match(completion, reference)
