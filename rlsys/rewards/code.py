"""Code-execution reward: run the completion's Python code against unit tests in a sandbox, credit by tests passed.

``code_tests(completion, reference, **params)`` returns ``Scored(fraction of tests passed, reason)``.

The code is the completion's last fenced block marked ``python`` (or ``py``/``python3``); failing that, its last
plain fenced block; failing that, the whole completion. An unclosed final fence (a truncated completion) counts
as a block that runs to the end.

The reference is a JSON list of test snippets, each a string of Python source, for example::

    ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "import math\\nassert math.isclose(add(0.1, 0.2), 0.3)"]

The code runs once, as a module named ``solution`` (so its ``if __name__ == "__main__":`` demo does not run);
then each snippet runs in its own copy of the code's namespace, with its own time limit (``test_timeout_s``), so
one failing, raising or hanging test does not stop the others. A snippet passes if it runs without an exception.
Everything runs in :func:`rlsys.rewards.sandbox.run_sandboxed` (a separate process with CPU, memory, process and
time limits, no network, a read-only filesystem apart from its own temporary directory, where the kernel allows
it): see that module for the isolation layers.

A malformed reference (not JSON, not a list, an empty list, a test that is not a non-empty string of valid
Python) is a dataset bug and raises ValueError naming the problem. A malformed or hostile completion never
raises: it scores 0.0 with the reason (empty, too long, NUL bytes, not UTF-8, a syntax error, an exception, a
limit hit, an operation the sandbox blocked). If the sandbox itself fails (cannot start), the reward raises
RuntimeError: that says nothing about the completion, and the scorer records it as a failed reward, not a 0.

Reward hacking: results travel on a channel tagged with a random nonce the code is never given, the builtins are
restored before each test, and the code cannot exit its way past the tests (exiting before they run scores 0).
What this cannot stop is code written to fool the assertions themselves (an object equal to everything):
write tests that check types and values (``assert add(2, 3) == 5 and type(add(2, 3)) is int``).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache

from rlsys.rewards.registry import Scored, register_reward
from rlsys.rewards.sandbox import SandboxLimits, run_sandboxed

logger = logging.getLogger(__name__)

_PYTHON_TAGS = frozenset({"python", "py", "python3"})
_REASON_CHARS = 500
_warned_weak_isolation = False


def extract_code(completion: str) -> str:
    """The code to run: the last ```python (or ```py/```python3) block, else the last plain ``` block, else the
    whole completion. Fences are lines starting with ``` (leading spaces allowed); a closing fence is a bare
    ```; an unclosed block runs to the end. Linear in the completion's length."""
    lines = completion.split("\n")
    blocks: list[tuple[str, int, int]] = []  # (info string, first line, end line)
    tag: str | None = None
    start = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped.startswith("```"):
            continue
        if tag is None:
            tag, start = stripped[3:].strip().lower(), i + 1
        elif stripped == "```":
            blocks.append((tag, start, i))
            tag = None
    if tag is not None:
        blocks.append((tag, start, len(lines)))
    for wanted in (lambda t: t.split()[0] in _PYTHON_TAGS if t else False, lambda t: t == ""):
        chosen = [b for b in blocks if wanted(b[0])]
        if chosen:
            _, first, end = chosen[-1]
            return "\n".join(lines[first:end])
    return completion


