"""Unit tests for the text, structured and maths rule-based rewards (rlsys.rewards.text, rlsys.rewards.structured,
rlsys.rewards.rules' math_verify)."""

from __future__ import annotations

import json
import math
import time

import pytest

from rlsys.rewards import structured, text
from rlsys.rewards.registry import Scored, get_reward_fn
from rlsys.rewards.rules import math_verify_reward
from rlsys.rewards.structured import json_reward, tool_call_reward
from rlsys.rewards.text import (
    answer_tag_match,
    exact_match,
    length_penalty,
    normalize_answer,
    normalized_match,
    overlong_penalty,
    regex_format,
    think_answer_format,
)

THIRD = 1 / 3
HUGE = "x" * 5_000_000  # 5 MB
HUGE_SPACES = " " * 5_000_000 + "."  # long whitespace runs defeat naive trailing-punctuation regexes
WEIRD = "\udcff\x00\ufffd\x1b[0m\u202e"  # lone surrogate, NUL, replacement char, escape sequence, RTL override
DEEP = "[" * 100_000
DEEP_HUGE = "{\"a\": " * 1_000_000


@pytest.mark.parametrize(("name", "fn"), [
    ("exact_match", exact_match), ("normalized_match", normalized_match), ("regex_format", regex_format),
    ("think_answer_format", think_answer_format), ("answer_tag_match", answer_tag_match),
    ("length_penalty", length_penalty), ("overlong_penalty", overlong_penalty), ("json_reward", json_reward),
    ("tool_call_reward", tool_call_reward),
])
def test_registered_by_name(name, fn):
    assert get_reward_fn(name) is fn
    assert getattr(text, fn.__name__, None) is fn or getattr(structured, fn.__name__, None) is fn


# ---------------------------------------------------------------- adversarial completions, every function

JSON_REF = json.dumps({"schema": {"type": "object", "required": ["a"]}, "expected": {"a": 1}})
TOOL_REF = json.dumps({"name": "f", "arguments": {"x": 1}})
ALL_FNS = [
    (exact_match, "42", {}, (0.0, 1.0)),
    (normalized_match, "42", {}, (0.0, 1.0)),
    (regex_format, "", {"pattern": r"\d+"}, (0.0, 1.0)),
    (think_answer_format, "", {}, (0.0, 1.0)),
    (answer_tag_match, "42", {}, (0.0, 1.0)),
    (length_penalty, "", {"target": 100}, (-1.0, 0.0)),
    (length_penalty, "", {"target": 100, "unit": "words"}, (-1.0, 0.0)),
    (overlong_penalty, "", {"max_len": 100, "buffer": 10}, (-1.0, 0.0)),
    (json_reward, JSON_REF, {}, (0.0, 1.0)),
    (tool_call_reward, TOOL_REF, {}, (0.0, 1.0)),
]
ADVERSARIAL = {
    "empty": "", "whitespace": " \n\t\r ", "huge": HUGE, "huge_spaces": HUGE_SPACES, "weird": WEIRD,
    "unbalanced": '{"a": [1, 2', "deep": DEEP, "deep_huge": DEEP_HUGE, "array": "[1, 2, 3]",
    "nan": "NaN", "big_int": "9" * 10_000, "tags": "<think><answer></think></answer>" * 1000,
    "fence_only": "```json\n```", "tool_tags": "<tool_call></tool_call>",
}


@pytest.mark.parametrize(("fn", "reference", "params", "bounds"), ALL_FNS, ids=lambda v: getattr(v, "__name__", ""))
def test_adversarial_completions_score_finite_and_fast(fn, reference, params, bounds):
    for label, completion in ADVERSARIAL.items():
        start = time.perf_counter()
        score = fn(completion, reference, **params)
        elapsed = time.perf_counter() - start
        assert isinstance(score, float) and math.isfinite(score), (label, score)
        assert bounds[0] <= score <= bounds[1], (label, score)
        assert elapsed < 1.0, (label, elapsed)


@pytest.mark.parametrize("fn", [exact_match, normalized_match, answer_tag_match, think_answer_format, json_reward,
                                tool_call_reward])
def test_garbage_scores_zero(fn):
    reference = {json_reward: JSON_REF, tool_call_reward: TOOL_REF}.get(fn, "42")
    for completion in ["", "   ", HUGE, WEIRD, '{"a": [1, 2', DEEP, DEEP_HUGE]:
        assert fn(completion, reference) == 0.0


# ---------------------------------------------------------------- exact_match


def test_exact_match():
    assert exact_match(" 42\n", "42") == 1.0
    assert exact_match("42", " 42 ") == 1.0
    assert exact_match("042", "42") == 0.0
    assert exact_match("Paris", "paris") == 0.0
    assert exact_match("42.", "42") == 0.0


def test_exact_match_blank_reference_raises():
    with pytest.raises(ValueError, match="reference answer is empty"):
        exact_match("", "  ")


# ---------------------------------------------------------------- normalized_match


@pytest.mark.parametrize(("raw", "normal"), [
    ("The answer is: 1,000.", "1000"),
    ("Answer :  Yes!!", "yes"),
    ("the answer is Paris", "paris"),
    ("the answer isn't 5", "the answer isn't 5"),
    ("  New\n  York\t City ?", "new york city"),
    ("0.50", "0.5"), (".5", "0.5"), ("+0.5", "0.5"), ("-3.0", "-3"), ("-0", "0"), ("007", "7"), ("100.000", "100"),
    ("-12,345.60", "-12345.6"), ("1,2,3", "1,2,3"), ("1,000,00", "1,000,00"), ("x = 1,000", "x = 1000"),
    ("\uff14\uff12", "42"), ("STRASSE", "strasse"), ("Straße", "strasse"), ("ﬁne", "fine"),
    ("1.23456789012345678901234567890123", "1.23456789012345678901234567890123"),  # no 28-digit rounding
    ("1e3", "1e3"), ("x 0.50", "x 0.50"),  # exponents and numbers inside text are not canonicalised
])
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


