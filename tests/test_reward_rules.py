"""Unit tests for the text and structured rule-based rewards (rlsys.rewards.text, rlsys.rewards.structured)."""

from __future__ import annotations

import json
import math
import time

import pytest

from rlsys.rewards import structured, text
from rlsys.rewards.registry import get_reward_fn
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
    ({}, "'pattern' must be a non-empty"),
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
    ({}, "'target' is required"),
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
    ({}, "'max_len' is required"),
    ({"max_len": 100}, "'buffer' is required"),
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
