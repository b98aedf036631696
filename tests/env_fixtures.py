"""Environments for the tests, named as "env_fixtures:Class" (tests/ is on the actors' path: conftest.ray_session)."""

from __future__ import annotations

import os
import threading
import time
import uuid


class Scripted:
    """Answers every action with ``observation`` until ``turns`` actions were taken; ``reward`` per step."""

    def __init__(self, observation: str = "12", turns: int = 3, reward: float | None = 0.5) -> None:
        self.observation, self.turns, self.reward, self.taken = observation, turns, reward, 0

    def reset(self, prompt):
        return None

    def step(self, action):
        self.taken += 1
        done = self.taken >= self.turns
        return (None if done else self.observation), self.reward, done, {"turn": self.taken, "at": time.time()}


class FailsOn(Scripted):
    """Scripted, but ``how`` on the prompt whose text is ``prompt`` (or holds one of the characters of
    ``any_of``): raise, hang, exit, return junk, or sleep ``sleep_s`` in every step."""

    def __init__(self, prompt: str = "", how: str = "raise", sleep_s: float = 0.0, any_of: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.target, self.how, self.sleep_s, self.any_of, self.mine = prompt, how, sleep_s, any_of, False

    def reset(self, prompt):
        self.mine = prompt.text == self.target or any(c in prompt.text for c in self.any_of)
        return None

    def step(self, action):
        if self.mine:
            if self.how == "raise":
                raise RuntimeError("the tool broke")
            if self.how == "hang":
                time.sleep(3600)
            if self.how == "exit":
                os._exit(3)
            if self.how == "junk":
                return "only an observation"
            if self.how == "surrogate":
                return "\ud800", None, False, {}
            if self.how == "interrupt":
                raise KeyboardInterrupt
            if self.how == "lock":
                return "12", None, False, {"lock": threading.Lock()}
            if self.how == "sleep":
                time.sleep(self.sleep_s)
        return super().step(action)


class Unrepeatable(FailsOn):
    """FailsOn whose first observation is new each time: a replay cannot rebuild its state."""

    def reset(self, prompt):
        super().reset(prompt)
        return str(uuid.uuid4().int)[:6]


class FirstObservation(Scripted):
    def __init__(self, hint: str = "Hint: 7", **kwargs) -> None:
        super().__init__(**kwargs)
        self.hint = hint

    def reset(self, prompt):
        return self.hint