@pytest.mark.parametrize(("completion", "reference", "expected"), [
    ("The answer is 0.50.", ".5", 1.0),
    ("answer: -3", "-3.0", 1.0),
    ("1,000,000", "1000000", 1.0),
    ("PARIS!", "Paris", 1.0),
    ("new   york", "New York", 1.0),
    ("0.51", "0.5", 0.0),
    ("1,000", "100", 0.0),
    ("3", "-3", 0.0),
    ("1.00000000000000000000000000001", "1", 0.0),
    ("", "42", 0.0),
])
def test_normalized_match(completion, reference, expected):
    assert normalized_match(completion, reference) == expected


@pytest.mark.parametrize("reference", ["", "   ", ".", "?!", "The answer is."])
def test_normalized_match_empty_reference_raises(reference):
    with pytest.raises(ValueError, match="empty after normalisation"):
        normalized_match("42", reference)


# ---------------------------------------------------------------- regex_format


def test_regex_format_matches_whole_stripped_completion():
    assert regex_format(" 123 \n", "", pattern=r"\d+") == 1.0
    assert regex_format("12a", "", pattern=r"\d+") == 0.0
    assert regex_format("a123", "", pattern=r"\d+") == 0.0


def test_regex_format_flags():
    assert regex_format("a\nb", "", pattern="a.b") == 1.0  # default flags="s"
    assert regex_format("a\nb", "", pattern="a.b", flags="") == 0.0
    assert regex_format("YES", "", pattern="yes") == 0.0
    assert regex_format("YES", "", pattern="yes", flags="i") == 1.0
    assert regex_format("ab", "", pattern="a  b  # spaced", flags="x") == 1.0
    assert regex_format("x\ny", "", pattern="^x$\n^y$", flags="m") == 1.0
    assert regex_format("X\nY", "", pattern="x.y", flags="is") == 1.0


def test_regex_format_max_chars():
    assert regex_format("1" * 10, "", pattern=r"\d+", max_chars=10) == 1.0
    assert regex_format("1" * 11, "", pattern=r"\d+", max_chars=10) == 0.0
    # catastrophic backtracking pattern: the long input is rejected before matching
    start = time.perf_counter()
    assert regex_format("a" * 200_000 + "!", "", pattern=r"(a+)+") == 0.0
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(("params", "message"), [
    ({"pattern": ""}, "'pattern' must be a non-empty"),
    ({"pattern": 5}, "'pattern' must be a non-empty"),
    ({"pattern": "(unclosed"}, r"invalid regex pattern '\(unclosed'"),
    ({"pattern": "a", "flags": "sq"}, "unknown flag letter 'q'"),
    ({"pattern": "a", "flags": None}, "'flags' must be a string"),
    ({"pattern": "a", "max_chars": 0}, "'max_chars' must be >= 1"),
    ({"pattern": "a", "max_chars": "10"}, "'max_chars' must be an int"),
])
def test_regex_format_bad_params(params, message):
    with pytest.raises(ValueError, match=message):
        regex_format("a", "", **params)


# ---------------------------------------------------------------- think_answer_format


@pytest.mark.parametrize(("completion", "expected"), [
    ("<think>reasoning</think><answer>42</answer>", 1.0),
    ("\n <think>\nstep 1\nstep 2\n</think>\n\n<answer> 42 </answer>\n", 1.0),
    ("<think></think><answer>42</answer>", 1.0),  # empty think is allowed
    ("<think>x</think><answer>  </answer>", 0.0),  # empty answer is not
    ("<answer>42</answer>", 0.0),
    ("<think>x</think>", 0.0),
    ("Sure! <think>x</think><answer>42</answer>", 0.0),
    ("<think>x</think><answer>42</answer> done", 0.0),
    ("<think>x</think> between <answer>42</answer>", 0.0),
    ("<answer>42</answer><think>x</think>", 0.0),
    ("<think>x</think><answer>1</answer><answer>2</answer>", 0.0),
    ("<think><think>x</think></think><answer>42</answer>", 0.0),
    ("<think>x<answer>42</answer></think>", 0.0),
    ("<THINK>x</THINK><ANSWER>42</ANSWER>", 0.0),
    ("<think>x</think><answer>42", 0.0),
])
def test_think_answer_format(completion, expected):
    assert think_answer_format(completion, "ignored") == expected


# ---------------------------------------------------------------- answer_tag_match


@pytest.mark.parametrize(("completion", "expected"), [
    ("<think>1000 - 0</think><answer> The answer is 1,000. </answer>", 1.0),
    ("<answer>7</answer> wait, no: <answer>1000</answer>", 1.0),  # the last block counts
    ("<answer>1000</answer> wait, no: <answer>7</answer>", 0.0),
    ("<answer>7</answer><answer>1000", 0.0),  # unclosed last block: the earlier closed one counts
    ("<answer>1000", 0.0),
    ("1000", 0.0),
    ("</answer>1000<answer>", 0.0),
    ("<answer></answer>", 0.0),
])
def test_answer_tag_match(completion, expected):
    assert answer_tag_match(completion, "1000") == expected