@lru_cache(maxsize=1024)
def parse_tests(reference: str) -> tuple[str, ...]:
    """The test snippets in ``reference`` (a JSON list of strings of Python source). Raises ValueError naming
    the problem for anything else: it is a dataset bug, not the completion's fault."""
    example = '\'["assert add(2, 3) == 5", "assert add(0, 0) == 0"]\''
    try:
        tests = json.loads(reference)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"code_tests: the reference must be a JSON list of test snippets (strings of Python source), e.g. "
            f"{example}; could not parse {reference[:200]!r}: {e}"
        ) from e
    if not isinstance(tests, list):
        raise ValueError(f"code_tests: the reference must be a JSON list of test snippets, e.g. {example}; got a "
                         f"JSON {type(tests).__name__}: {reference[:200]!r}")
    if not tests:
        raise ValueError("code_tests: the reference's test list is empty: every completion would pass 0 of 0 "
                         "tests; give at least one test snippet")
    for i, test in enumerate(tests):
        if not isinstance(test, str) or not test.strip():
            raise ValueError(f"code_tests: test {i} of the reference must be a non-empty string of Python source, "
                             f"got {test!r:.200}")
        try:
            compile(test, f"<test {i}>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as e:
            raise ValueError(f"code_tests: test {i} of the reference is not valid Python ({e}): {test[:200]!r}") from e
    return tuple(tests)


def _precheck(code: str, max_code_chars: int) -> str | None:
    """Why ``code`` cannot be run at all (the reason to score 0), or None."""
    if not code.strip():
        return "no code: the completion (or its code block) is empty"
    if len(code) > max_code_chars:
        return f"the code is too long: {len(code)} characters (limit max_code_chars={max_code_chars})"
    if "\x00" in code:
        return f"the code contains NUL bytes (first at character {code.index(chr(0))})"
    try:
        code.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"the code is not valid UTF-8 text (an undecodable character at position {e.start})"
    return None


def _code_params(max_code_chars: object, **limits: object) -> SandboxLimits:
    """code_tests' params checked: the sandbox limits they make; ValueError names the bad one."""
    if isinstance(max_code_chars, bool) or not isinstance(max_code_chars, int) or max_code_chars < 1:
        raise ValueError(f"code_tests: parameter 'max_code_chars' must be an int >= 1, got {max_code_chars!r}")
    return SandboxLimits(**limits)


@register_reward("code_tests", check_params=_code_params)
def code_tests(completion: str, reference: str, *, wall_s: float = 3.0, cpu_s: float = 3.0, memory_mb: int = 512,
               max_processes: int = 32, test_timeout_s: float | None = 1.0, max_output_bytes: int = 64 * 1024,
               disk_mb: int = 64, max_code_chars: int = 100_000) -> Scored:
    """Fraction of the reference's test snippets that pass when run after the completion's code, in a sandbox.

    See the module docstring for the code extraction, the reference format and what scores 0. Parameters are
    the sandbox's limits (:class:`~rlsys.rewards.sandbox.SandboxLimits`): ``wall_s`` for the code and all tests
    together, ``cpu_s`` of CPU time, ``memory_mb`` of address space, ``max_processes`` processes and threads,
    ``test_timeout_s`` per test (None: no per-test bound), ``max_output_bytes`` of stdout/stderr kept,
    ``disk_mb`` for files the code writes; and ``max_code_chars``, the longest code that is run at all. The
    defaults fit the scorer's default per-item budget (``reward.timeout_s``, 5 s): raising ``wall_s``, raise
    that too, to ``wall_s`` plus a second or two of start-up, or a slow completion fails as a reward error
    instead of scoring 0 with its reason.

    Raises ValueError for a malformed reference or a bad parameter, RuntimeError if the sandbox cannot run.
    """
    tests = parse_tests(reference)
    limits = _code_params(max_code_chars, wall_s=wall_s, cpu_s=cpu_s, memory_mb=memory_mb,
                          max_processes=max_processes, test_timeout_s=test_timeout_s,
                          max_output_bytes=max_output_bytes, disk_mb=disk_mb)
    code = extract_code(completion)
    problem = _precheck(code, max_code_chars)
    if problem is not None:
        return Scored(0.0, problem)
    result = run_sandboxed(code, limits, tests=tests)
    if result.sandbox_error:
        raise RuntimeError(f"code_tests: the sandbox failed (this says nothing about the completion): "
                           f"{result.reason}")
    _warn_if_weak(result.isolation)
    total, passed = len(tests), result.tests_passed
    if result.reason != "ok":
        reason = f"{result.reason} ({passed}/{total} tests passed)"
    elif passed == total:
        reason = f"{passed}/{total} tests passed"
    else:
        index, failed = next((i, t) for i, t in enumerate(result.tests) if not t.passed)
        reason = f"{passed}/{total} tests passed; test {index} failed: {failed.error}"
    if len(reason) > _REASON_CHARS:
        reason = reason[:_REASON_CHARS - 3] + "..."
    return Scored(passed / total, reason)


def _warn_if_weak(isolation: tuple[str, ...]) -> None:
    global _warned_weak_isolation
    missing = [layer for layer in ("netns", "pidns", "fs_readonly") if layer not in isolation]
    if missing and not _warned_weak_isolation:
        _warned_weak_isolation = True
        logger.warning(
            "code_tests: the sandbox runs without %s (this kernel or user cannot create those namespaces); only "
            "the in-interpreter audit hook keeps the code off the network, other processes and files outside its "
            "directory. Run as root or enable unprivileged user namespaces for OS-level isolation.",
            ", ".join(missing),
        )
