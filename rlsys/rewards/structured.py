"""Rewards for structured output: JSON documents (optionally checked against a JSON schema) and tool calls.

Called as ``fn(completion, reference, **params)``; the reference is a JSON string. Completions are parsed as strict
JSON (no NaN/Infinity), and anything malformed about them -- unparsable text, wrong types, nesting deep enough to
exhaust the recursion limit -- scores 0.0 (or loses the affected credit) instead of raising. A reference that is
not valid JSON, has the wrong shape, or carries an invalid schema raises ValueError naming the problem.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from rlsys.rewards.registry import register_reward

_THIRD = 1.0 / 3.0
_MISSING = object()  # a value absent from the completion (missing key, list too short, wrong container type)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str) -> Any:
    """Strict ``json.loads``: NaN, Infinity and -Infinity are rejected (they are not JSON)."""
    return json.loads(text, parse_constant=_reject_constant)


def _unwrap_fence(text: str) -> str:
    """The body of a Markdown code fence if the (stripped) text is exactly one fenced block, else the text.

    The fence is ```` ``` ```` with an optional ``json`` language tag (any case). A JSON document cannot start with
    "json", so dropping that prefix cannot eat content.
    """
    if len(text) >= 6 and text.startswith("```") and text.endswith("```"):
        body = text[3:-3]
        if body[:4].lower() == "json":
            body = body[4:]
        return body.strip()
    return text


def _parse_completion_json(completion: str) -> Any:
    """The completion's JSON value, or _MISSING if it does not parse. May raise RecursionError (callers catch).

    The stripped completion must be a JSON document, or exactly one fenced block containing one.
    """
    text = _unwrap_fence(completion.strip())
    try:
        return _loads(text)
    except ValueError:  # JSONDecodeError, NaN/Infinity, and ints over sys.int_max_str_digits digits
        return _MISSING


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _scalars_equal(a: object, b: object, strip_strings: bool) -> bool:
    """Equality of two JSON scalars: bools only equal bools (``true != 1``), numbers compare as floats (``1 == 1.0``),
    strings compare exactly or, with ``strip_strings``, after stripping surrounding whitespace."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        try:
            return float(a) == float(b)  # type: ignore[arg-type]
        except OverflowError:  # an int beyond float range: compare exactly
            return a == b
    if isinstance(a, str) and isinstance(b, str) and strip_strings:
        return a.strip() == b.strip()
    return type(a) is type(b) and a == b


def _values_equal(expected: object, actual: object, strip_strings: bool = False) -> bool:
    """Deep equality of JSON values with :func:`_scalars_equal` at the leaves (iterative: no recursion limit)."""
    stack = [(expected, actual)]
    while stack:
        a, b = stack.pop()
        if isinstance(a, dict):
            if not isinstance(b, dict) or a.keys() != b.keys():
                return False
            stack.extend((a[k], b[k]) for k in a)
        elif isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                return False
            stack.extend(zip(a, b))
        elif isinstance(b, (dict, list)) or not _scalars_equal(a, b, strip_strings):
            return False
    return True


def _leaf_match_fraction(expected: object, actual: object) -> float:
    """Fraction of ``expected``'s leaves that ``actual`` reproduces.

    Dicts recurse by key and lists by position (a missing key or position, or a value of the wrong container type,
    loses every leaf below it); extra keys or elements in ``actual`` are ignored. A leaf is a scalar or an empty
    dict/list; leaves compare with :func:`_values_equal`. Iterative, so deep nesting cannot hit the recursion limit.
    """
    total = matched = 0
    stack = [(expected, actual)]
    while stack:
        exp, act = stack.pop()
        if isinstance(exp, dict) and exp:
            has = isinstance(act, dict)
            stack.extend((v, act.get(k, _MISSING) if has else _MISSING) for k, v in exp.items())
        elif isinstance(exp, list) and exp:
            has = isinstance(act, list)
            stack.extend((v, act[i] if has and i < len(act) else _MISSING) for i, v in enumerate(exp))
        else:
            total += 1
            if act is not _MISSING and _values_equal(exp, act):
                matched += 1
    return matched / total


def _short(text: str, limit: int = 200) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def _parse_reference(fn_name: str, reference: str) -> Any:
    try:
        return _loads(reference)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{fn_name}: the reference {_short(reference)} is not valid JSON: {e}") from e


@lru_cache(maxsize=256)
def _json_reference(reference: str) -> tuple[Any, bool, Any]:
    """(validator or None, has_expected, expected) for a json_reward reference; cached because building a validator
    (and checking the schema) costs more than scoring. Raises ValueError for a bad reference."""
    parsed = _parse_reference("json_reward", reference)
    if isinstance(parsed, dict) and ("schema" in parsed or "expected" in parsed):
        extra = sorted(set(parsed) - {"schema", "expected"})
        if extra:
            raise ValueError(
                f"json_reward: the reference {_short(reference)} has 'schema'/'expected' and also the keys {extra}; "
                "a wrapper may only have 'schema' and 'expected' (to expect an object with such keys, put it "
                "under 'expected')"
            )
        has_expected = "expected" in parsed
        expected = parsed.get("expected")
        validator = _make_validator(parsed["schema"]) if "schema" in parsed else None
        return validator, has_expected, expected
    return None, True, parsed


def _make_validator(schema: Any) -> Any:
    import jsonschema
    from jsonschema.validators import validator_for
    from jsonschema_specifications import REGISTRY  # the meta-schemas only: no retrieval of remote $refs

    if not isinstance(schema, (dict, bool)):
        raise ValueError(f"json_reward: invalid JSON schema in the reference: a schema is an object or a boolean, "
                         f"got {type(schema).__name__}")
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ValueError(f"json_reward: invalid JSON schema in the reference: {e.message}") from e
    except RecursionError as e:
        raise ValueError("json_reward: invalid JSON schema in the reference: nested too deeply to check") from e
    return cls(schema, registry=REGISTRY)


def _schema_valid(validator: Any, instance: Any) -> bool:
    import referencing.exceptions

    try:
        return bool(validator.is_valid(instance))
    except referencing.exceptions.Unresolvable as e:
        raise ValueError(f"json_reward: the reference's JSON schema has an unresolvable $ref: {e}") from e


@register_reward("json_reward")
def json_reward(completion: str, reference: str) -> float:
    """Partial credit in [0, 1] for a JSON completion, in three levels worth 1/3 each.

    The reference is a JSON string: either a wrapper ``{"schema": <JSON schema>, "expected": <value>}`` with at
    least one of the two keys and no other key, or (a value that is not such an object) the expected value itself.

    1. Parse (+1/3): the stripped completion parses as strict JSON, or is exactly one Markdown fenced block
       (```` ```json ```` or ```` ``` ````) whose body does. Otherwise the total is 0.0.
    2. Schema (+1/3): the value validates against the schema (dialect from ``$schema``, default 2020-12; formats
       are not checked; remote ``$ref`` s are not fetched). Granted when the reference has no schema.
    3. Content (+1/3 x fraction): the fraction of the expected value's leaves that the completion reproduces --
       dicts by key, lists by position, extra keys/elements ignored, leaves are scalars or empty containers,
       numbers compare as floats (``1 == 1.0``) and bools only equal bools. Without "expected" this level is
       granted iff the schema level is. The content level does not depend on the schema level otherwise.

    Completions nested deeply enough to raise RecursionError score 0.0. Raises ValueError for a reference that is
    not JSON, a wrapper with extra keys, an invalid schema, or a ``$ref`` that cannot be resolved locally.
    """
    validator, has_expected, expected = _json_reference(reference)
    try:
        value = _parse_completion_json(completion)
        if value is _MISSING:
            return 0.0
        schema_ok = validator is None or _schema_valid(validator, value)
        content = _leaf_match_fraction(expected, value) if has_expected else float(schema_ok)
    except RecursionError:
        return 0.0
    return _THIRD + _THIRD * float(schema_ok) + _THIRD * content


_TOOL_OPEN, _TOOL_CLOSE = "<tool_call>", "</tool_call>"


def _decode_arguments(arguments: Any) -> dict | None:
    """A call's arguments as a dict: a dict as is, a JSON string encoding an object decoded; else None."""
    if isinstance(arguments, str):
        try:
            arguments = _loads(arguments)
        except (ValueError, RecursionError):  # a nesting bomb in the string is just undecodable arguments
            return None
    return arguments if isinstance(arguments, dict) else None


@lru_cache(maxsize=256)
def _tool_reference(reference: str) -> tuple[str, dict]:
    parsed = _parse_reference("tool_call_reward", reference)
    if not isinstance(parsed, dict):
        raise ValueError(f"tool_call_reward: the reference {_short(reference)} must be a JSON object "
                         f'{{"name": ..., "arguments": {{...}}}}, got {type(parsed).__name__}')
    name = parsed.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"tool_call_reward: the reference {_short(reference)} needs a non-empty string 'name'")
    arguments = _decode_arguments(parsed.get("arguments", {}))
    if arguments is None:
        raise ValueError(f"tool_call_reward: the reference {_short(reference)} has 'arguments' that are not a JSON "
                         "object (or a string encoding one)")
    return name, arguments


def _parse_tool_call(completion: str) -> tuple[Any, dict | None] | None:
    """(name, arguments or None) from the completion, or None if it is not a JSON object. May raise RecursionError.

    The stripped completion is a JSON object, a fenced block holding one, or exactly one ``<tool_call>`` block
    holding either of those.
    """
    text = completion.strip()
    if text.startswith(_TOOL_OPEN) and text.endswith(_TOOL_CLOSE) and text.count(_TOOL_OPEN) == 1 \
            and text.count(_TOOL_CLOSE) == 1:
        text = text[len(_TOOL_OPEN) : -len(_TOOL_CLOSE)].strip()
    call = _parse_completion_json(text)
    if not isinstance(call, dict):
        return None
    return call.get("name"), _decode_arguments(call.get("arguments", {}))


@register_reward("tool_call_reward")
def tool_call_reward(completion: str, reference: str) -> float:
    """Partial credit in [0, 1] for a tool call ``{"name": str, "arguments": {...}}``, three parts of 1/3 each.

    The completion is a JSON object, optionally as a Markdown fenced block and/or wrapped in one
    ``<tool_call>...</tool_call>`` (nothing else may surround it). ``arguments`` may be an object or, as in
    OpenAI's format, a string holding JSON of an object; a missing ``arguments`` means ``{}``.

    - Name (1/3): the names are equal (exact, case-sensitive). A wrong or missing name makes the total 0.0.
    - Keys (1/3 x Jaccard): |ref keys & completion keys| / |ref keys | completion keys| (1 when both are empty).
    - Values (1/3 x fraction): the fraction of the reference's arguments whose value equals the completion's
      (deep equality; numbers as floats, ``true != 1``, strings compared after stripping); 1 when the reference
      has no arguments.

    Arguments that are not an object (or undecodable) earn no key or value credit. An unparsable or non-object
    completion scores 0.0, as does one nested deep enough to raise RecursionError. Raises ValueError for a
    reference that is not such a JSON object with a non-empty string name.
    """
    ref_name, ref_args = _tool_reference(reference)
    try:
        parsed = _parse_tool_call(completion)
        if parsed is None or parsed[0] != ref_name:
            return 0.0
        args = parsed[1]
        if args is None:
            return _THIRD
        union = ref_args.keys() | args.keys()
        keys = len(ref_args.keys() & args.keys()) / len(union) if union else 1.0
        if ref_args:
            same = sum(k in args and _values_equal(v, args[k], strip_strings=True) for k, v in ref_args.items())
            values = same / len(ref_args)
        else:
            values = 1.0
    except RecursionError:
        return 0.0
    return _THIRD + _THIRD * keys + _THIRD * values
