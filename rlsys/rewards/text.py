"""Rule-based rewards on plain text: exact/normalised answer matching, format checks and length shaping.

Every function is called as ``fn(completion, reference, **params)`` and returns a finite float. A malformed
completion never raises (it scores 0.0, or the worst penalty); a malformed reference or a bad parameter is a
dataset/config bug and raises ValueError naming the problem. Everything here runs in time linear in the length of
the completion (apart from a user-supplied regex in :func:`regex_format`), so multi-megabyte completions are cheap.
"""

from __future__ import annotations

import math
import re
import unicodedata

from rlsys.rewards.registry import register_reward

# A prefix that announces the answer, dropped by normalisation (matched after casefolding). The word boundary
# keeps "the answer isn't 5" intact.
_ANSWER_PREFIX = re.compile(r"(?:the answer is\b\s*:?|answer\s*:)\s*")
# A number written with comma thousands separators: 1-3 leading digits, then one or more ",ddd" groups, not inside
# a longer run of digits/commas ("1,2,3" and "1,000,00" are left alone). ASCII digits only.
_THOUSANDS = re.compile(r"(?<![0-9.,])[0-9]{1,3}(?:,[0-9]{3})+(?![0-9]|,[0-9])")
# A plain decimal number: optional sign, digits with an optional fractional part, or a bare fraction (".5").
# No exponents, no "inf"/"nan", ASCII digits only.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_SENTENCE_END = frozenset(".!?")
_FLAG_LETTERS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_UNITS = ("chars", "words")


def _require_reference(reference: str, fn_name: str) -> None:
    if not reference.strip():
        raise ValueError(f"{fn_name}: the reference answer is empty or whitespace only; fix the dataset entry")


@register_reward("exact_match")
def exact_match(completion: str, reference: str) -> float:
    """1.0 iff ``completion.strip() == reference.strip()`` (case- and character-exact), else 0.0.

    Raises ValueError for an empty/whitespace-only reference: it would reward empty completions.
    """
    _require_reference(reference, "exact_match")
    return 1.0 if completion.strip() == reference.strip() else 0.0


def _rstrip_sentence_end(s: str) -> str:
    # A manual scan, not re.sub(r"[\s.!?]+$"): that regex is quadratic on long whitespace runs.
    end = len(s)
    while end and (s[end - 1] in _SENTENCE_END or s[end - 1].isspace()):
        end -= 1
    return s[:end]


def normalize_answer(text: str) -> str:
    """The normal form :func:`normalized_match` compares. Steps, in order:

    1. Unicode NFKC (fullwidth "４２" -> "42", ligatures, non-breaking spaces -> spaces), then ``str.casefold()``.
    2. Strip surrounding whitespace; drop one leading "the answer is" (optionally followed by ":") or "answer:"
       prefix, e.g. "The answer is: 42" -> "42", "Answer : yes" -> "yes".
    3. Strip trailing sentence punctuation ``.``, ``!``, ``?`` (and whitespace between them): "42." -> "42".
    4. Collapse every run of whitespace to one space.
    5. Remove comma thousands separators in well-formed groups: "1,000,000" -> "1000000", "-12,345.6" ->
       "-12345.6"; "1,2,3" and "1,000,00" are left as they are.
    6. If the whole string is now a plain decimal number (optional sign, ASCII digits, optional fraction, no
       exponent), replace it by its canonical value: "0.50", ".5" and "+0.5" -> "0.5"; "-3.0" -> "-3";
       "007" -> "7"; "-0" -> "0". Numbers inside longer text are not canonicalised.
    """
    s = unicodedata.normalize("NFKC", text).casefold().strip()
    prefix = _ANSWER_PREFIX.match(s)
    if prefix:
        s = s[prefix.end() :]
    s = " ".join(_rstrip_sentence_end(s).split())
    s = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), s)
    if _PLAIN_NUMBER.fullmatch(s):
        s = _canonical_number(s)
    return s


