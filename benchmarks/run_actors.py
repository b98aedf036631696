"""The actors of a run on a local Ray, for benchmarks that time the parts of a step one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def run_actors(cfg) -> Iterator[tuple]:
    """``with run_actors(cfg) as (prepared, actors, pool):`` the prepared checkpoint and datasets
    (:func:`rlsys.prepare.prepare`), every actor of ``cfg`` with the learners set up and the rollout engines built,
    and a :class:`rlsys.rollout_pool.RolloutPool` over them; all shut down, with Ray, on exit."""
    import ray

    from rlsys.actors.placement import create_actors, setup_learners, shutdown_actors
    from rlsys.prepare import prepare
    from rlsys.rollout_pool import RolloutPool
    from rlsys.train import init_ray

    prepared = prepare(cfg)
    init_ray(cfg)
    actors = create_actors(cfg, prepared.model_dir, None)
    try:
        setup_learners(actors.learners)
        ray.get([w.version.remote() for w in actors.rollouts])  # engines built
        yield prepared, actors, RolloutPool(actors, cfg.rollout.hang_timeout_s)
    finally:
        shutdown_actors(actors)
        ray.shutdown()
