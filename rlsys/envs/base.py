"""The environment protocol of multi-turn rollouts, and the registry that finds an environment by name.

An environment is a class built once per trajectory as ``cls(**env.params)``, with two methods (Gymnasium's shape,
on text):

- ``reset(prompt) -> str | None`` — the first observation, shown after the prompt before the policy's first action
  (None: the prompt alone);
- ``step(action) -> (observation, reward, done, info)`` — ``action`` is the text of the policy's turn (decoded from
  the tokens it sampled); ``observation`` (str or None) is appended to the trajectory as the next turn's input,
  rendered in the chat template's tool role; ``reward`` (a number or None) is the environment's own reward for the
  step, which reward components of scope ``trajectory`` can read (e.g. ``env_reward``); ``done`` ends the
  trajectory; ``info`` is a dict of JSON-able values kept with the turn.

Optional: ``stop_strings(**params) -> tuple[str, ...]`` (a classmethod: the strings that end an action, e.g. a tool
call's closing tag, added to ``rollout.stop``), ``demonstration(prompt, rng) -> list[str]`` (the turns of a worked
trajectory, actions and observations alternating and ending with an action, for the supervised warm-up of the tiny
default model) and ``close()``.

Built-ins register with :func:`register_env`; any other class is named as ``"package.module:Class"``.
Environments run in environment workers (:mod:`rlsys.actors.env`), never in the rollout worker: one that raises,
returns something else or hangs fails its trajectory, never the run.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
from typing import Any, NamedTuple, Protocol

from rlsys.types import Prompt


class EnvError(Exception):
    """An environment broke its protocol (a bad return value) or failed; the message says which and how."""


class EnvGone(EnvError):
    """A step reached an environment worker that restarted since the trajectory began: its environment is gone (the
    caller replays the trajectory, :meth:`rlsys.actors.env.EnvWorker.replay`)."""


class Step(NamedTuple):
    """What ``step`` returned, checked (:func:`check_step`)."""

    observation: str | None
    reward: float | None
    done: bool
    info: dict


class Environment(Protocol):
    def reset(self, prompt: Prompt) -> str | None: ...

    def step(self, action: str) -> tuple[str | None, float | None, bool, dict]: ...


_REGISTRY: dict[str, type] = {}


def register_env(name: str):
    """Class decorator: register an environment under ``name``. Raises ValueError for a duplicate name or one with
    ":" (reserved for import paths)."""
    if not name or ":" in name:
        raise ValueError(f"invalid environment name {name!r}: use a non-empty name without ':'")

    def decorator(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"environment {name!r} is already registered (by {_REGISTRY[name].__qualname__})")
        _REGISTRY[name] = cls
        return cls

    return decorator


def env_names() -> list[str]:
    return sorted(_REGISTRY)


def get_env_class(spec: str) -> type:
    """The class a registered name or ``"package.module:Class"`` names; ValueError saying why not."""
    if ":" not in spec:
        if spec not in _REGISTRY:
            raise ValueError(f"unknown environment {spec!r}; the built-ins are {', '.join(env_names())}, or give "
                             "one as 'package.module:Class'")
        return _REGISTRY[spec]
    module, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ValueError(f"environment {spec!r}: module {module!r} does not import ({type(e).__name__}: {e})") from e
    except AttributeError:
        raise ValueError(f"environment {spec!r}: module {module!r} has no attribute {attr!r}") from None
    missing = [m for m in ("reset", "step") if not callable(getattr(cls, m, None))]
    if not isinstance(cls, type) or missing:
        raise ValueError(f"environment {spec!r} is not a class with reset() and step() (missing: "
                         f"{', '.join(missing) or 'it is not a class'})")
    return cls


def make_env(spec: str, params: dict[str, Any]) -> Any:
    """A new environment instance; EnvError if its constructor refuses ``params`` (a TypeError or ValueError)."""
    cls = get_env_class(spec)
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise EnvError(f"environment {spec!r} refuses env.params={params}: {type(e).__name__}: {e}") from e


def env_stop_strings(spec: str, params: dict[str, Any]) -> tuple[str, ...]:
    """The stop strings the environment declares (its ``stop_strings(**params)``), else ()."""
    declare = getattr(get_env_class(spec), "stop_strings", None)
    return tuple(declare(**params)) if declare is not None else ()


def check_step(value: Any) -> Step:
    """``step``'s return value as a :class:`Step`, or EnvError saying what is wrong with it."""
    if not (isinstance(value, tuple) and len(value) == 4):
        raise EnvError(f"step() returned {_short(value)}; expected a tuple (observation, reward, done, info)")
    observation, reward, done, info = value
    if observation is not None:
        observation = check_text(observation, "step() returned observation")
    if reward is not None:
        try:
            finite = isinstance(reward, numbers.Real) and math.isfinite(float(reward))
        except OverflowError:
            finite = False
        if not finite:
            raise EnvError(f"step() returned reward {_short(reward)}; expected a finite number or None")
        reward = float(reward)
    if not isinstance(done, bool):
        raise EnvError(f"step() returned done {_short(done)}; expected True or False")
    if info is None:
        info = {}
    if not isinstance(info, dict):
        raise EnvError(f"step() returned info {_short(info)}; expected a dict")
    try:  # as the sample log stores it (values it cannot write as JSON, as their repr): always sendable
        info = json.loads(json.dumps(info, default=repr))
    except (TypeError, ValueError) as e:
        raise EnvError(f"step() returned info {_short(info)}, which is not JSON-able ({e})") from None
    return Step(observation, reward, done, info)


def check_reset(value: Any) -> str | None:
    return None if value is None else check_text(value, "reset() returned")


def check_text(value: Any, what: str) -> str:
    """An observation: a str that is valid Unicode (a lone surrogate cannot be encoded, so not tokenised)."""
    if not isinstance(value, str):
        raise EnvError(f"{what} {_short(value)}; expected a str or None")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise EnvError(f"{what} text that is not valid Unicode ({e})") from None
    return value


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