def test_answer_tag_match_bad_reference_raises_even_without_tag():
    with pytest.raises(ValueError, match="empty after normalisation"):
        answer_tag_match("no tag here", " ")


# ---------------------------------------------------------------- length_penalty


@pytest.mark.parametrize(("length", "params", "expected"), [
    (100, {}, 0.0),
    (150, {}, -0.5),
    (50, {}, -0.5),
    (250, {}, -1.0),  # clamped
    (0, {}, -1.0),
    (105, {"tolerance": 10}, 0.0),
    (150, {"tolerance": 10}, -0.4),
    (150, {"scale": 200}, -0.25),
    (150, {"scale": 12.5}, -1.0),
])
def test_length_penalty_chars(length, params, expected):
    assert length_penalty("a" * length, "", target=100, **params) == pytest.approx(expected)


def test_length_penalty_words():
    assert length_penalty("one two\nthree  four five", "", target=5, unit="words") == 0.0
    assert length_penalty("a b c", "", target=5, scale=4, unit="words") == pytest.approx(-0.5)
    assert length_penalty("", "", target=0, scale=10, unit="words") == 0.0
    assert math.copysign(1.0, length_penalty("abc", "", target=3)) == 1.0  # 0.0, not -0.0


@pytest.mark.parametrize(("params", "message"), [
    ({"target": -1}, "'target' must be >= 0"),
    ({"target": "100"}, "'target' must be an int"),
    ({"target": True}, "'target' must be an int"),
    ({"target": 100, "tolerance": -1}, "'tolerance' must be >= 0"),
    ({"target": 0}, "'scale' must be a finite number > 0"),
    ({"target": 100, "scale": 0}, "'scale' must be a finite number > 0"),
    ({"target": 100, "scale": float("nan")}, "'scale' must be a finite number > 0"),
    ({"target": 100, "scale": "2"}, "'scale' must be a finite number > 0"),
    ({"target": 100, "unit": "tokens"}, "'unit' must be one of"),
])
def test_length_penalty_bad_params(params, message):
    with pytest.raises(ValueError, match=message):
        length_penalty("abc", "", **params)


def test_required_params_are_required_by_the_signature():
    """The config check binds params to the signature (tests/test_config.py), so required ones have no default."""
    with pytest.raises(TypeError, match="required keyword-only argument: 'target'"):
        length_penalty("abc", "")
    with pytest.raises(TypeError, match="required keyword-only argument: 'buffer'"):
        overlong_penalty("abc", "", max_len=100)
    with pytest.raises(TypeError, match="required keyword-only argument: 'pattern'"):
        regex_format("abc", "")


# ---------------------------------------------------------------- overlong_penalty


