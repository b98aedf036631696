"""Shared fixtures: one local Ray for the session, and a tiny warmed-up policy checkpoint built here."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_overrides(tmp_path, *extra: str) -> list[str]:
    """A configuration small enough for a test run on 2 cores (cache shared across the session's runs). The
    synthetic task's size is left out for a Parquet task, and the held-out size with an eval file, where the config
    check refuses them as doing nothing."""
    synthetic = "task.name=parquet" not in extra
    held_out = not any(e.startswith("task.eval_file=") for e in extra)
    return [
        f"output.root={tmp_path}/runs", f"output.cache_dir={tmp_path.parent}/rlsys-cache",
        "output.progress_bar=false", *(["task.num_train=400"] if synthetic else []),
        *(["task.num_eval=40"] if held_out else []),
        "warmup.steps=300",
        "train.groups_per_step=4", "rollout.group_size=4", "rollout.groups_per_request=2", "learner.micro_batch_size=8",
        "train.eval_every=0", *extra,
    ]


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from rlsys.train import ACTOR_ENV

    # tests/ on the actors' path: reward functions named "reward_fixtures:..." resolve in reward workers too.
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**ACTOR_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    """(model_dir, prompts): a warmed-up tiny Llama on 2-digit addition, saved as a Hugging Face checkpoint."""
    from rlsys.config import load_config
    from rlsys.prepare import prepare

    tmp = tmp_path_factory.mktemp("policy")
    cfg = load_config(None, tiny_overrides(tmp))
    prepared = prepare(cfg)
    return prepared.model_dir, prepared.train_prompts
