"""Environment worker: hosts the environments of many trajectories at once, one instance per trajectory.

Rollout workers call ``reset``/``step``/``close`` by trajectory key; the actor is threaded (``env.max_concurrency``
calls at a time), so a tool that sleeps or waits on I/O holds up only its own trajectory. Whatever an environment
raises or returns out of protocol comes back to the caller as an :class:`~rlsys.envs.EnvError` and fails that one
trajectory; one that hangs past ``env.step_timeout_s`` gets this actor killed by the caller, and Ray restarts it
(the other trajectories it hosted lost their state with it: the caller rebuilds each with :meth:`EnvWorker.replay`).
"""

from __future__ import annotations

from typing import Any

from rlsys.envs import EnvError, EnvGone, Step, make_env
from rlsys.envs.base import check_reset, check_step
from rlsys.types import Prompt


class EnvWorker:
    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.name, self.params = name, dict(params)
        self.envs: dict[str, Any] = {}

    def reset(self, key: str, prompt: Prompt) -> str | None:
        env = self._call(lambda params: make_env(self.name, params), self.params, "__init__")
        self.envs[key] = env
        return check_reset(self._call(env.reset, prompt, "reset"))

    def step(self, key: str, action: str) -> Step:
        env = self.envs.get(key)
        if env is None:
            raise EnvGone("this environment worker restarted since the trajectory began: its environment is gone")
        return check_step(self._call(env.step, action, "step"))

    def replay(self, key: str, prompt: Prompt, actions: list[str]) -> tuple[str | None, list[Step]]:
        """Build the trajectory's environment again (this worker restarted and lost it) and step it through
        ``actions``: (first observation, each step), which the caller compares with what the policy saw."""
        first = self.reset(key, prompt)
        return first, [self.step(key, action) for action in actions]

    def close(self, key: str) -> None:
        env = self.envs.pop(key, None)
        if env is not None and callable(getattr(env, "close", None)):
            try:
                env.close()
            except Exception:  # noqa: BLE001  a failing close loses nothing: the trajectory is complete
                pass

    def _call(self, method, arg, what: str):
        try:
            return method(arg)
        except EnvError:
            raise
        except BaseException as e:  # sys.exit(), KeyboardInterrupt too: a tool fails its trajectory only
            raise EnvError(f"environment {self.name!r} raised in {what}(): {type(e).__name__}: {e}") from None
