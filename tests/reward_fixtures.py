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
