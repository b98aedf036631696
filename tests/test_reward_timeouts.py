"""Per-item reward timeouts: a rule call that hangs -- in Python, in a C call, with its signals blocked or caught
-- fails its own item(s) within about its deadline, the rest of the batch is scored as usual and in order, and a
batch on which everything hangs still ends within its budget. Real child processes, no mocks. The machines are
loaded, so times are checked against budgets with wide margins, never tightly."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from rlsys.rewards import RewardComponent, RewardItem, RewardScorer
from rlsys.rewards.scoring import MAX_LOST_IN_A_ROW

FIX = "reward_fixtures"  # tests/reward_fixtures.py

pytestmark = pytest.mark.slow  # every test here waits out real per-item timeouts in child processes


@pytest.fixture(autouse=True)
def _fixtures_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # the spawned child copies the parent's sys.path


def exact(completion: str, reference: str) -> float:
    return 1.0 if completion.strip() == reference.strip() else 0.0


def timed_score(scorer: RewardScorer, items: list) -> tuple[list, float]:
    start = time.monotonic()
    out = scorer.score(items)
    return out, time.monotonic() - start


def test_one_hanging_sample_among_40_fails_alone_within_its_timeout() -> None:
    items = [(str(i), str(i if i % 3 else i + 1)) for i in range(40)]  # every third one wrong
    items.insert(20, ("sleep", "x"))  # sleeps 10 s
    with RewardScorer(f"{FIX}:misbehaves_on_command", timeout_s=0.5) as scorer:
        out, elapsed = timed_score(scorer, items)
        assert out[20].failed and out[20].reward == 0.0 and "timed out after 0.5 s" in out[20].error
        rest = out[:20] + out[21:]
        assert not any(o.failed for o in rest)
        assert [o.reward for o in rest] == [exact(c, r) for c, r in items[:20] + items[21:]]
        # 0.5 s and one restart of the child; the whole-batch budget of before (41 × 0.5 s) waited out the 10 s
        assert elapsed < 10.0  # the scorer did not wait out the 10 s sleep
        assert [o.reward for o in scorer.score([("1", "1"), ("1", "2")])] == [1.0, 0.0]  # the next call, as usual


def test_several_hanging_samples_and_a_crash_fail_alone_and_the_scorer_goes_on() -> None:
    items = [(str(i), str(i) if i % 2 else "0", "", i // 8) for i in range(30)]  # prompt groups of 8
    bad = {0: "sleep", 9: "crash", 17: "sleep", 29: "sleep"}  # the first, the last, and two between
    for i, what in bad.items():
        items[i] = (what, "x", "", i // 8)
    with RewardScorer(f"{FIX}:misbehaves_on_command", timeout_s=0.5) as scorer:
        out, elapsed = timed_score(scorer, items)
        for i, o in enumerate(out):
            if i in bad:
                assert o.failed and o.reward == 0.0
                assert ("timed out after 0.5 s" if bad[i] == "sleep" else "crashed (exit code 1)") in o.error
            else:
                assert not o.failed and o.reward == exact(*items[i][:2]), (i, o)  # its group mates too
        assert elapsed < 10.0  # 3 × 0.5 s and 4 restarts; waiting out one 10 s sleep would already exceed it
        out = scorer.score([("ok", "ok"), ("sleep", "x"), ("a", "b")])
        assert [(o.reward, o.failed) for o in out] == [(1.0, False), (0.0, True), (0.0, False)]
        assert [(o.reward, o.failed) for o in scorer.score([("ok", "ok")])] == [(1.0, False)]


@pytest.mark.parametrize("how", ["spin", "swallow", "regex"])
def test_a_reward_that_blocks_or_catches_signals_is_still_stopped(how: str) -> None:
    # spin: busy loop with SIGALRM ignored and every signal blocked; swallow: catches every exception;
    # regex: catastrophic backtracking in C, holding the GIL. Each would run for a minute or more.
    items = [RewardItem(c, r, "", 0) for c, r in [("1", "1"), (how, "x"), ("2", "3"), ("4", "4")]]  # one group
    with RewardScorer(f"{FIX}:resists_on_command", timeout_s=0.5) as scorer:
        out, elapsed = timed_score(scorer, items)
        assert out[1].failed and "timed out after 0.5 s" in out[1].error
        assert [(o.reward, o.failed) for i, o in enumerate(out) if i != 1] == [(1.0, False), (0.0, False),
                                                                              (1.0, False)]
        assert elapsed < 10.0
        assert [o.reward for o in scorer.score([("ok", "ok")])] == [1.0]


def test_a_hanging_group_call_fails_its_group_only() -> None:
    comp = RewardComponent(name="g", fn=f"{FIX}:group_hangs_on_sleep", scope="group")
    items = [RewardItem("5", "5", "", 0), RewardItem("4", "5", "", 0),
             *(RewardItem(c, "x", "", 1) for c in ("sleep", "x", "y", "z")), RewardItem("7", "7", "", 2)]
    with RewardScorer([comp], timeout_s=0.25) as scorer:
        out, elapsed = timed_score(scorer, items)
        # the group's one call gets the time of its 4 samples
        assert all(o.failed and o.error == "timed out after 1.0 s (a group call: 0.25 s × 4 completions)"
                   for o in out[2:6])
        assert [(o.reward, o.failed) for o in out[:2] + out[6:]] == [(1.0, False), (0.0, False), (1.0, False)]
        assert elapsed < 10.0  # the hang is a minute
        assert [o.reward for o in scorer.score(items[:2])] == [1.0, 0.0]


def test_a_group_call_may_take_timeout_s_per_completion() -> None:
    comp = RewardComponent(name="g", fn=f"{FIX}:group_hangs_on_sleep", scope="group", params={"seconds": 2.0})
    items = [RewardItem(c, "1", "", 0) for c in ("1", "2", "1", "3")]
    with RewardScorer([comp], timeout_s=1.0) as scorer:  # 2 s for the call: over timeout_s, under 4 × 1 s
        out = scorer.score(items)
    assert [(o.reward, o.failed) for o in out] == [(1.0, False), (0.0, False), (1.0, False), (0.0, False)]


def test_a_hanging_process_reward_fails_its_sample_only() -> None:
    comp = RewardComponent(name="steps", fn=f"{FIX}:steps_hang_on_sleep", scope="process")
    with RewardScorer([comp], timeout_s=0.5) as scorer:
        good, hung, also_good = scorer.score([RewardItem(c, "3", "", 0)
                                              for c in ("x = 1\nthen 2", "a = 1\nsleep\nb", "y\n4")])
    assert hung.failed and hung.error == "timed out after 0.5 s"
    assert (good.reward, good.failed, good.notes["steps"]) == (1.0, False, "steps=[1, 1]")
    assert (also_good.reward, also_good.failed, also_good.notes["steps"]) == (0.0, False, "steps=[0, 1]")


def test_a_hanging_term_keeps_the_other_terms_values() -> None:
    terms = [RewardComponent(name="exact", fn=f"{FIX}:exact_match"),
             RewardComponent(name="m", fn=f"{FIX}:misbehaves_on_command", weight=0.5)]
    with RewardScorer(terms, timeout_s=0.5) as scorer:
        ok, hung = scorer.score([("a", "a"), ("sleep", "sleep")])
        assert not ok.failed and ok.reward == 1.5
        assert hung.failed and hung.error == "m: timed out after 0.5 s"
        assert hung.components["exact"] == 1.0 and math.isnan(hung.components["m"])
        assert scorer.last_seconds["m"] >= 0.5  # the hang counts as the term's time


def test_a_batch_that_hangs_everywhere_ends_within_its_budget() -> None:
    n, timeout = 12, 0.3
    with RewardScorer(f"{FIX}:misbehaves_on_command", timeout_s=timeout) as scorer:
        out, _ = timed_score(scorer, [("sleep", "x")] * n)
        assert all(o.failed and o.reward == 0.0 for o in out)
        timed_out = [o for o in out if o.error == "timed out after 0.3 s"]
        # Each hang takes its whole 0.3 s and a restart follows it, so the last of 12 cannot start inside the
        # 3.6 s budget; and after MAX_LOST_IN_A_ROW (8) hangs in a row the rest are not run. Which of the two ends
        # the call first depends on how fast this machine restarts a process: either is the right outcome.
        not_scored = [o for o in out if o.error.startswith((
            "not scored: this reward call ran out of its time budget of 3.6 s",
            f"not scored: the {MAX_LOST_IN_A_ROW} rule calls before it in this reward call each crashed or hung"))]
        assert 1 <= len(timed_out) <= MAX_LOST_IN_A_ROW and len(timed_out) + len(not_scored) == n, \
            [o.error for o in out]
        assert [o.reward for o in scorer.score([("ok", "ok"), ("ok", "no")])] == [1.0, 0.0]


def test_max_call_s_caps_the_budget_below_the_reward_pools_call_timeout() -> None:
    """The reward actor passes 0.8 × reward.call_timeout_s: many hanging samples fail, the call is not killed."""
    n, timeout, cap = 12, 1.0, 2.0
    with RewardScorer(f"{FIX}:misbehaves_on_command", timeout_s=timeout, max_call_s=cap) as scorer:
        out, elapsed = timed_score(scorer, [("sleep", "x")] * n)
        not_scored = [o for o in out if o.error.startswith("not scored: this reward call ran out of its time budget "
                                                           "of 2.0 s (the cap on one reward call")]
        assert all(o.failed for o in out) and len(not_scored) >= n - 3, [o.error for o in out]


def test_a_reward_that_crashes_its_process_on_every_sample_stops_being_run_after_a_few():
    """Each crash costs a restart of the child: after MAX_LOST_IN_A_ROW in a row, the rest fail unscored (saying
    why) instead of paying a restart each, so a reward broken everywhere reaches reward.max_failure_rate fast."""
    with RewardScorer(f"{FIX}:crashes", timeout_s=5.0) as scorer:
        out = scorer.score([(str(i), str(i)) for i in range(64)])
    assert all(o.failed for o in out)
    crashed = [o for o in out if o.error.startswith("reward worker process crashed")]
    assert len(crashed) == MAX_LOST_IN_A_ROW
    unscored = out[MAX_LOST_IN_A_ROW:]
    assert all(f"the {MAX_LOST_IN_A_ROW} rule calls before it in this reward call each crashed or hung" in o.error
               for o in unscored), unscored[0].error


def test_crashes_with_successes_between_them_are_each_retried():
    """Only losses in a row count: a crash every other sample never stops the others being scored."""
    n = 4 * MAX_LOST_IN_A_ROW
    items = [("crash" if i % 2 else str(i), str(i)) for i in range(n)]
    with RewardScorer(f"{FIX}:misbehaves_on_command", timeout_s=5.0) as scorer:
        out = scorer.score(items)
    assert [o.failed for o in out] == [bool(i % 2) for i in range(n)]
    assert all(o.reward == 1.0 for o in out[::2])
    assert all("crashed" in o.error and "rule calls before it" not in o.error for o in out[1::2])
