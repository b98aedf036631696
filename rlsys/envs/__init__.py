"""Environments for multi-turn rollouts: the protocol, the registry and the built-in tools.

Importing this package registers the built-ins (``calculator``, ``python``)."""

from rlsys.envs import calculator, python_tool  # noqa: F401  (registers the built-ins)
from rlsys.envs.base import (
    EnvError,
    EnvGone,
    Environment,
    Step,
    env_names,
    env_stop_strings,
    get_env_class,
    make_env,
    register_env,
)

__all__ = ["EnvError", "EnvGone", "Environment", "Step", "env_names", "env_stop_strings", "get_env_class", "make_env",
           "register_env"]
