"""``python``: a tool that runs the code of a tool call in the code sandbox (:func:`rlsys.rewards.sandbox.
run_sandboxed`: its own process, CPU, memory, process and file limits, no network) and shows what it printed; the
trajectory ends at the first action without a call.

An action ``... <python>print(6*7)</python>`` is answered with the program's stdout (at most ``max_output_chars``
of it), or with its error (``Type: message (line N)``, or the limit that stopped it) after whatever it printed.
"""

from __future__ import annotations

from rlsys.envs.base import register_env
from rlsys.envs.calculator import Calculator
from rlsys.rewards.sandbox import SandboxLimits, run_sandboxed
from rlsys.types import Prompt


@register_env("python")
class PythonTool:
    """``env.params``: ``open``/``close`` (the tags), ``max_output_chars``, and any
    :class:`~rlsys.rewards.sandbox.SandboxLimits` field (``wall_s``, ``memory_mb``, ...)."""

    def __init__(self, open: str = "<python>", close: str = "</python>", max_output_chars: int = 1000,
                 **limits: object) -> None:
        self.calls = Calculator(open, close)  # the same tag parsing
        self.max_output_chars = int(max_output_chars)
        self.limits = SandboxLimits(**limits)  # ValueError/TypeError here: the worker refuses the params

    @classmethod
    def stop_strings(cls, close: str = "</python>", **_: object) -> tuple[str, ...]:
        return (close,)

    def reset(self, prompt: Prompt) -> str | None:
        return None

    def step(self, action: str) -> tuple[str | None, float | None, bool, dict]:
        code = self.calls.call(action)
        if code is None:
            return None, None, True, {}
        result = run_sandboxed(code, self.limits)
        shown = result.stdout
        if not result.ok:
            shown += ("" if not shown or shown.endswith("\n") else "\n") + (result.error or result.reason)
        if len(shown) > self.max_output_chars:
            shown = shown[: self.max_output_chars] + f"\n[... {len(shown) - self.max_output_chars} characters cut]"
        return shown, None, False, {"ok": result.ok, "wall_s": round(result.wall_s, 3)}
