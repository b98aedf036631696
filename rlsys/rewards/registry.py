"""Registry of reward functions, looked up by name or by an import path.

A reward function maps ``(completion_text, reference_answer, **params)`` to a float, or to a :class:`Scored` (the
float plus the reason behind it, e.g. why sandboxed code earned 0); ``params`` are keyword arguments from the config
(a reward component's ``params``): a parameter without a default is required, and the config check binds each
component's params to its function's signature at start-up, so a misspelled or missing key is refused before a run
starts instead of failing every sample; a function's ``check_params`` (:func:`register_reward`) checks their
values there too.
Built-in rewards register themselves with :func:`register_reward`; user rewards need no registration and are given
as ``"package.module:function"``.
Lookup by string (rather than passing function objects around) lets a config name the reward and lets a child
process resolve it again without pickling the function.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from typing import NamedTuple


class Scored(NamedTuple):
    """A reward value with the reason for it. The value is the reward; the reason is kept with the sample (the
    sample log's ``reward_notes``) so a user can see *why* a completion scored what it did, without the sample
    counting as a reward failure."""

    value: float
    reason: str = ""


RewardFn = Callable[..., "float | Scored"]  # (completion: str, reference: str, **params) -> float | Scored

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str, check_params: Callable[..., object] | None = None, scope: str = "sample"
                    ) -> Callable[[RewardFn], RewardFn]:
    """Decorator that registers a reward function under ``name`` and returns it, with ``check_params`` and
    ``scope`` attached.

    ``scope`` is what the function scores (:data:`rlsys.rewards.components.SCOPES`): ``sample`` takes one
    completion, ``group`` a prompt's list of completions, ``process`` a completion's list of steps,
    ``trajectory`` a multi-turn trajectory. The config check refuses a component that uses the function in
    another scope (every call would fail).

    ``check_params(**params)`` — called at start-up with every param of a component (its defaults filled in) —
    raises ValueError for values the function would reject on every sample (a regex that does not compile, a
    limit out of range), so the config check refuses them before a run starts. A ``module:function`` reward can
    offer the same by having a ``check_params`` attribute.

    Raises ValueError for a duplicate name (two rewards silently shadowing each other would be a config bug) and
    for a name containing ":" (that form is reserved for import paths).
    """
    if not name or ":" in name:
        raise ValueError(f"invalid reward name {name!r}: use a non-empty name without ':' (':' marks import paths)")

    def decorator(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY:
            raise ValueError(
                f"reward {name!r} is already registered (by {_REGISTRY[name].__module__}."
                f"{_REGISTRY[name].__qualname__}); pick another name"
            )
        _REGISTRY[name] = fn
        if check_params is not None:
            fn.check_params = check_params  # type: ignore[attr-defined]
        fn.scope = scope  # type: ignore[attr-defined]
        return fn

    return decorator


def reward_names() -> list[str]:
    """Names of the registered reward functions, sorted."""
    return sorted(_REGISTRY)


def get_reward_fn(name: str) -> RewardFn:
    """Return the reward function for a registered ``name`` or an import path ``"package.module:function"``.

    Raises ValueError naming what is wrong: an unknown name (with the registered names listed), or an import path
    whose module cannot be imported or that lacks the attribute.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        raise ValueError(
            f"unknown reward function {name!r}; registered rewards: {', '.join(reward_names()) or '(none)'}. "
            f"A custom function can be given as 'module:function', e.g. 'my_pkg.rewards:score'."
        )
    return _import_reward(name)


def _import_reward(path: str) -> RewardFn:
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"invalid reward import path {path!r}: expected 'package.module:function'")
    try:
        obj: object = importlib.import_module(module_name)
    except (Exception, SystemExit) as e:  # anything user code raises on import, sys.exit() included
        raise ValueError(f"could not import reward function {path!r}: {type(e).__name__}: {e}") from e
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError as e:
            raise ValueError(f"could not import reward function {path!r}: AttributeError: {e}") from e
    if not callable(obj):
        raise ValueError(f"reward function {path!r} is a {type(obj).__name__}, not a callable")
    return obj  # type: ignore[return-value]



# The probe prints the nonce it is given after the import returned or raised (a raise the in-process import then
# reports with its message); no nonce on its stdout means the import ended the process. A nonce, not a fixed word,
# so that nothing the module prints can pass for it.
_PROBE = """
import importlib, json, sys
sys.path[:] = json.loads(sys.argv[2])
try:
    importlib.import_module(sys.argv[1])
finally:
    print(sys.argv[3], flush=True)
"""
PROBE_TIMEOUT_S = 300.0  # a module that imports torch on a loaded node takes tens of seconds
PROBE_PATIENCE_S = 10.0  # an import still running after this is logged, with how long it will be waited for


def import_kills_process(path: str) -> str | None:
    """Import the module of reward import path ``path`` (``"package.module:function"``) in a child process with
    this process's ``sys.path``, and say how the import ended that process, or None if it did not.

    Importing user code in the driver runs whatever the module runs at import: ``os._exit(0)`` there would end
    rlsys with exit code 0 and no word, and a crash in a C extension with a bare signal. The config check calls this
    first (a second or two per custom module, once per process), so the problem is reported naming the module
    instead. An import that merely raises is not this function's business (None): the in-process import reports it
    with its message."""
    import sys

    return _probe(path.partition(":")[0], tuple(sys.path))


@functools.cache
def _probe(module: str, sys_path: tuple[str, ...]) -> str | None:
    import json
    import secrets
    import subprocess
    import sys

    nonce = f"rlsys-probe-{secrets.token_hex(8)}"
    proc = subprocess.Popen([sys.executable, "-c", _PROBE, module, json.dumps(sys_path), nonce], text=True,
                            errors="replace", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        try:
            stdout, stderr = proc.communicate(timeout=PROBE_PATIENCE_S)
        except subprocess.TimeoutExpired:  # say what is being waited for, rather than nothing for minutes
            logging.getLogger(__name__).warning(
                "importing reward module %r (a check in a child process) has taken %.0f s; waiting up to %.0f s",
                module, PROBE_PATIENCE_S, PROBE_TIMEOUT_S)
            stdout, stderr = proc.communicate(timeout=PROBE_TIMEOUT_S - PROBE_PATIENCE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return f"importing module {module!r} did not finish within {PROBE_TIMEOUT_S:.0f} s (does it block at import?)"
    if nonce in stdout:  # anywhere: the module's own output may leave the line unfinished
        return None
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    tail = " | ".join(stderr.strip().splitlines()[-3:])[-300:]
    return (f"importing module {module!r} ended the process ({how}) before the import finished"
            + (f"; its last output: {tail}" if tail else "") + ": a reward module must not exit or crash when imported")
