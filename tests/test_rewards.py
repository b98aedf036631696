"""Tests for rlsys.rewards: built-in rules, the registry, and RewardScorer with real child processes."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from rlsys.rewards import RewardComponent, RewardOutcome, RewardScorer, get_reward_fn, register_reward, reward_names
from rlsys.rewards.components import TermRow
from rlsys.rewards.rules import addition_exact, math_verify_reward

FIX = "reward_fixtures"  # tests/reward_fixtures.py, importable once tests/ is on sys.path


@pytest.fixture(autouse=True)
def _fixtures_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    # The spawned scorer child copies the parent's sys.path, so it can import reward_fixtures too.
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


# ---- addition_exact ----


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        ("42", "42", 1.0),
        ("41", "42", 0.0),
        ("  42\n", "42", 1.0),
        ("", "42", 0.0),
        ("   ", "42", 0.0),
        ("12a", "12", 0.0),
        ("1 2", "12", 0.0),
        ("-3", "-3", 0.0),  # only non-negative digit strings count
        ("4.0", "4", 0.0),
        ("²", "2", 0.0),  # unicode digits are not ASCII decimal digits
        ("042", "42", 1.0),  # leading zeros: same integer value, so correct
        ("The answer is 42", "42", 0.0),
    ],
)
def test_addition_exact(completion: str, reference: str, expected: float) -> None:
    assert addition_exact(completion, reference) == expected


# ---- math_verify (called directly: pytest runs tests in the main thread, where its signal timeouts work) ----


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        ("The answer is $\\boxed{42}$", "42", 1.0),
        ("So we get $\\boxed{0.5}$.", "\\frac{1}{2}", 1.0),
        ("$\\boxed{\\frac{2}{4}}$", "0.5", 1.0),
        ("$\\boxed{2\\sqrt{2}}$", "2\\sqrt{2}", 1.0),  # bare LaTeX reference must not parse as just "2"
        ("$\\boxed{2}$", "2\\sqrt{2}", 0.0),
        ("The answer is $\\boxed{41}$", "42", 0.0),
        ("I don't know", "42", 0.0),
        ("", "42", 0.0),
    ],
)
def test_math_verify(completion: str, reference: str, expected: float) -> None:
    assert math_verify_reward(completion, reference) == expected


def test_math_verify_unparseable_reference_raises() -> None:
    with pytest.raises(ValueError, match="reference answer"):
        math_verify_reward("$\\boxed{1}$", "")


# ---- registry ----


def test_builtins_registered() -> None:
    assert {"addition_exact", "math_verify"} <= set(reward_names())
    assert get_reward_fn("addition_exact") is addition_exact


def test_unknown_name_error_lists_names_and_import_form() -> None:
    with pytest.raises(ValueError) as info:
        get_reward_fn("no_such_reward")
    message = str(info.value)
    assert "no_such_reward" in message
    assert "addition_exact" in message and "math_verify" in message
    assert "module:function" in message


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_reward("addition_exact")(lambda c, r: 0.0)


def test_import_path() -> None:
    fn = get_reward_fn(f"{FIX}:exact_match")
    assert fn("x", "x") == 1.0 and fn("x", "y") == 0.0


@pytest.mark.parametrize(
    ("path", "needle"),
    [("no_such_module_xyz:fn", "ModuleNotFoundError"), (f"{FIX}:missing_fn", "missing_fn"), (f"{FIX}:", "expected")],
)
def test_bad_import_path(path: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        get_reward_fn(path)
    assert repr(path) in str(info.value) and needle in str(info.value)


# ---- RewardScorer ----


def plain(outcomes: list[RewardOutcome]) -> list[RewardOutcome]:
    """Outcomes without their per-term values (checked separately), for comparing with RewardOutcome(r, f, e)."""
    return [RewardOutcome(o.reward, o.failed, o.error) for o in outcomes]


def test_scorer_unknown_name_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="no_such_reward"):
        RewardScorer("no_such_reward", timeout_s=1.0)


def test_scorer_builtin_batch() -> None:
    items = [("42", "42"), ("41", "42"), (" 7 ", "7")]
    with RewardScorer("addition_exact", timeout_s=5.0) as scorer:
        out = scorer.score(items)
        assert plain(out) == [RewardOutcome(1.0, False), RewardOutcome(0.0, False), RewardOutcome(1.0, False)]
        assert [o.components["addition_exact"] for o in out] == [1.0, 0.0, 1.0]
        assert scorer.score([]) == []


@pytest.mark.slow  # waits on real timeouts or child processes (seconds)
def test_scorer_math_verify_in_child() -> None:
    with RewardScorer("math_verify", timeout_s=10.0) as scorer:
        out = scorer.score([("The answer is $\\boxed{42}$", "42"), ("$\\boxed{0.5}$", "\\frac{1}{3}")])
    assert [o.reward for o in out] == [1.0, 0.0] and not any(o.failed for o in out)


def test_scorer_raising_function() -> None:
    with RewardScorer(f"{FIX}:raises", timeout_s=5.0) as scorer:
        out = scorer.score([("a", "a"), ("b", "b")])
    assert all(o.failed and o.reward == 0.0 for o in out)
    assert out[0].error is not None and out[0].error.startswith("RuntimeError: reward exploded on 'a'")


@pytest.mark.parametrize(
    ("fn", "ok", "reward", "needle"),
    [
        ("returns_string", False, 0.0, "'yes' (str)"),
        ("returns_nan", False, 0.0, "nan"),
        ("returns_bool", True, 1.0, None),  # bool is accepted as 0/1
    ],
)
def test_scorer_checks_return_value(fn: str, ok: bool, reward: float, needle: str | None) -> None:
    with RewardScorer(f"{FIX}:{fn}", timeout_s=5.0) as scorer:
        (out,) = scorer.score([("a", "a")])
    assert out.failed is not ok and out.reward == reward
    if needle is not None:
        assert needle in (out.error or "") and "finite real number" in (out.error or "")


@pytest.mark.slow  # waits on real timeouts or child processes (seconds)
def test_scorer_timeout_then_recovers() -> None:
    with RewardScorer(f"{FIX}:sleeps", timeout_s=0.5) as scorer:
        start = time.monotonic()
        (out,) = scorer.score([("a", "a")])
        elapsed = time.monotonic() - start
        assert plain([out]) == [RewardOutcome(0.0, True, "timed out after 0.5 s")]
        assert elapsed < 8.0  # far below the 10 s sleep: the child was killed, not waited for
    # The call's budget is timeout_s × items, restarts included: 2 s × 3 leaves room for restarting the child on a
    # loaded machine (with 0.5 s × 3 a slow restart used it up, and the items left failed "not scored").
    with RewardScorer(f"{FIX}:misbehaves_on_command", timeout_s=2.0) as scorer:
        out = scorer.score([("a", "a"), ("sleep", "x"), ("b", "c")])
        assert [(o.reward, o.failed) for o in out] == [(1.0, False), (0.0, True), (0.0, False)], out
        assert out[1].error == "timed out after 2.0 s"
        assert plain(scorer.score([("ok", "ok")])) == [RewardOutcome(1.0, False)]  # a fresh child after the kill


def test_scorer_crash_then_recovers() -> None:
    with RewardScorer(f"{FIX}:crashes", timeout_s=5.0) as scorer:
        (out,) = scorer.score([("a", "a")])
    assert out.failed and out.reward == 0.0 and "crashed (exit code 1)" in (out.error or "")
    with RewardScorer(f"{FIX}:misbehaves_on_command", timeout_s=5.0) as scorer:
        out = scorer.score([("crash", "x"), ("a", "a")])
        assert out[0].failed and "crashed" in (out[0].error or "")
        assert plain(out[1:]) == [RewardOutcome(1.0, False)]
        assert plain(scorer.score([("b", "b"), ("b", "c")])) == [RewardOutcome(1.0, False), RewardOutcome(0.0, False)]


def test_scorer_closed() -> None:
    scorer = RewardScorer("addition_exact", timeout_s=1.0)
    scorer.close()
    scorer.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        scorer.score([("1", "1")])


# ---- composite rewards: named, weighted terms ----


def test_composite_reward_is_the_weighted_sum_and_keeps_every_term() -> None:
    from rlsys.config import RewardComponent

    terms = [
        RewardComponent("correct", "addition_exact", 1.0),
        RewardComponent("digits", "regex_format", 0.2, {"pattern": "[0-9]+"}),
        RewardComponent("short", "length_penalty", 0.5, {"target": 2, "scale": 4}),
    ]
    with RewardScorer(terms, timeout_s=5.0) as scorer:
        right, wrong, words = scorer.score([("42", "42"), ("421", "42"), ("4 2!", "42")])
    assert right.components == {"correct": 1.0, "digits": 1.0, "short": 0.0}
    assert right.reward == pytest.approx(1.0 + 0.2)
    # "421": wrong, digits, 1 char over the target of 2 → −1/4
    assert wrong.components == {"correct": 0.0, "digits": 1.0, "short": -0.25}
    assert wrong.reward == pytest.approx(0.2 - 0.5 * 0.25)
    assert words.components == {"correct": 0.0, "digits": 0.0, "short": -0.5}
    assert words.reward == pytest.approx(-0.25) and not words.failed


def test_a_failing_term_fails_the_item_and_is_named_unless_it_is_a_monitor() -> None:
    from rlsys.config import RewardComponent

    weighted = [RewardComponent("correct", "addition_exact"), RewardComponent("boom", f"{FIX}:raises", 0.5)]
    with RewardScorer(weighted, timeout_s=5.0) as scorer:
        (out,) = scorer.score([("1", "1")])
    assert out.failed and out.reward == 0.0
    assert out.error.startswith("boom: RuntimeError: reward exploded")
    assert out.components["correct"] == 1.0 and math.isnan(out.components["boom"])
    monitor = [RewardComponent("correct", "addition_exact"), RewardComponent("boom", f"{FIX}:raises", 0.0)]
    with RewardScorer(monitor, timeout_s=5.0) as scorer:
        (out,) = scorer.score([("1", "1")])
    assert not out.failed and out.reward == 1.0 and math.isnan(out.components["boom"])


def test_reward_scalars_log_each_term_and_the_length_correlation() -> None:
    from rlsys.metrics import reward_scalars

    out = reward_scalars([1.0, 0.0, math.nan, 1.0], [2, 5, 3, 3],
                         {"correct": [1.0, 0.0, 1.0, 1.0], "fmt": [1.0, 1.0, math.nan, 0.0]})
    assert out["reward/mean"] == pytest.approx(2 / 3) and out["reward/failures"] == 1.0
    assert out["reward/correct"] == pytest.approx(0.75) and out["reward/fmt_failures"] == 1.0
    assert out["reward/failure_rate"] == 0.25 and out["reward/fmt_failure_rate"] == 0.25
    assert out["reward/correct_failure_rate"] == 0.0
    # rewards [1, 0, 1] against lengths [2, 5, 3]: longer answers scored lower here
    r, n = [1.0, 0.0, 1.0], [2.0, 5.0, 3.0]
    mr, mn = sum(r) / 3, sum(n) / 3
    cov = sum((a - mr) * (b - mn) for a, b in zip(r, n))
    expected = cov / math.sqrt(sum((a - mr) ** 2 for a in r) * sum((b - mn) ** 2 for b in n))
    assert out["reward/length_corr"] == pytest.approx(expected)
    single = reward_scalars([1.0, 1.0], [1, 2], {"correct": [1.0, 1.0]})
    assert math.isnan(single["reward/length_corr"]) and "reward/correct" not in single  # constant reward


def test_a_reward_beyond_float32_is_a_failure_not_an_infinity():
    """Rewards are float32 from the buffer on: 1e39 would become inf there and the step's loss NaN."""
    from rlsys.rewards.components import combine

    with RewardScorer(f"{FIX}:huge_when_right", timeout_s=5.0) as scorer:
        right, wrong = scorer.score([("1", "1"), ("1", "2")])
    assert right.failed and "within float32's range" in right.error
    assert not wrong.failed and wrong.reward == 0.0
    terms = (RewardComponent(name="a", fn="exact_match", weight=10.0), RewardComponent(name="b", fn="exact_match"))
    total = combine(terms, [TermRow(3e38, False), TermRow(0.0, False)])  # each term fits; the weighted sum does not
    assert total.failed and "outside float32's range" in total.error


def test_what_a_reward_prints_is_bounded_per_batch(capfd) -> None:
    """A reward printing 10 000 characters a sample: each batch shows the first REWARD_OUTPUT_CHARS of it and says
    how much it left out; what fits (the stderr lines) is shown whole; the scores are unaffected."""
    from rlsys.rewards.scoring import REWARD_OUTPUT_CHARS

    with RewardScorer(f"{FIX}:prints_a_lot", timeout_s=5.0) as scorer:
        for _ in range(2):
            outcomes = scorer.score([(f"{i}", "3") for i in range(20)])
            assert [o.reward for o in outcomes] == [1.0 if i == 3 else 0.0 for i in range(20)]
    out, err = capfd.readouterr()
    assert out.count("x") == 2 * REWARD_OUTPUT_CHARS
    cut = 20 * 10_001 - REWARD_OUTPUT_CHARS  # print adds a newline to each
    assert out.count(f"[rlsys: {cut} more characters the reward functions wrote to stdout during this batch") == 2
    assert all(err.count(f"scored '{i}'") == 2 for i in range(20)) and "[rlsys:" not in err
