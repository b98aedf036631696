"""Built-in rule-based reward functions, registered on import of :mod:`rlsys.rewards`."""

from __future__ import annotations

import re

from rlsys.rewards.registry import Scored, register_reward

_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() would also accept e.g. "²" or Arabic-Indic digits


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


# ---------------------------------------------------------------- math_verify

_REQUIRE = ("any", "marked", "boxed")

# A phrase announcing the final answer: "answer is", "answers are", "Answer:", "answer =", "the answer to part (b)
# is", "**Final Answer:**", and GSM8K's "####". The look-aheads keep "the answer isn't 5" from counting.
_ANSWER_MARKER = re.compile(
    r"(?i:\banswers?\b(?:\s+to\b[^.\n:=]{0,40}?)?[\s*]*(?::|=|\bis(?![\w'’])|\bare(?![\w'’])))[\s*]*:?|####"
)
_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE = re.compile(r"[{}]")
_BOX_WINDOW = 1_000  # chars before the last box in which boxes listed with it are looked for
_MAX_ANSWER_CHARS = 2_000  # a longer "final answer" is not an answer: it is not parsed and scores 0.0

# Openers of delimited LaTeX ("$$", "\[", "\(", "$") and their closers. "\$" is an escaped (currency) dollar.
_ENV_OPEN = re.compile(r"(?<!\\)(?:\$\$|\\\[|\\\(|\$)")
_ENV_CLOSE = {"$$": re.compile(r"(?<!\\)\$\$"), "\\[": re.compile(r"\\\]"), "\\(": re.compile(r"\\\)"),
              "$": re.compile(r"(?<!\\)\$")}
# Maths written outside delimiters: a maximal run of these tokens. Words of two or more letters end a run (so
# "250 dollars" gives "250"), as do a newline and a "." / ":" that ends a sentence; single letters (not in
# words such as "it's") are variables.
# A brace group (three levels deep at most) is one token whatever it holds, so "\frac{ab}{2}" stays whole.
_BRACES = r"\{(?:[^{}\n]|\{(?:[^{}\n]|\{[^{}\n]*\})*\})*\}"
_MATH_RUN = re.compile(
    rf"(?:\\[A-Za-z]+\*?|\\[^A-Za-z\s]|{_BRACES}|[0-9]|(?i:percent|pct)\b|(?<![A-Za-z'’])[A-Za-z](?![A-Za-z'’])"
    r"|[.:](?![\s]|$)|[+\-*/^_=<>()\[\]|!,%$ \t×÷·−±√π∞≤≥≠°])+"
)
_HAS_MATH = re.compile(r"[0-9]|\\(?!(?:text\w*|math(?:rm|bf|it)|mbox)\b)[A-Za-z]")
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_TEXT_GROUP = re.compile(r"\\(?:text\w*|math(?:rm|bf|it)|mbox|operatorname)\s*\{[^{}]*\}")
# Normalisation of an answer before math-verify parses it.
_E_NOTATION = re.compile(r"(?<![A-Za-z0-9.])([0-9]+(?:\.[0-9]+)?)[eE]([+-]?[0-9]+)(?![0-9A-Za-z])")
_CURRENCY = re.compile(
    r"\\\$|\$|[€£¥₹₩₽]|\\(?:euro|pounds|yen|textdollar|textsterling|texteuro)\b"
    r"|(?i:(?<![A-Za-z])(?:dollars?|usd|euros?|eur|gbp|yen|rupees?|inr)(?![A-Za-z]))"
)
_TRAILING_WORDS = re.compile(r"(?<=[0-9})])\s+[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*\s*\.?\s*$")
_UNICODE_MATH = {"−": "-", "×": r"\times ", "÷": r"\div ", "·": r"\cdot ", "π": r"\pi ", "√": r"\sqrt",
                 "∞": r"\infty ", "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne ", "±": r"\pm ", "°": r"^{\circ}"}
# Multiple-choice letters. _MC_STRIP drops wrappers ("$", "\text{", "**", braces) before the patterns below look.
_MC_STRIP = re.compile(r"\\(?:text\w*|math(?:rm|bf|it)|mbox)\s*|\\[()\[\]]|[${}*]")
_MC_REFERENCE = re.compile(r"(?:(?i:option|choice)\s+)?(?:[(\[]([A-Z])[)\]](?:\s.*)?|([A-Z])\)?\.?)", re.S)
_MC_LEADING = re.compile(r"[\s:]*(?:(?i:option|choice)\s+)?(?:[(\[]([A-Z])[)\]]|([A-Z])(?:\)|(?![A-Za-z0-9'’])))")
_MC_ALONE = re.compile(r"[\s:]*(?:(?i:option|choice)\s+)?[(\[]?([A-Za-z])[)\]]?[\s.]*")
_MC_OPTION = re.compile(r"(?<![A-Za-z0-9_\\])[(\[]([A-Z])[)\]]|(?<![A-Za-z0-9_\\(\[])([A-Z])\)")


