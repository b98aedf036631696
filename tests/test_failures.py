"""When to give up (rlsys.failures): bounded retries of prompts whose requests fail, and the reward-failure window."""

from __future__ import annotations

import math

import pytest

from rlsys.data.tasks import PromptStream
from rlsys.failures import (
    MAX_FAILED_REQUESTS_IN_A_ROW,
    MAX_PROMPT_ATTEMPTS,
    FailedExample,
    PromptRetries,
    RequestsFailing,
    RewardFailureWindow,
    RewardsFailing,
)
from rlsys.types import Prompt


def stream(n: int = 10) -> PromptStream:
    return PromptStream([Prompt(f"p{i}", f"{i}+0=", str(i)) for i in range(n)], seed=0)


def test_a_failed_request_s_prompts_come_back_one_per_request_and_are_dropped_after_the_limit():
    retries = PromptRetries(stream())
    first = retries.next_prompts(4)
    assert len(first) == 4
    assert retries.lost(first, "ValueError: too long", failed=True) == first
    again = [retries.next_prompts(4) for _ in range(4)]
    assert again == [[p] for p in first]  # alone, in their order
    bad = first[1]
    for attempt in range(2, MAX_PROMPT_ATTEMPTS + 1):
        retries.succeeded()
        kept = retries.lost([bad], "ValueError: too long", failed=True)
        if attempt < MAX_PROMPT_ATTEMPTS:
            assert kept == [bad] and retries.next_prompts(4) == [bad]
    assert kept == [] and retries.dropped == [{"prompt_id": bad.prompt_id, "epoch": 0, "attempts": MAX_PROMPT_ATTEMPTS,
                                               "error": "ValueError: too long"}]


def test_a_dead_worker_costs_a_prompt_no_attempt():
    retries = PromptRetries(stream())
    first = retries.next_prompts(3)
    for _ in range(10):
        assert retries.lost(first, "ActorDiedError", failed=False) == first
        assert retries.next_prompts(3) == first  # re-queued together: nothing is suspect
    assert retries.dropped == []


def test_every_request_failing_stops_instead_of_looping_through_the_data_set():
    retries = PromptRetries(stream(1000))
    with pytest.raises(RequestsFailing, match=f"the last {MAX_FAILED_REQUESTS_IN_A_ROW} requests all failed"):
        for _ in range(MAX_FAILED_REQUESTS_IN_A_ROW):
            retries.lost(retries.next_prompts(4), "RuntimeError: engine broken", failed=True)


def test_the_reward_failure_window_stops_on_a_window_above_the_rate():
    window = RewardFailureWindow(max_rate=0.5, window=8)
    window.observe([math.nan] * 4 + [1.0] * 3, {"correct": [math.nan] * 4 + [1.0] * 3, "fmt": [1.0] * 7},
                   FailedExample("p1", "12", "correct: ValueError: bad reference"))
    window.check()  # 4 failures: a full window may still come out at 4 of 8
    window.observe([math.nan], {"correct": [math.nan], "fmt": [1.0]})
    with pytest.raises(RewardsFailing) as info:  # 5 of 8 failed
        window.check()
    message = str(info.value)
    for needle in ("failed on 5 of the last 8 samples (62%)", "'correct' on 5", "e.g. prompt 'p1', completion '12'",
                   "ValueError: bad reference"):
        assert needle in message, message
    window.observe([1.0] * 4, {"correct": [1.0] * 4})  # the four oldest failures leave the window: 1 of 8
    window.check()
    assert window.rate == pytest.approx(1 / 8)


def test_the_reward_failure_window_stops_before_it_is_full_once_the_outcome_is_certain():
    window = RewardFailureWindow(max_rate=0.5, window=8)
    window.observe([math.nan] * 4, {"correct": [math.nan] * 4})
    window.check()  # 4 of at most 8: not above the rate yet, whatever comes next
    window.observe([math.nan], {"correct": [math.nan]})
    with pytest.raises(RewardsFailing, match=r"failed on 5 of the last 5 samples \(100%\)"):
        window.check()  # 5 failures: every full window containing them is above 0.5


def test_a_reward_failing_at_exactly_the_rate_or_below_goes_on():
    window = RewardFailureWindow(max_rate=0.5, window=4)
    window.observe([math.nan, 1.0, math.nan, 0.0], {})
    window.check()


def test_at_the_end_of_a_run_shorter_than_the_window_the_same_rate_applies():
    window = RewardFailureWindow(max_rate=0.5, window=1024)
    window.observe([math.nan] * 73 + [1.0] * 23, {"r": [math.nan] * 73 + [1.0] * 23})
    window.check()  # 73 failures: a full window of 1024 might still come out below 0.5
    with pytest.raises(RewardsFailing, match=r"failed on 73 of the last 96 samples \(76%\)"):
        window.check(final=True)  # the run is over: 96 samples are all there are
    fine = RewardFailureWindow(max_rate=0.5, window=1024)
    fine.observe([math.nan] * 48 + [1.0] * 48, {})
    fine.check(final=True)  # exactly the rate: goes on


def test_each_worker_slot_may_be_replaced_a_bounded_number_of_times():
    from rlsys.failures import MAX_REPLACEMENTS, ActorLost, Replacements

    budget = Replacements("rollout worker", 2)
    for _ in range(MAX_REPLACEMENTS):
        budget.spend(0, "lost 5 requests in a row", RuntimeError("actor died"))
    budget.spend(1, "lost 5 requests in a row", RuntimeError("actor died"))  # slots are counted apart
    with pytest.raises(ActorLost, match=r"rollout worker 0 lost 5 requests in a row again after 3 replacements "
                                        r"\(RuntimeError: actor died\); no rollout worker can be had"):
        budget.spend(0, "lost 5 requests in a row", RuntimeError("actor died"))
    assert budget.used == [MAX_REPLACEMENTS, 1]