@pytest.mark.parametrize(("length", "expected"), [
    (0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (100, -1.0), (101, -1.0), (10_000, -1.0),
])
def test_overlong_penalty_chars(length, expected):
    assert overlong_penalty("a" * length, "", max_len=100, buffer=20) == pytest.approx(expected)


def test_overlong_penalty_words_and_full_buffer():
    assert overlong_penalty("w " * 9, "", max_len=10, buffer=2, unit="words") == pytest.approx(-0.5)
    assert overlong_penalty("w " * 8, "", max_len=10, buffer=2, unit="words") == 0.0
    assert overlong_penalty("", "", max_len=10, buffer=10) == 0.0
    assert overlong_penalty("a" * 5, "", max_len=10, buffer=10) == pytest.approx(-0.5)


@pytest.mark.parametrize(("params", "message"), [
    ({"max_len": 0, "buffer": 1}, "'max_len' must be >= 1"),
    ({"max_len": 100, "buffer": 0}, "'buffer' must be >= 1"),
    ({"max_len": 100, "buffer": -5}, "'buffer' must be >= 1"),
    ({"max_len": 100, "buffer": 101}, r"'buffer' \(101\) must be <= 'max_len' \(100\)"),
    ({"max_len": 100.0, "buffer": 10}, "'max_len' must be an int"),
    ({"max_len": 100, "buffer": 10, "unit": "bytes"}, "'unit' must be one of"),
])
def test_overlong_penalty_bad_params(params, message):
    with pytest.raises(ValueError, match=message):
        overlong_penalty("abc", "", **params)


# ---------------------------------------------------------------- json_reward

NESTED_REF = json.dumps({
    "schema": {"type": "object", "required": ["a", "b"], "properties": {"a": {"type": "integer"}}},
    "expected": {"a": 1, "b": {"c": "x", "d": [3, 4]}},  # leaves: a, b.c, b.d[0], b.d[1]
})


@pytest.mark.parametrize(("completion", "expected"), [
    ('{"a": 1, "b": {"c": "x", "d": [3, 4]}}', 1.0),
    ('  \n{"b": {"d": [3, 4.0], "c": "x"}, "a": 1, "extra": true}\n', 1.0),  # key order, 4 == 4.0, extras ignored
    ('```json\n{"a": 1, "b": {"c": "x", "d": [3, 4]}}\n```', 1.0),
    ('```JSON {"a": 1, "b": {"c": "x", "d": [3, 4]}} ```', 1.0),
    ('```\n{"a": 1, "b": {"c": "x", "d": [3, 4]}}\n```', 1.0),
    ('{"a": 1, "b": {"c": "x", "d": [3]}}', 2 * THIRD + 0.75 * THIRD),  # 3 of 4 leaves
    ('{"a": 1, "b": {"c": "y", "d": [4, 3]}}', 2 * THIRD + 0.25 * THIRD),  # lists by position
    ('{"a": 1, "b": [3, 4]}', 2 * THIRD + 0.25 * THIRD),  # wrong container type loses the leaves below
    ('{"a": 1.5, "b": {"c": "x", "d": [3, 4]}}', THIRD + 0.75 * THIRD),  # schema fails (a not integer)
    ('{"a": "1", "b": {"c": "x", "d": [3, 4]}}', THIRD + 0.75 * THIRD),  # "1" is not 1
    ('{"a": 1}', THIRD + 0.25 * THIRD),  # schema fails (b required), 1 of 4 leaves
    ('[{"a": 1, "b": {"c": "x", "d": [3, 4]}}]', THIRD),  # array where an object is expected
    ('"just a string"', THIRD),
    ('Here you go: {"a": 1, "b": {"c": "x", "d": [3, 4]}}', 0.0),
    ('```json\n{"a": 1, "b": {"c": "x", "d": [3, 4]}}\n``` hope that helps', 0.0),
    ('{"a": 1, "b": {"c": "x", "d": [3, 4]}', 0.0),
    ("{'a': 1}", 0.0),
    ('{"a": NaN}', 0.0),
    ("", 0.0),
])
def test_json_reward_levels(completion, expected):
    assert json_reward(completion, NESTED_REF) == pytest.approx(expected)


def test_json_reward_schema_only_reference():
    ref = json.dumps({"schema": {"type": "array", "items": {"type": "integer"}, "minItems": 2}})
    assert json_reward("[1, 2, 3]", ref) == pytest.approx(1.0)
    assert json_reward("[1]", ref) == pytest.approx(THIRD)  # parses; fails schema, so content is not granted
    assert json_reward('{"a": 1}', ref) == pytest.approx(THIRD)
    assert json_reward("[1, 2", ref) == 0.0


def test_json_reward_expected_only_and_bare_reference():
    wrapped = json.dumps({"expected": {"a": 1, "b": 2}})
    assert json_reward('{"a": 1, "b": 2}', wrapped) == pytest.approx(1.0)
    assert json_reward('{"a": 1, "b": 3}', wrapped) == pytest.approx(2 * THIRD + 0.5 * THIRD)
    assert json_reward('{"a": 1, "b": 3}', '{"a": 1, "b": 2}') == pytest.approx(2 * THIRD + 0.5 * THIRD)
    assert json_reward("[1, 2]", "[1, 2, 3]") == pytest.approx(2 * THIRD + (2 / 3) * THIRD)
    assert json_reward("42.0", "42") == pytest.approx(1.0)
    assert json_reward("true", "1") == pytest.approx(2 * THIRD)  # bools are not numbers
    assert json_reward("1", "true") == pytest.approx(2 * THIRD)
    assert json_reward("null", "null") == pytest.approx(1.0)
    assert json_reward('"null"', "null") == pytest.approx(2 * THIRD)
    assert json_reward("{}", "{}") == pytest.approx(1.0)  # an empty container is one leaf
    assert json_reward('{"a": 1}', "{}") == pytest.approx(2 * THIRD)
    assert json_reward("[]", "{}") == pytest.approx(2 * THIRD)
    assert json_reward('{"expected": 5}', json.dumps({"expected": {"expected": 5}})) == pytest.approx(1.0)


def test_json_reward_big_numbers():
    big = "1" + "0" * 400  # beyond float range: compared exactly
    assert json_reward(big, big) == pytest.approx(1.0)
    assert json_reward(big + "1", big) == pytest.approx(2 * THIRD)


def test_json_reward_nesting():
    ref = json.dumps({"schema": {"type": "array"}})
    assert json_reward("[" * 500 + "]" * 500, ref) == pytest.approx(1.0)  # deep but within limits: fine
    assert json_reward("[" * 100_000 + "]" * 100_000, ref) == 0.0  # nesting bomb
    deep_expected = "[" * 400 + "1" + "]" * 400
    assert json_reward(deep_expected, deep_expected) == pytest.approx(1.0)


def test_json_reward_large_valid_completion_is_fast():
    completion = json.dumps({"a": list(range(500_000))})  # ~3.4 MB
    ref = json.dumps({"schema": {"type": "object"}, "expected": {"a": [0, 1, 2]}})
    start = time.perf_counter()
    assert json_reward(completion, ref) == pytest.approx(1.0)
    assert time.perf_counter() - start < 2.0


def test_json_reward_does_not_fetch_remote_refs():
    ref = json.dumps({"schema": {"$ref": "https://example.invalid/schema.json"}})
    with pytest.raises(ValueError, match=r"unresolvable \$ref"):
        json_reward("1", ref)
    local = json.dumps({"schema": {"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"}})
    assert json_reward("1", local) == pytest.approx(1.0)
    assert json_reward('"1"', local) == pytest.approx(THIRD)


@pytest.mark.parametrize(("reference", "message"), [
    ("not json", "reference 'not json' is not valid JSON"),
    ('{"a": 1', "is not valid JSON"),
    ("NaN", "is not valid JSON"),
    ("", "is not valid JSON"),
    ("[" * 100_000, "is not valid JSON"),
    (json.dumps({"schema": {"type": "nonsense"}}), "invalid JSON schema in the reference"),
    (json.dumps({"schema": {"minItems": -1}}), "invalid JSON schema in the reference"),
    (json.dumps({"schema": [1, 2]}), "a schema is an object or a boolean, got list"),
    (json.dumps({"schema": {"type": "object"}, "expected": 1, "notes": "x"}), r"also the keys \['notes'\]"),
])
def test_json_reward_bad_reference_raises(reference, message):
    with pytest.raises(ValueError, match=message):
        json_reward("{}", reference)


# ---------------------------------------------------------------- tool_call_reward

WEATHER_REF = json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "metric": True}})