def _check_math_verify_params(require: object, rel_tol: object) -> float:
    if require not in _REQUIRE:
        raise ValueError(f"math_verify: parameter 'require' must be one of {_REQUIRE}, got {require!r}")
    if isinstance(rel_tol, bool) or not isinstance(rel_tol, (int, float)) or not 0 <= rel_tol < 1:
        raise ValueError(f"math_verify: parameter 'rel_tol' must be a number in [0, 1), got {rel_tol!r}")
    return float(rel_tol)


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``/``\\fbox{...}``, or None if there is none. math-verify's own extractor
    does the work (it also joins boxes listed together: "\\boxed{1} and \\boxed{2}" -> "1,2"); it is given only the
    text from a little before the last box, as it rescans the text before each box it finds. A last box that is
    never closed (a truncated completion) or has no braces gives "": there is no final answer."""
    last = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    box = _BOXED.match(text, last) if last >= 0 else None
    if box is None:
        return None
    if text[box.end() :].lstrip()[:1] != "{":
        return ""
    depth = 0
    for brace in _BRACE.finditer(text, box.end()):
        depth += 1 if brace.group() == "{" else -1
        if depth == 0:
            break
    if depth:
        return ""
    from latex2sympy2_extended.math_normalization import extract_boxed_content

    return extract_boxed_content(text[max(0, last - _BOX_WINDOW) :], mode="last")


def _env_end(text: str, m: re.Match[str], no_close: dict[str, int]) -> tuple[int, int] | None:
    """(content end, env end) of the delimited maths opened at ``m``, or None if it is not one (no closer, or a
    lone "$" that is a currency sign: "$250 and $300" is prose, not maths)."""
    opener = m.group()
    if no_close.get(opener, len(text) + 1) <= m.end():
        return None  # already known: no closer anywhere after here
    close = _ENV_CLOSE[opener].search(text, m.end())
    if close is None:
        no_close[opener] = m.end()
        return None
    content = text[m.end() : close.start()]
    if opener == "$" and (
        "\n" in content or not content.strip()
        or (content.lstrip()[:1].isdigit() and _PROSE_WORD.search(_TEXT_GROUP.sub(" ", content)))
    ):
        return None
    return close.start(), close.end()


def _math_spans(text: str):
    """Yield ``(start, end, latex)`` for each piece of maths in ``text``, in order: the content of each delimited
    environment ($...$, $$...$$, \\(...\\), \\[...\\]) and each undelimited run of maths between them."""
    no_close: dict[str, int] = {}
    bare_start = pos = 0
    while (m := _ENV_OPEN.search(text, pos)) is not None:
        env = _env_end(text, m, no_close)
        if env is None:
            pos = m.end()
            continue
        yield from _bare_math(text, bare_start, m.start())
        yield m.start(), env[1], text[m.end() : env[0]]
        bare_start = pos = env[1]
    yield from _bare_math(text, bare_start, len(text))


def _bare_math(text: str, start: int, end: int):
    for run in _MATH_RUN.finditer(text, start, end):
        latex = run.group()
        latex = _trim_run(latex) if len(latex) <= _MAX_ANSWER_CHARS else latex  # too long: rejected when parsed
        if latex and _HAS_MATH.search(latex):
            yield run.start(), run.end(), latex


def _trim_run(s: str) -> str:
    """Strip what surrounds a run of maths in prose: spaces, sentence punctuation, unbalanced brackets."""
    while True:
        t = s.strip(" \t,.:;=*")
        if t.startswith((")", "]")) or (t.startswith(("(", "[")) and t.count("(") + t.count("[") >
                                                                        t.count(")") + t.count("]")):
            t = t[1:]
        if t.endswith(("(", "[")) or (t.endswith((")", "]")) and t.count(")") + t.count("]") >
                                                                  t.count("(") + t.count("[")):
            t = t[:-1]
        if t == s:
            return s
        s = t


def _normalise_answer(latex: str) -> str:
    """Make an answer's spelling comparable: unicode maths signs to LaTeX, "1e-20" to "1\\times10^{-20}", currency
    signs and words dropped ("\\$250", "$250", "250 dollars" -> "250"), "%" escaped, trailing unit words dropped
    ("5 cm" -> "5"; math-verify drops known units and a trailing \\text{...} itself), trailing full stop dropped."""
    for sign, tex in _UNICODE_MATH.items():
        latex = latex.replace(sign, tex)
    latex = _E_NOTATION.sub(r"\1\\times10^{\2}", latex)
    latex = _CURRENCY.sub(" ", latex)
    latex = re.sub(r"(?<!\\)%", r"\\%", latex)
    latex = _TRAILING_WORDS.sub("", latex)
    return " ".join(latex.split()).rstrip(" .\\")


def _parse_answer(latex: str) -> list:
    """math-verify's parse of ``latex`` as ONE LaTeX expression (wrapped in $...$, so "2 + \\sqrt{3}" is 2+sqrt(3),
    not its leading 2); [] if there is nothing to parse."""
    from math_verify import LatexExtractionConfig, parse

    latex = _normalise_answer(latex) if len(latex) <= _MAX_ANSWER_CHARS else ""
    if not latex:
        return []
    return parse(f"${latex}$", extraction_config=[LatexExtractionConfig()])


def _final_answer(completion: str) -> tuple[str, str]:
    """(kind, region): ("boxed", the last box's content), ("marker", the text after the last answer marker),
    ("last", the whole completion) -- see :func:`math_verify_reward`."""
    boxed = _last_boxed(completion)
    if boxed is not None:
        return "boxed", boxed
    marker = None
    for marker in _ANSWER_MARKER.finditer(completion):
        pass
    if marker is not None:
        return "marker", completion[marker.end() :]
    return "last", completion


def _first_line_end(region: str) -> int:
    """Where the first non-empty line of ``region`` ends."""
    end = region.find("\n", len(region) - len(region.lstrip()))
    return len(region) if end < 0 else end


def _math_answer(kind: str, region: str) -> str | None:
    """The LaTeX of the final answer in ``region`` (see :func:`_final_answer`), or None if there is none."""
    if kind == "boxed":
        return region
    if kind == "marker":  # the first piece of maths, if it begins on the marker's line (or the next non-empty one)
        first = next(_math_spans(region), None)
        return first[2] if first is not None and first[0] < _first_line_end(region) else None
    last = None
    for last in _math_spans(region):
        pass
    return last[2] if last is not None else None


def _mc_letter(kind: str, region: str) -> str | None:
    """The option letter a completion answers with, read from its final-answer region (None if there is none)."""
    if kind != "last":
        if kind == "marker":
            region = region[: _first_line_end(region)]
        region = _MC_STRIP.sub("", region)
        alone = _MC_ALONE.fullmatch(region)  # a letter that is the whole answer may be lower case: "\boxed{c}"
        if alone:
            return alone.group(1).upper()
        m = _MC_LEADING.match(region)
        return (m.group(1) or m.group(2)) if m else None
    text = _MC_STRIP.sub("", region)
    last = None
    for last in _MC_OPTION.finditer(text):
        pass
    if last is not None:
        return last.group(1) or last.group(2)
    tail = text.rstrip(" \t\r\n.!")
    if tail[-1:].isascii() and tail[-1:].isupper() and (len(tail) == 1 or not tail[-2].isalnum()):
        return tail[-1]  # a bare capital letter as the completion's last word: "... so it is C."
    return None


def _reference_answer(reference: str) -> tuple[str | None, list]:
    """(option letter, []) for a multiple-choice reference such as "C", "(C)" or "\\text{(C)}"; else (None, the
    parsed reference). Raises ValueError if the reference cannot be parsed."""
    ref = reference.strip()
    boxed = _last_boxed(ref)
    if boxed is not None:
        ref = boxed
    else:
        for opener, closer in (("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)")):
            inner = ref[len(opener) : -len(closer)]
            if len(ref) > len(opener) + len(closer) and ref.startswith(opener) and ref.endswith(closer) and (
                    "$" not in inner.replace("\\$", "")):
                ref = inner
                break
    mc = _MC_REFERENCE.fullmatch(_MC_STRIP.sub("", ref).strip())
    if mc:
        return mc.group(1) or mc.group(2), []
    if not re.search(r"\d", ref) and _PROSE_WORD.search(_LATEX_COMMAND.sub(" ", _LATEX_TEXT.sub(" ", ref))):
        # math-verify would read "hello world" as the product of nine symbols and score 0 against every completion
        # (text meant as an answer is written \text{Monday}, which math-verify compares as text)
        raise ValueError(f"math_verify's reference answer {reference!r} is words, not maths (no number, and a word "
                         "of three or more letters outside \\text{...}); fix the dataset entry, or score text with "
                         "exact_match")
    parsed = _parse_answer(ref)
    if not parsed:
        raise ValueError(f"math_verify could not parse the reference answer {reference!r}; fix the dataset entry")
    return None, parsed


_LATEX_TEXT = re.compile(r"\\text\{[^{}]*\}")  # an answer meant as text: math-verify compares it as such
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")  # \frac, \pi, \infty: not words
_PROSE_WORD = re.compile(r"[A-Za-z]{3,}")


def _exact(expr):
    """``expr`` with each decimal replaced by the exact rational it spells (0.333333 -> 333333/1000000)."""
    from sympy import Float, Rational

    try:
        floats = expr.atoms(Float)
        return expr.xreplace({f: Rational(str(f)) for f in floats}) if floats else expr
    except Exception:  # an object sympy cannot rebuild: compare it as it is
        return expr


def _as_number(expr):
    """``expr`` if it is one closed-form number (no variables; not a set, tuple, matrix or relation), else None."""
    from sympy import Expr, MatrixBase, MatrixExpr

    if isinstance(expr, Expr) and not isinstance(expr, (MatrixBase, MatrixExpr)) and not expr.free_symbols:
        return expr
    return None


def _numbers_equal(gold, pred, rel_tol: float) -> bool:
    """Two numbers: within ``rel_tol`` of each other, relatively, when either is written as a decimal; exactly equal
    otherwise. A percentage "x%" matches both x and x/100, as in math-verify."""
    from math_verify.grader import get_pct_val
    from sympy import Float, Rational, nan, simplify, zoo

    tol = Rational(repr(rel_tol)) if gold.has(Float) or pred.has(Float) else 0

    def values(x):
        raw = get_pct_val(x)
        return [_exact(x).doit()] + ([_exact(raw).doit()] if raw is not None else [])

    for a in values(gold):
        for b in values(pred):
            if a.has(nan, zoo) or b.has(nan, zoo):
                continue
            if a == b:
                return True
            if tol == 0:
                zero = (a - b).is_zero
                if zero is None:
                    zero = simplify(a - b).is_zero
                if zero:
                    return True
                continue
            if a.is_Rational and b.is_Rational:
                if abs(a - b) <= tol * max(abs(a), abs(b)):
                    return True
                continue
            av, bv = a.evalf(50), b.evalf(50)
            if av.is_finite and bv.is_finite and abs(av - bv) <= tol * max(abs(av), abs(bv)):
                return True
    return False


def _same_answer(gold, pred, rel_tol: float) -> bool:
    """math-verify's equivalence of one parsed reference item and one parsed answer item, with numbers compared by
    :func:`_numbers_equal` (relative tolerance) instead of math-verify's absolute rounding."""
    from math_verify import verify
    from math_verify.errors import TimeoutException
    from math_verify.grader import is_assignment_relation, is_equation, take_last_relation
    from math_verify.utils import timeout

    if isinstance(gold, str) or isinstance(pred, str):
        return isinstance(gold, str) and isinstance(pred, str) and verify(gold, pred)
    # As math-verify does: an equation answers a plain reference by its last right-hand side ("x = 5" vs 5), and
    # an assignment reference ("x = 5") is answered by a plain value.
    g, p = gold, pred
    if is_equation(p) and not is_equation(g):
        p = take_last_relation(p).rhs
    elif is_assignment_relation(g) and not is_equation(p):
        g = take_last_relation(g).rhs
    g_num, p_num = _as_number(g), _as_number(p)
    if g_num is not None and p_num is not None:
        try:
            return timeout(timeout_seconds=5)(_numbers_equal)(g_num, p_num, rel_tol)
        except TimeoutException:
            return False
        except Exception:  # sympy could not decide: fall through to math-verify's own comparison
            pass
    # Sets, tuples, intervals, matrices, equations, expressions with variables: math-verify's rules, with decimals
    # made exact so that its absolute rounding (6 places) cannot equate tiny numbers.
    return verify(_exact(gold), _exact(pred), numeric_precision=50)


@register_reward("math_verify", check_params=_check_math_verify_params)
def math_verify_reward(
    completion: str, reference: str, *, require: str = "any", rel_tol: float = 1e-6
) -> float | Scored:
    """1.0 if the completion's final answer is mathematically equivalent to the reference, else 0.0.

    **The final answer** is, in this order of precedence:

    1. the last ``\\boxed{...}`` (or ``\\fbox{...}``) -- boxes listed together count as one answer, "\\boxed{1} and
       \\boxed{2}" is {1, 2}, so hedging "\\boxed{3} or \\boxed{4}" matches neither 3 nor 4; a last box never closed
       (a truncated completion) is no answer;
    2. else, after the last answer marker ("answer is", "answers are", "Answer:", "answer =", "the answer to ... is",
       "####"), the first piece of maths that begins on the first non-empty line after it;
    3. else the last piece of maths in the completion.

    A piece of maths is the content of a delimited environment ($...$, $$...$$, \\(...\\), \\[...\\]) or a run of
    maths written without delimiters, which ends at a word of two or more letters, a line break or a sentence's
    full stop: "The answer is 2 + \\sqrt{3}." gives "2 + \\sqrt{3}", "#### 72 apples" gives "72". The answer is then
    parsed by math-verify as ONE LaTeX expression, never as its leading number, so 2 + \\sqrt{3} does not match 2.
    Nothing else in the completion is looked at: a right number elsewhere does not rescue a wrong final answer.
    A final answer over 2,000 characters is no answer.

    **Normalisation**, applied to both the answer and the reference: currency signs and words are dropped
    ("$250", "\\$250", "250 dollars", "250\\text{ dollars}" are all 250), as are trailing unit words ("5 cm" is 5;
    units are not converted, so "5 m" also matches "5 cm"); "250%" and "250\\%" are the same percentage, and a
    percentage x% matches x or x/100 (math-verify's rule); "1e-20" means 1\\times10^{-20}. A reference wrapped in
    $...$ or \\boxed{} is unwrapped.

    **Multiple choice**: a reference that is one capital letter -- "C", "(C)", "C)", "\\text{(C)}", or "(C) <option
    text>" -- is matched against the option letter of the final answer: "\\boxed{C}", "\\boxed{\\textbf{(C) }12}",
    "The answer is (C)", "Answer: C)"; without a box or marker, the last "(C)"/"C)" in the completion, or a capital
    letter that is its very last word ("So it is (C)", "... it must be C."). Letters are capitals, except one that
    is the whole box or the whole marked answer ("\\boxed{c}", "The answer is (c)."); one inside a word ("Clearly")
    or a function's argument ("P(C)") never counts.

    **Comparison**: math-verify's symbolic equivalence ("\\frac{1}{2}" matches "0.5", "x = 5" answers 5, sets and
    intervals compare as such), except for numbers: when either side is written as a decimal, two numbers match if
    ``|a - b| <= rel_tol * max(|a|, |b|)``, so 1e20 matches 1.0000000001e20 but 1e-20 does not match 1.1e-20; two
    exact numbers must be equal (\\frac{1}{3^{40}} is not \\frac{1}{3^{41}}). Decimals inside sets, tuples,
    intervals and equations count as the exact value they spell (0.5 is 1/2, 0.333333 is not 1/3).

    Parameters (keyword-only, all optional):
      require: ``"any"`` (default) accepts any of the three forms above; ``"marked"`` requires a box or a marker
        and ``"boxed"`` a box -- otherwise the score is ``Scored(0.0, reason)`` with the reason saying what was
        missing, so a format term can ask for it.
      rel_tol: the relative tolerance for decimals, default 1e-6.

    Raises ValueError if the reference cannot be parsed at all, or for a bad parameter: those are dataset or config
    problems, not wrong completions, and should show up as failed scores rather than a silent 0.0.

    math-verify enforces its timeouts with signals, so this only works in a process's main thread; call it through
    :class:`rlsys.rewards.scoring.RewardScorer`, which runs it in a child process.
    """
    tol = _check_math_verify_params(require, rel_tol)
    gold_letter, gold = _reference_answer(reference)
    kind, region = _final_answer(completion)
    if require == "boxed" and kind != "boxed":
        return Scored(0.0, "no \\boxed answer")
    if require == "marked" and kind == "last":
        return Scored(0.0, "no marked final answer (\\boxed{...}, 'answer is', 'Answer:' or '####')")
    if gold_letter is not None:
        return 1.0 if _mc_letter(kind, region) == gold_letter else 0.0
    answer = _math_answer(kind, region)
    pred = _parse_answer(answer) if answer else []
    return 1.0 if any(_same_answer(g, p, tol) for g in gold for p in pred) else 0.0