def _canonical_number(s: str) -> str:
    # Exact string arithmetic rather than Decimal.normalize(), which rounds to the context's 28 digits.
    sign = "-" if s[0] == "-" else ""
    whole, _, frac = s.lstrip("+-").partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    if whole == "0" and not frac:
        return "0"
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def _normalized_equal(answer: str | None, reference: str, fn_name: str) -> float:
    """1.0 iff ``answer`` normalises to the reference's normal form; None (no answer found) scores 0.0. The
    reference is checked first, so a bad reference raises even when the completion has no answer."""
    gold = normalize_answer(reference)
    if not gold:
        raise ValueError(
            f"{fn_name}: the reference answer {reference[:200]!r} is empty after normalisation; fix the dataset entry"
        )
    return 1.0 if answer is not None and normalize_answer(answer) == gold else 0.0


@register_reward("normalized_match")
def normalized_match(completion: str, reference: str) -> float:
    """1.0 iff the completion and the reference are equal after :func:`normalize_answer`, else 0.0.

    See :func:`normalize_answer` for the exact steps (NFKC + casefold, answer-prefix and trailing .!? removal,
    whitespace collapsing, thousands separators, numeric equivalence of plain decimals). Raises ValueError if the
    reference normalises to the empty string.
    """
    return _normalized_equal(completion, reference, "normalized_match")


def _int_param(fn_name: str, name: str, value: object, minimum: int) -> int:
    if value is None:
        raise ValueError(f"{fn_name}: parameter {name!r} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{fn_name}: parameter {name!r} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{fn_name}: parameter {name!r} must be >= {minimum}, got {value!r}")
    return value


def _check_unit(fn_name: str, unit: object) -> None:
    if unit not in _UNITS:
        raise ValueError(f"{fn_name}: parameter 'unit' must be one of {_UNITS}, got {unit!r}")


def _text_length(fn_name: str, completion: str, unit: str) -> int:
    _check_unit(fn_name, unit)
    return len(completion) if unit == "chars" else len(completion.split())