def _call(name="get_weather", **arguments):
    return json.dumps({"name": name, "arguments": arguments})


@pytest.mark.parametrize(("completion", "expected"), [
    (_call(city="Paris", days=3, metric=True), 1.0),
    (_call(city="  Paris\n", days=3.0, metric=True), 1.0),  # strings stripped, numbers as floats
    (json.dumps({"name": "get_weather", "arguments": json.dumps({"city": "Paris", "days": 3, "metric": True})}), 1.0),
    (f"<tool_call>\n{_call(city='Paris', days=3, metric=True)}\n</tool_call>", 1.0),
    (f"```json\n{_call(city='Paris', days=3, metric=True)}\n```", 1.0),
    (f"<tool_call>```json\n{_call(city='Paris', days=3, metric=True)}\n```</tool_call>", 1.0),
    (_call(city="Rome", days=3, metric=True), 1 / 3 + 1 / 3 + (2 / 3) / 3),
    (_call(city="Paris", days=3), 1 / 3 + (2 / 3) / 3 + (2 / 3) / 3),  # missing key
    (_call(city="Paris", days=3, metric=True, lang="fr"), 1 / 3 + (3 / 4) / 3 + 1 / 3),  # extra key
    (_call(city="Paris", days="3", metric=1), 1 / 3 + 1 / 3 + (1 / 3) / 3),  # "3" != 3, 1 != true
    (_call(town="Paris"), 1 / 3),  # no shared keys
    (_call(), 1 / 3),
    (json.dumps({"name": "get_weather"}), 1 / 3),  # missing arguments = {}
    (json.dumps({"name": "get_weather", "arguments": [1, 2]}), 1 / 3),  # arguments not an object
    (json.dumps({"name": "get_weather", "arguments": "{city: Paris}"}), 1 / 3),  # undecodable string
    (_call("get_forecast", city="Paris", days=3, metric=True), 0.0),  # wrong tool: nothing
    (_call("GET_WEATHER", city="Paris", days=3, metric=True), 0.0),
    (json.dumps({"arguments": {"city": "Paris"}}), 0.0),  # no name
    (json.dumps({"name": ["get_weather"], "arguments": {}}), 0.0),
    (json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}}]), 0.0),  # array, not an object
    (f"Calling it now: <tool_call>{_call(city='Paris', days=3, metric=True)}</tool_call>", 0.0),
    (f"<tool_call>{_call(city='Paris')}</tool_call><tool_call>{_call(city='Paris')}</tool_call>", 0.0),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Par', 0.0),
    ("<tool_call></tool_call>", 0.0),
    ("", 0.0),
])
def test_tool_call_reward(completion, expected):
    assert tool_call_reward(completion, WEATHER_REF) == pytest.approx(expected)


def test_tool_call_reward_reference_forms():
    string_args = json.dumps({"name": "f", "arguments": json.dumps({"x": {"y": [1, " a "]}})})
    assert tool_call_reward(json.dumps({"name": "f", "arguments": {"x": {"y": [1.0, "a"]}}}), string_args) == 1.0
    assert tool_call_reward(json.dumps({"name": "f", "arguments": {"x": {"y": [1]}}}), string_args) == (
        pytest.approx(2 / 3))  # nested values compare as a whole
    no_args = json.dumps({"name": "ping"})
    assert tool_call_reward('{"name": "ping"}', no_args) == pytest.approx(1.0)
    assert tool_call_reward('{"name": "ping", "arguments": {}}', no_args) == pytest.approx(1.0)
    assert tool_call_reward('{"name": "ping", "arguments": {"x": 1}}', no_args) == pytest.approx(2 / 3)


def test_tool_call_reward_nesting_bomb():
    bomb = '{"name": "f", "arguments": {"x": ' + "[" * 100_000 + "}}"
    assert tool_call_reward(bomb, TOOL_REF) == 0.0
    string_bomb = json.dumps({"name": "f", "arguments": "[" * 100_000})
    assert tool_call_reward(string_bomb, TOOL_REF) == pytest.approx(1 / 3)  # name right, arguments unusable


@pytest.mark.parametrize(("reference", "message"), [
    ("get_weather(city='Paris')", "is not valid JSON"),
    ('{"name": "f", "arguments": {', "is not valid JSON"),
    ('[{"name": "f", "arguments": {}}]', "must be a JSON object"),
    ('{"arguments": {}}', "needs a non-empty string 'name'"),
    ('{"name": "", "arguments": {}}', "needs a non-empty string 'name'"),
    ('{"name": 3, "arguments": {}}', "needs a non-empty string 'name'"),
    ('{"name": "f", "arguments": "[1]"}', "'arguments' that are not a JSON object"),
    ('{"name": "f", "arguments": 5}', "'arguments' that are not a JSON object"),
])
def test_tool_call_reward_bad_reference_raises(reference, message):
    with pytest.raises(ValueError, match=message):
        tool_call_reward(_call(), reference)


# ---------------------------------------------------------------- math_verify
# Real math-verify, no mocks, called directly: pytest runs tests in the main thread, where its signal timeouts work.

# Boxes far apart: the last one is the answer (boxes listed together, "\boxed{3} or \boxed{4}", are one answer).
RECHECKED = (r"First try: $\boxed{3}$. Let me recheck that carefully, since the second step looked wrong. "
             r"Redo: $\boxed{4}$")
