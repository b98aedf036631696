"""``calculator``: a tool that evaluates the arithmetic in a tool call; the trajectory ends at the first action
without one (the policy's answer, which the reward checks).

An action ``... <calc>47*86</calc>`` (``open``/``close`` set the tags) is answered with ``observation_template``
formatted with the result (``{result}``: "4042"); an expression it cannot evaluate is answered with an error
message, as a real tool would, and the policy may try again. ``latency_s`` makes each call sleep that long: a
stand-in for a slow tool (a search index, another model) in throughput measurements.
"""

from __future__ import annotations

import ast
import operator
import random
import time

from rlsys.envs.base import register_env
from rlsys.types import Prompt

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Mod: operator.mod, ast.Div: operator.truediv}
MAX_DIGITS = 60  # results (and operands) past this many digits are refused: a tool answers quickly or not at all


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic ``expression`` (numbers, + - * / // %, unary minus, parentheses); ValueError
    saying why it is not one."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None

    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = value(node.left), value(node.right)
            try:
                out = _OPS[type(node.op)](left, right)
            except ZeroDivisionError:
                raise ValueError("division by zero") from None
            if isinstance(out, int) and len(str(abs(out))) > MAX_DIGITS:
                raise ValueError(f"result has more than {MAX_DIGITS} digits")
            return out
        raise ValueError(f"not an arithmetic expression: {expression!r}")

    return value(tree.body)


def format_number(x: int | float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x) if isinstance(x, float) else str(x)


@register_env("calculator")
class Calculator:
    """``env.params``: ``open``/``close`` (the tool call's tags), ``observation_template`` (with ``{result}``),
    ``latency_s`` (seconds each call sleeps), ``demo_tool_rate`` (the fraction of warm-up demonstrations that use
    the tool; the others answer directly)."""

    def __init__(self, open: str = "<calc>", close: str = "</calc>", observation_template: str = "{result}",
                 latency_s: float = 0.0, demo_tool_rate: float = 0.5) -> None:
        if not open or not close:
            raise ValueError("calculator: open and close must be non-empty tags")
        if "{result}" not in observation_template:
            raise ValueError("calculator: observation_template must contain {result}")
        if not (latency_s >= 0 and 0 <= demo_tool_rate <= 1):
            raise ValueError("calculator: latency_s must be ≥ 0 and demo_tool_rate in [0, 1]")
        self.open, self.close_tag, self.template = open, close, observation_template
        self.latency_s, self.demo_tool_rate = float(latency_s), float(demo_tool_rate)

    @classmethod
    def stop_strings(cls, close: str = "</calc>", **_: object) -> tuple[str, ...]:
        return (close,)

    def reset(self, prompt: Prompt) -> str | None:
        return None

    def call(self, action: str) -> str | None:
        """The expression of the action's last complete tool call, or None if it has none."""
        end = action.rfind(self.close_tag)
        start = action.rfind(self.open, 0, end) if end >= 0 else -1
        return action[start + len(self.open): end] if start >= 0 else None

    def step(self, action: str) -> tuple[str | None, float | None, bool, dict]:
        expression = self.call(action)
        if expression is None:
            return None, None, True, {}
        if self.latency_s:
            time.sleep(self.latency_s)
        try:
            result = format_number(evaluate(expression))
        except ValueError as e:
            return f"error: {e}", None, False, {"expression": expression, "error": str(e)}
        return self.template.replace("{result}", result), None, False, {"expression": expression, "result": result}

    def demonstration(self, prompt: Prompt, rng: random.Random) -> list[str]:
        """A worked trajectory for the warm-up: with probability ``demo_tool_rate`` the tool is called on the
        prompt's expression (the text before its last "=") and its result copied; else the answer directly."""
        if rng.random() >= self.demo_tool_rate:
            return [prompt.answer]
        action = f"{self.open}{prompt.text.rpartition('=')[0] or prompt.text}{self.close_tag}"
        observation, _, _, _ = self.step(action)
        return [action, observation or "", prompt.answer]
