"""Process rewards: split a completion into steps, and turn per-step scores into one reward.

Aggregations of step scores r_1..r_K:

- ``sum``:  Σ_k r_k — the usual return, which rewards *more* steps (a PRM's favourite hack: pad with easy steps).
- ``min``:  min_k r_k — a chain is as good as its worst step.
- ``last``: r_K — the score of the finished solution.
- ``min_form``: Σ_k w_k r_k with w = softmax(−r / τ) — the min-form credit of PURE (Cheng et al., 2025, "Stop
  Summation: Min-Form Credit Assignment Is All Process Reward Model Needs for Reasoning"): the step rewards are
  reweighted so that their sum, the return, is a soft minimum; it → min as τ → 0 and → the mean as τ → ∞.

The learner here trains on one outcome reward per sample, so an aggregation is the credit the whole completion
gets; a dense per-step reward is not routed to the tokens of its step.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np

STEP_AGGREGATIONS = ("sum", "min", "last", "min_form")


@cache
def _pattern(step_split: str) -> re.Pattern:
    return re.compile(step_split)


def split_steps(completion: str, step_split: str = r"\n+") -> list[str]:
    """The non-blank pieces of ``completion`` between matches of the regex ``step_split``, stripped; an empty or
    blank completion has no steps."""
    return [s.strip() for s in _pattern(step_split).split(completion) if s and s.strip()]


def aggregate_steps(scores: np.ndarray | list[float], how: str = "min", tau: float = 0.1) -> float:
    """One reward from per-step scores (see the module docstring); 0.0 for a completion with no steps."""
    r = np.asarray(scores, dtype=np.float64)
    if how not in STEP_AGGREGATIONS:
        raise ValueError(f"unknown step aggregation {how!r}; use one of {', '.join(STEP_AGGREGATIONS)}")
    if r.size == 0:
        return 0.0
    if how == "sum":
        return float(r.sum())
    if how == "min":
        return float(r.min())
    if how == "last":
        return float(r[-1])
    if not tau > 0:
        raise ValueError(f"min_form needs a temperature tau > 0, got {tau}")
    z = -(r - r.min()) / tau  # shifted: the largest logit is 0, so exp never overflows
    w = np.exp(z) / np.exp(z).sum()
    return float((w * r).sum())


def summarize_steps(scores: np.ndarray | list[float], how: str = "min", tau: float = 0.1, limit: int = 16
                    ) -> tuple[float, str]:
    """A process reward's value (:func:`aggregate_steps`) and its note for the sample log: the per-step scores,
    ``steps=[0.91, 0.12, ...]``, or ``no steps`` for a completion without any (value 0.0)."""
    if len(scores) == 0:
        return 0.0, "no steps"
    shown = [f"{float(x):.3g}" for x in list(scores)[:limit]]
    more = ", ..." if len(scores) > limit else ""
    return aggregate_steps(scores, how, tau), f"steps=[{', '.join(shown)}{more}]"