MATH_VERIFY_CASES = [
    # -- the reported faults
    (r"The answer is 2 + \sqrt{3}", "2", 0.0),
    (r"The answer is 2 + \sqrt{3}", r"2 + \sqrt{3}", 1.0),
    ("So it is (C)", "C", 1.0),
    (r"The answer is \$250.", r"\$250", 1.0),
    (r"$\boxed{\frac{1}{3^{41}}}$", r"\frac{1}{3^{40}}", 0.0),
    # -- wrong answers whose leading number matches: never 1.0
    (r"The answer is 2x", "2", 0.0),
    (r"The answer is 2^{10}", "2", 0.0),
    (r"The answer is 2\pi", "2", 0.0),
    (r"The answer is 3/4", "3", 0.0),
    (r"The answer is 1.5", "1", 0.0),
    (r"Answer: 2 \cdot 5", "2", 0.0),
    (r"The answer is 5!", "5", 0.0),
    (r"The answer is 10^{-3}", "10", 0.0),
    ("The answer is -5.", "5", 0.0),
    (r"So we get 2\sqrt{2}.", "2", 0.0),
    (r"Therefore x = 2 + \sqrt{3}", "2", 0.0),
    (r"The answer is $2 + \sqrt{3}$", "2", 0.0),
    ("#### 72.5", "72", 0.0),
    (r"The answer is 2e5", "2", 0.0),
    # -- correct unboxed expressions
    (r"The answer is 2\sqrt{2}.", r"2\sqrt{2}", 1.0),
    (r"The answer is \frac{1}{2}", "0.5", 1.0),
    (r"So x = 2 + \sqrt{3}.", r"2+\sqrt{3}", 1.0),
    (r"We find that 3 + 4 = 7.", "7", 1.0),
    (r"Thus the area is 2\pi r^2 = 18\pi square units.", r"18\pi", 1.0),
    (r"Answer: \(\frac{3}{4}\)", "0.75", 1.0),
    (r"The answer is: $$x = 5$$", "5", 1.0),
    ("The answer is 2^{10}", "1024", 1.0),
    # -- boxed vs unboxed: the last box wins; a box beats a marker; a marker beats the last expression
    (r"The answer is 3. Final: $\boxed{4}$", "4", 1.0),
    (r"The answer is 3. Final: $\boxed{4}$", "3", 0.0),
    (RECHECKED, "4", 1.0),
    (RECHECKED, "3", 0.0),
    (r"$\boxed{3}$ or $\boxed{4}$", "4", 0.0),
    (r"The answer is 3. Checking: 2 + 2 = 4", "3", 1.0),
    (r"The answer is 3. Checking: 2 + 2 = 4", "4", 0.0),
    ("First 3, then 5, finally 7", "7", 1.0),
    ("First 3, then 5, finally 7", "3", 0.0),
    (r"$\boxed{1}$ and $\boxed{2}$", "1, 2", 1.0),
    # -- currency / units / percent on either side
    ("The total is $250.", "250", 1.0),
    ("The total is $250.", r"\$250", 1.0),
    (r"$\boxed{\$250}$", "250", 1.0),
    (r"$\boxed{250 \text{ dollars}}$", r"\$250", 1.0),
    ("She pays 250 dollars.", r"\$250", 1.0),
    ("#### $1,000", "1000", 1.0),
    ("#### 1,000", r"\$1,000", 1.0),
    (r"$\boxed{250}$", "250 dollars", 1.0),
    (r"$\boxed{250}$", r"250\text{ dollars}", 1.0),
    (r"$\boxed{251}$", r"\$250", 0.0),
    ("The answer is 250%", r"250\%", 1.0),
    (r"The answer is $250\%$", "250%", 1.0),
    ("The answer is 25%", "0.25", 1.0),
    ("The answer is 26%", "0.25", 0.0),
    ("The answer is 5 cm.", "5", 1.0),
    (r"$\boxed{5\text{ cm}}$", "5 cm", 1.0),
    (r"$\boxed{6\text{ cm}}$", "5 cm", 0.0),
    ("It is 12 apples", "12", 1.0),
    ("The angle is 90°", r"90^\circ", 1.0),
    (r"The answer is $1,\!000$", "1000", 1.0),
    # -- multiple choice
    ("So it is (C)", "(C)", 1.0),
    ("The answer is C", "C", 1.0),
    ("The answer is C.", "(C)", 1.0),
    ("Answer: C)", "C", 1.0),
    (r"The answer is $\text{(C)}$", "C", 1.0),
    (r"$\boxed{C}$", "C", 1.0),
    (r"$\boxed{\text{(C)}}$", "(C)", 1.0),
    (r"$\boxed{\textbf{(C) }12}$", "C", 1.0),
    (r"The answer is **C**", r"\text{(C)}", 1.0),
    ("... so it must be C.", "C", 1.0),
    ("The answer is (C) 12", "(C) 12", 1.0),
    ("Clearly", "C", 0.0),
    ("Clearly the answer is B", "C", 0.0),
    ("So it is (B)", "C", 0.0),
    ("Options A, B and C are wrong, so the answer is D", "C", 0.0),
    ("Computing P(C) = 0.5 gives (B)", "C", 0.0),
    ("Cats can climb.", "C", 0.0),
    ("The answer is Clearly D", "C", 0.0),
    (r"$\boxed{B}$", "C", 0.0),
    ("The answer is (C)", "B", 0.0),
    ("I think it is C, no wait: (D)", "C", 0.0),
    # -- relative tolerance
    (r"$\boxed{1.1\times10^{-20}}$", r"1\times10^{-20}", 0.0),
    ("The answer is 1.1e-20", "1e-20", 0.0),
    ("The answer is 1.0000000001e20", "1e20", 1.0),
    (r"$\boxed{1.0000000001 \times 10^{20}}$", r"10^{20}", 1.0),
    (r"$\boxed{1.0001 \times 10^{20}}$", r"10^{20}", 0.0),
    (r"$\boxed{0.333333}$", r"\frac{1}{3}", 1.0),
    (r"$\boxed{0.3333}$", r"\frac{1}{3}", 0.0),
    (r"$\boxed{1.41421356}$", r"\sqrt{2}", 1.0),
    (r"$\boxed{1.414}$", r"\sqrt{2}", 0.0),
    (r"$\boxed{0.0000001}$", "0", 0.0),
    (r"$\boxed{\frac{1}{3^{40}}}$", r"\frac{1}{3^{40}}", 1.0),
    (r"$\boxed{3^{-40}}$", r"\frac{1}{3^{40}}", 1.0),
    (r"$\boxed{1000001}$", "1000000", 0.0),
    (r"$\boxed{1000000.1}$", "1000000", 1.0),
    # -- GSM8K
    ("Janet sells 16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars.\n#### 18", "18", 1.0),
    ("16 - 3 - 4 = 9 eggs\n#### 9", "18", 0.0),
    ("#### 72", "72", 1.0),
    ("#### 72", "72.0", 1.0),
    ("#### 7", "72", 0.0),
    # -- worked before and still does
    (r"The answer is $\boxed{42}$", "42", 1.0),
    (r"So we get $\boxed{0.5}$.", r"\frac{1}{2}", 1.0),
    (r"$\boxed{2}$", r"2\sqrt{2}", 0.0),
    ("I don't know", "42", 0.0),
    ("", "42", 0.0),
    (r"The answer is $\boxed{x = 3}$", "3", 1.0),
    (r"$\boxed{(1, 2)}$", "(1, 2)", 1.0),
    (r"$\boxed{[0, 1)}$", "[0,1)", 1.0),
    (r"$\boxed{\text{Monday}}$", r"\text{Monday}", 1.0),
    (r"The final answer is $\frac{7}{2}$. I hope it is correct.", "3.5", 1.0),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), MATH_VERIFY_CASES)