def _regex_params(pattern: object, flags: object, max_chars: object) -> tuple[re.Pattern, int]:
    """regex_format's params checked: (compiled pattern, max_chars); ValueError names the bad one."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"regex_format: parameter 'pattern' must be a non-empty regex string, got {pattern!r}")
    if not isinstance(flags, str):
        raise ValueError(f"regex_format: parameter 'flags' must be a string of letters among 'imsx', got {flags!r}")
    re_flags = 0
    for letter in flags:
        if letter not in _FLAG_LETTERS:
            raise ValueError(f"regex_format: unknown flag letter {letter!r} in flags={flags!r}; use letters 'imsx'")
        re_flags |= _FLAG_LETTERS[letter]
    max_chars = _int_param("regex_format", "max_chars", max_chars, 1)
    try:
        return re.compile(pattern, re_flags), max_chars  # re caches compiled patterns
    except re.error as e:
        raise ValueError(f"regex_format: invalid regex pattern {pattern!r}: {e}") from e


@register_reward("regex_format", check_params=_regex_params)
def regex_format(completion: str, reference: str, *, pattern: str, flags: str = "s",
                 max_chars: int = 100_000) -> float:
    """1.0 iff ``re.fullmatch(pattern, completion.strip(), flags)`` matches, else 0.0. The reference is ignored.

    ``flags`` is a string of letters: ``i`` IGNORECASE, ``m`` MULTILINE, ``s`` DOTALL, ``x`` VERBOSE ("" for none).
    Completions longer than ``max_chars`` characters (before stripping) score 0.0 without being matched, to bound
    the cost of backtracking; a pattern that backtracks catastrophically on shorter inputs is still the config's
    problem (the scorer's per-item timeout is the last line of defence).

    Raises ValueError for an empty or non-string ``pattern``, a pattern that does not compile (the message names
    the pattern), an unknown flag letter, or ``max_chars`` that is not a positive int.
    """
    compiled, max_chars = _regex_params(pattern, flags, max_chars)
    if len(completion) > max_chars:
        return 0.0
    return 1.0 if compiled.fullmatch(completion.strip()) else 0.0


_THINK_ANSWER = re.compile(r"\s*<think>(.*)</think>\s*<answer>(.*)</answer>\s*", re.DOTALL)
_FORMAT_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@register_reward("think_answer_format")
def think_answer_format(completion: str, reference: str) -> float:
    """1.0 iff the completion is exactly ``<think>...</think>`` then ``<answer>...</answer>``, else 0.0.

    Only whitespace may come before, between and after the two blocks; each of the four tags (lowercase, no
    attributes) must occur exactly once; the think block may be empty but the answer must contain a
    non-whitespace character. The reference is ignored.
    """
    if any(completion.count(tag) != 1 for tag in _FORMAT_TAGS):
        return 0.0
    match = _THINK_ANSWER.fullmatch(completion)
    return 1.0 if match and match.group(2).strip() else 0.0


@register_reward("answer_tag_match")
def answer_tag_match(completion: str, reference: str) -> float:
    """:func:`normalized_match` of the content of the completion's last ``<answer>...</answer>`` block.

    The last block is the last ``</answer>`` and the last ``<answer>`` before it; an unclosed ``<answer>`` (say,
    a truncated completion) or no tag at all scores 0.0. The reference is the bare answer (no tags). Raises
    ValueError if the reference normalises to the empty string.
    """
    end = completion.rfind("</answer>")
    start = completion.rfind("<answer>", 0, end) if end >= 0 else -1
    answer = completion[start + len("<answer>") : end] if start >= 0 else None
    return _normalized_equal(answer, reference, "answer_tag_match")


def _length_params(target: object, tolerance: object, scale: object, unit: object) -> tuple[int, int, float]:
    """length_penalty's params checked: (target, tolerance, scale); ValueError names the bad one."""
    target = _int_param("length_penalty", "target", target, 0)
    tolerance = _int_param("length_penalty", "tolerance", tolerance, 0)
    if scale is None:
        scale = target
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(
            f"length_penalty: parameter 'scale' must be a finite number > 0 (it defaults to target), got {scale!r}"
        )
    _check_unit("length_penalty", unit)
    return target, tolerance, scale


@register_reward("length_penalty", check_params=_length_params)
def length_penalty(completion: str, reference: str, *, target: int, tolerance: int = 0,
                   scale: float | None = None, unit: str = "chars") -> float:
    """Shaping penalty in [-1, 0] for a completion length away from ``target``. The reference is ignored.

    ``-min(1, max(0, |length - target| - tolerance) / scale)``, where length is ``len(completion)`` for
    ``unit="chars"`` or the number of whitespace-separated words for ``unit="words"``, and ``scale`` defaults to
    ``target``. So lengths within ``tolerance`` of ``target`` get 0, and the penalty grows linearly to -1 at
    ``tolerance + scale`` away from it (shorter or longer alike).

    Raises ValueError if ``target`` is missing or not an int >= 0, ``tolerance`` is not an int >= 0, ``scale``
    is not a finite number > 0 (with ``target=0`` you must pass ``scale``), or ``unit`` is unknown.
    """
    target, tolerance, scale = _length_params(target, tolerance, scale, unit)
    length = _text_length("length_penalty", completion, unit)
    excess = max(0, abs(length - target) - tolerance)
    return -min(1.0, excess / scale) if excess else 0.0  # not -0.0


def _overlong_params(max_len: object, buffer: object, unit: object) -> tuple[int, int]:
    """overlong_penalty's params checked: (max_len, buffer); ValueError names the bad one."""
    max_len = _int_param("overlong_penalty", "max_len", max_len, 1)
    buffer = _int_param("overlong_penalty", "buffer", buffer, 1)
    if buffer > max_len:
        raise ValueError(f"overlong_penalty: parameter 'buffer' ({buffer}) must be <= 'max_len' ({max_len})")
    _check_unit("overlong_penalty", unit)
    return max_len, buffer


@register_reward("overlong_penalty", check_params=_overlong_params)
def overlong_penalty(completion: str, reference: str, *, max_len: int, buffer: int,
                     unit: str = "chars") -> float:
    """DAPO's soft overlong punishment, in [-1, 0], on the completion's length. The reference is ignored.

    With length ``L`` (``len(completion)`` for ``unit="chars"``, whitespace-separated words for ``"words"``)::

        0                              if L <= max_len - buffer
        (max_len - buffer - L) / buffer  if max_len - buffer < L <= max_len   (linear from 0 down to -1)
        -1                             if L > max_len

    Raises ValueError if ``max_len`` or ``buffer`` is missing, not an int, or <= 0, if ``buffer > max_len``
    (the penalty would turn positive for short completions), or if ``unit`` is unknown.
    """
    max_len, buffer = _overlong_params(max_len, buffer, unit)
    length = _text_length("overlong_penalty", completion, unit)
    threshold = max_len - buffer
    if length <= threshold:
        return 0.0
    if length <= max_len:
        return (threshold - length) / buffer
    return -1.0
