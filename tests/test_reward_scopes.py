"""Group and process rewards: the pure step maths by hand, and the scorer running real group/process functions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rlsys.rewards import RewardComponent, RewardItem, RewardScorer
from rlsys.rewards.components import group_slices
from rlsys.rewards.process import aggregate_steps, split_steps

FIX = "reward_fixtures"


@pytest.fixture(autouse=True)
def _fixtures_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


# ---- pure functions ----


@pytest.mark.parametrize(("text", "pattern", "steps"), [
    ("a\nb\n\nc", r"\n+", ["a", "b", "c"]),
    ("  \n \n", r"\n+", []),
    ("", r"\n+", []),
    ("Step 1: x. Step 2: y.", r"Step \d+:", ["x.", "y."]),
    ("one step", r"\n+", ["one step"]),
])
def test_split_steps(text, pattern, steps):
    assert split_steps(text, pattern) == steps


def test_aggregate_steps_by_hand():
    r = [0.9, 0.2, 0.7]
    assert aggregate_steps(r, "sum") == pytest.approx(1.8)
    assert aggregate_steps(r, "min") == pytest.approx(0.2)
    assert aggregate_steps(r, "last") == pytest.approx(0.7)
    # min-form: weights softmax(−r/τ); with τ = 0.5: exp(−1.8), exp(−0.4), exp(−1.4), normalised
    w = np.exp([-1.8, -0.4, -1.4])
    w /= w.sum()
    assert aggregate_steps(r, "min_form", tau=0.5) == pytest.approx(float((w * np.array(r)).sum()))
    assert aggregate_steps(r, "min_form", tau=1e-4) == pytest.approx(0.2, abs=1e-6)  # → min as τ → 0
    assert aggregate_steps(r, "min_form", tau=1e6) == pytest.approx(0.6, abs=1e-4)  # → mean as τ → ∞
    assert aggregate_steps([], "min") == 0.0
    assert aggregate_steps([-1e6, 1e6], "min_form", tau=1e-3) == pytest.approx(-1e6)  # no overflow
    with pytest.raises(ValueError, match="unknown step aggregation"):
        aggregate_steps(r, "max")


def test_group_slices():
    items = [RewardItem("a", "r", "", g) for g in (0, 0, 1, 1, 1, -1, -1, 2)]
    assert [(s.start, s.stop) for s in group_slices(items)] == [(0, 2), (2, 5), (5, 6), (6, 7), (7, 8)]


# ---- the scorer ----


def test_group_reward_sees_the_whole_group():
    comp = RewardComponent(name="beats", fn=f"{FIX}:beats_the_group", scope="group")
    items = [RewardItem(c, "5", "2+3=", 0) for c in ("5", "4", "5", "6")] + [RewardItem("7", "7", "3+4=", 1)]
    with RewardScorer([comp], timeout_s=5.0) as scorer:
        out = scorer.score(items)
    # group 0: scores [1, 0, 1, 0]; each minus the mean of the other three
    assert [o.reward for o in out[:4]] == pytest.approx([1 - 1 / 3, 0 - 2 / 3, 1 - 1 / 3, 0 - 2 / 3])
    assert out[4].reward == 1.0  # a group of one


def test_group_reward_with_the_wrong_number_of_values_fails_the_group_only():
    comps = [RewardComponent(name="bad", fn=f"{FIX}:wrong_length_group", scope="group", weight=0.0),
             RewardComponent(name="ok", fn=f"{FIX}:exact_match")]
    with RewardScorer(comps, timeout_s=5.0) as scorer:
        out = scorer.score([RewardItem("5", "5", "", 0), RewardItem("4", "5", "", 0)])
    assert [o.reward for o in out] == [1.0, 0.0] and not any(o.failed for o in out)  # weight 0: a monitor
    assert all(math.isnan(o.components["bad"]) for o in out)
    comps[0].weight = 1.0
    with RewardScorer(comps, timeout_s=5.0) as scorer:
        out = scorer.score([RewardItem("5", "5", "", 0), RewardItem("4", "5", "", 0)])
    assert all(o.failed and "expected a list of 2 numbers" in o.error for o in out)


@pytest.mark.parametrize(("how", "expected"), [("sum", 2.0), ("min", 0.0), ("last", 1.0)])
def test_process_reward_scores_each_step_and_aggregates(how, expected):
    comp = RewardComponent(name="steps", fn=f"{FIX}:step_has_digit", scope="process", step_aggregate=how)
    with RewardScorer([comp], timeout_s=5.0) as scorer:
        good, empty, boom = scorer.score([("x = 1\nthen we think\ny = 2", "3"), ("\n\n", "3"), ("a\nboom", "3")])
    assert good.reward == expected and good.notes["steps"] == "steps=[1, 0, 1]"
    assert empty.reward == 0.0 and not empty.failed and empty.notes["steps"] == "no steps"
    assert boom.failed and "cannot score step 'boom'" in boom.error


def test_scored_reason_is_kept_as_a_note():
    comps = [RewardComponent(name="half", fn=f"{FIX}:half_marks_with_reason"),
             RewardComponent(name="exact", fn=f"{FIX}:exact_match")]
    with RewardScorer(comps, timeout_s=5.0) as scorer:
        (out,) = scorer.score([("7", "7")])
    assert not out.failed and out.reward == 1.5 and out.components == {"half": 0.5, "exact": 1.0}
    assert out.notes == {"half": "half marks for '7'"}  # only the term that gave a reason has a note


def test_a_hanging_sample_fails_alone_not_its_group():
    comp = RewardComponent(name="m", fn=f"{FIX}:misbehaves_on_command")
    items = [RewardItem("1", "1", "", 0), RewardItem("2", "2", "", 0), RewardItem("sleep", "x", "", 1),
             RewardItem("x", "x", "", 1), RewardItem("3", "3", "", 2)]
    with RewardScorer([comp], timeout_s=0.5) as scorer:
        out = scorer.score(items)
    assert [o.failed for o in out] == [False, False, True, False, False]  # a sample-scope timeout is per sample
    assert [o.reward for o in out if not o.failed] == [1.0, 1.0, 1.0, 1.0]
    assert "timed out" in out[2].error
    assert scorer.last_seconds["m"] > 0