def test_math_verify_cases(completion, reference, expected):
    assert math_verify_reward(completion, reference) == expected


# Expressions that start with the number 2 but are not 2: read as a whole, never as their leading number.
LEADING_TWO = [r"2 + \sqrt{3}", "2x", "2^{10}", r"2\pi", "2/3", "2.5", r"2 \cdot 5", "2e5", r"2\sqrt{2}",
               r"2 \times 10^{3}", "2 - 1", "2(3)"]
ANSWER_FORMS = ["The answer is {}", "Answer: {}", "#### {}", "So we get {}.", "$\\boxed{{{}}}$", "The answer is ${}$",
                "Thus x = {}", "The final answer is ${}$. I hope it is correct."]


@pytest.mark.parametrize("form", ANSWER_FORMS)
@pytest.mark.parametrize("expression", LEADING_TWO)
def test_math_verify_reads_the_whole_expression(expression, form):
    completion = form.format(expression)
    assert math_verify_reward(completion, "2") == 0.0  # a wrong answer is never rewarded
    assert math_verify_reward(completion, expression) == 1.0  # and the right one is


@pytest.mark.parametrize("completion", [
    "Clearly", "Cats can climb.", "Calculate it: 3 + 4 = 7", "ABC is a triangle", "CO2 is a gas", "The chosen one is B",
    "P(C) = 0.5", "So it is (c)", "c)", "The answer is c, d or e", "the answer is Clearly D", r"$\boxed{c + 1}$",
    "The answer is a circle", "",
])
def test_math_verify_letter_inside_a_word_is_not_an_option(completion):
    assert math_verify_reward(completion, "C") == 0.0
    assert math_verify_reward(completion, "(C)") == 0.0


@pytest.mark.parametrize("reference", [
    "C", "(C)", "C)", "[C]", r"\text{(C)}", "$C$", r"\boxed{C}", "(C) 12", "option C",
])
@pytest.mark.parametrize("completion", [
    "So it is (C)", "The answer is C", "Answer: C)", r"The answer is $\text{(C)}$", r"$\boxed{C}$", r"$\boxed{(C)}$",
    r"$\boxed{\textbf{(C) }12}$", "The answer is option C.", "**Answer:** (C)", "It must be C.",
    r"$\boxed{c}$", "The answer is (c).",  # lower case only when the letter is the whole answer
])
def test_math_verify_option_letter_spellings(completion, reference):
    assert math_verify_reward(completion, reference) == 1.0
    assert math_verify_reward(completion.replace("C", "D").replace("c", "d"), reference) == 0.0


