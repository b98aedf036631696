"""Built-in rule-based reward functions, registered on import of :mod:`rlsys.rewards`."""

from __future__ import annotations

import re

from rlsys.rewards.registry import register_reward

_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() would also accept e.g. "²" or Arabic-Indic digits

# Delimiters that tell math-verify's LaTeX extractor where the answer is.
_LATEX_MARKERS = ("$", "\\boxed", "\\(", "\\[")


@register_reward("addition_exact")
def addition_exact(completion: str, reference: str) -> float:
    """1.0 if the whole completion (surrounding whitespace stripped) is the reference's integer, else 0.0.

    Strict by design for the synthetic addition task: both sides must be non-negative decimal integers made of
    ASCII digits only, so "12a", "", "1 2" or "-3" score 0.0. They are compared as integers, so leading zeros
    do not matter ("042" matches "42") -- the value is what the task asks for, not its spelling.
    """
    pred, gold = completion.strip(), reference.strip()
    if not (_DIGITS.fullmatch(pred) and _DIGITS.fullmatch(gold)):
        return 0.0
    return 1.0 if int(pred) == int(gold) else 0.0


@register_reward("math_verify")
def math_verify_reward(completion: str, reference: str) -> float:
    """1.0 if the completion's final answer is mathematically equivalent to the reference, else 0.0.

    Uses the math-verify package, which extracts the answer (preferring ``\\boxed{...}``) and compares symbolically,
    so "\\frac{1}{2}" matches "0.5" and "The answer is $\\boxed{42}$" matches "42". The reference is wrapped in
    "$...$" when it has no LaTeX delimiters, because bare LaTeX such as "2\\sqrt{2}" otherwise parses as just "2".
    Raises ValueError if the reference cannot be parsed at all: that is a data problem, not a wrong completion,
    and it should show up as a failed score rather than a silent 0.0.

    math-verify enforces its timeouts with signals, so this only works in a process's main thread; call it through
    :class:`rlsys.rewards.scoring.RewardScorer`, which runs it in a child process.
    """
    from math_verify import parse, verify  # imported here: keeps `import rlsys.rewards` light

    gold = reference.strip()
    parsed_gold = parse(gold) if any(m in gold for m in _LATEX_MARKERS) else parse(f"${gold}$") or parse(gold)
    if not parsed_gold:
        raise ValueError(f"math_verify could not parse the reference answer {reference!r}; fix the dataset entry")
    parsed_pred = parse(completion)
    if not parsed_pred:
        return 0.0
    return 1.0 if verify(parsed_gold, parsed_pred) else 0.0