@pytest.mark.parametrize(("completion", "reference", "expected"), [
    ("The answer is 1.1e-20", "1e-20", 0.0),
    ("The answer is 1.000002e-20", "1e-20", 0.0),
    ("The answer is 1.000001e-20", "1e-20", 1.0),  # |a - b| = 1e-26 <= 1e-6 * 1.000001e-20
    ("The answer is 1.0000001e-20", "1e-20", 1.0),
    ("The answer is 1.0000000001e20", "1e20", 1.0),
    ("The answer is 1.00001e20", "1e20", 0.0),
    ("The answer is 100000000000000000001", "1e20", 0.0),  # both exact: no tolerance
    (r"$\boxed{\frac{1}{3^{41}}}$", r"\frac{1}{3^{40}}", 0.0),
    (r"$\boxed{0.00000001}$", r"0.00000002", 0.0),
    (r"$\boxed{-1.0000001}$", "-1", 1.0),
    (r"$\boxed{-1.0000001}$", "1", 0.0),
    (r"$\boxed{3.1415927}$", r"\pi", 1.0),
    (r"$\boxed{3.14}$", r"\pi", 0.0),
])
def test_math_verify_relative_tolerance(completion, reference, expected):
    assert math_verify_reward(completion, reference) == expected


def test_math_verify_rel_tol_param():
    assert math_verify_reward(r"$\boxed{1.0001}$", "1") == 0.0
    assert math_verify_reward(r"$\boxed{1.0001}$", "1", rel_tol=1e-3) == 1.0
    assert math_verify_reward(r"$\boxed{1.0000001}$", "1", rel_tol=0) == 0.0  # 0: decimals must be exact
    assert math_verify_reward(r"$\boxed{1.0}$", "1", rel_tol=0) == 1.0
    assert math_verify_reward(r"$\boxed{1001}$", "1000", rel_tol=0.01) == 0.0  # exact numbers: no tolerance


def test_math_verify_require_param():
    boxed, marked, unmarked = r"so $\boxed{5}$", "The answer is 5", "So it is 5"
    no_box, no_marker = Scored(0.0, "no \\boxed answer"), math_verify_reward(unmarked, "5", require="marked")
    assert isinstance(no_marker, Scored) and no_marker.value == 0.0 and "no marked final answer" in no_marker.reason
    for completion in (boxed, marked, unmarked):  # the default accepts every form
        assert math_verify_reward(completion, "5") == 1.0
        assert math_verify_reward(completion, "5", require="any") == 1.0
    assert math_verify_reward(boxed, "5", require="marked") == 1.0
    assert math_verify_reward(marked, "5", require="marked") == 1.0
    assert math_verify_reward(boxed, "5", require="boxed") == 1.0
    assert math_verify_reward(marked, "5", require="boxed") == no_box
    assert math_verify_reward(unmarked, "5", require="boxed") == no_box
    assert math_verify_reward("So it is (C)", "C", require="boxed") == no_box  # multiple choice too
    assert math_verify_reward(r"$\boxed{C}$", "C", require="boxed") == 1.0
    assert math_verify_reward(r"$\boxed{4}$", "5", require="boxed") == 0.0  # boxed but wrong: a plain 0.0


@pytest.mark.parametrize(("params", "message"), [
    ({"require": "box"}, "'require' must be one of"),
    ({"require": None}, "'require' must be one of"),
    ({"rel_tol": -1e-6}, r"'rel_tol' must be a number in \[0, 1\)"),
    ({"rel_tol": 1}, r"'rel_tol' must be a number in \[0, 1\)"),
    ({"rel_tol": float("nan")}, r"'rel_tol' must be a number in \[0, 1\)"),
    ({"rel_tol": "1e-6"}, r"'rel_tol' must be a number in \[0, 1\)"),
    ({"rel_tol": True}, r"'rel_tol' must be a number in \[0, 1\)"),
])
def test_math_verify_bad_params(params, message):
    with pytest.raises(ValueError, match=message):
        math_verify_reward(r"$\boxed{1}$", "1", **params)


def test_math_verify_params_are_keyword_only():
    with pytest.raises(TypeError):
        math_verify_reward(r"$\boxed{1}$", "1", "boxed")  # type: ignore[misc]


@pytest.mark.parametrize("reference", ["", "   ", "$$", r"\boxed{}"])
def test_math_verify_unparseable_reference_raises(reference):
    with pytest.raises(ValueError, match="reference answer"):
        math_verify_reward(r"$\boxed{1}$", reference)


@pytest.mark.parametrize("completion", [
    "", " \n\t ", WEIRD, '{"a": [1, 2', "[" * 100_000, "{" * 100_000, "$" * 100_000, "\\(" * 50_000, "1 " * 100_000,
    "\\boxed{" * 50_000, "\\boxed{1}" * 50_000, "answer is " * 50_000, "(A) " * 50_000, "x" * 1_000_000,
    "\\boxed{42", "The answer is \\boxed{4", "NaN", "9" * 10_000,  # an unclosed (truncated) box is no answer
])
def test_math_verify_adversarial_completions_score_zero(completion):
    start = time.perf_counter()
    assert math_verify_reward(completion, "42") == 0.0
    assert math_verify_reward(completion, "C") == 0.0
    assert time.perf_counter() - start < 20.0  # generous: shared CI cores; the point is no quadratic blow-up


@pytest.mark.parametrize("reference", ["hello world", "five", "  yes  ", r"\textbf{none}", "True"])
def test_math_verify_refuses_a_reference_that_is_words(reference):
    """math-verify reads "hello world" as a product of symbols, which no completion matches: every sample of the
    prompt would score 0 in silence. Words meant as the answer are written \\text{...} (kept: see the table)."""
    with pytest.raises(ValueError, match="is words, not maths"):
        math_verify_reward(r"The answer is $\boxed{5}$", reference)
    assert math_verify_reward(r"$\boxed{\text{yes}}$", r"\text{yes}") == 1.0
    assert math_verify_reward(r"$\boxed{2x}$", "2x") == 1.0
