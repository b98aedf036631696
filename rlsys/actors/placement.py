"""Where actors run: every Ray actor of a run is made remote here, with its resources and restart policy.

Learners share one placement group (PACK: data-parallel ranks as close together as the cluster allows);
rollout and reward workers are plain actors that Ray restarts when they die (the controller re-queues what
they had in flight); the buffer is pinned to the driver's node, so its sample log lands in the run directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from rlsys.actors.buffer import BufferActor
from rlsys.actors.learner import Learner
from rlsys.actors.reference import ReferenceWorker
from rlsys.actors.reward import RewardWorker
from rlsys.actors.rollout import RolloutWorker
from rlsys.config import RLConfig
from rlsys.model_source import pack

WORKER_MAX_RESTARTS = 3  # rollout/reward actors; learners hold optimizer state and are not restarted


class PlacementError(RuntimeError):
    """The cluster cannot host the actors the config asks for."""


@dataclass
class ActorHandles:
    learners: list
    rollouts: list
    rewards: list
    buffer: object
    reference: object | None  # the reference actor (algo.reference=actor and kl_coef > 0), else None
    learner_group: object
    packed_model: list  # keeps the checkpoint in the object store while restartable actors may need it

    def all(self) -> list:
        return [*self.learners, *self.rollouts, *self.rewards, self.buffer,
                *([self.reference] if self.reference is not None else [])]


def create_actors(cfg: RLConfig, model_dir: str, sample_log_path: str | None, runtime_env: dict | None = None
                  ) -> ActorHandles:
    """Create (but do not set up) every actor of a run; raises :class:`PlacementError` if they cannot fit."""
    packed = pack(model_dir)
    n_learn, lc = cfg.learner.num_learners, cfg.learner
    bundles = [{"CPU": lc.num_cpus, **({"GPU": lc.num_gpus} if lc.num_gpus else {})} for _ in range(n_learn)]
    group = placement_group(bundles, strategy="PACK")
    ready, _ = ray.wait([group.ready()], timeout=cfg.ray.placement_timeout_s)
    if not ready:
        remove_placement_group(group)
        raise PlacementError(
            f"could not place {n_learn} learner(s) with {bundles[0]} each within "
            f"ray.placement_timeout_s={cfg.ray.placement_timeout_s:.0f} s; "
            f"the cluster has {ray.cluster_resources()}. Lower learner.num_learners / learner.num_cpus / "
            "learner.num_gpus or add nodes."
        )
    samples_per_rank = cfg.samples_per_step // n_learn
    learner_cls = ray.remote(Learner)
    learners = [
        learner_cls.options(
            num_cpus=lc.num_cpus, num_gpus=lc.num_gpus, max_restarts=0, runtime_env=runtime_env,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
        ).remote(rank, n_learn, model_dir, cfg.learner, cfg.algo, samples_per_rank, cfg.rollout.temperature,
                 cfg.rollout.max_new_tokens, packed)
        for rank in range(n_learn)
    ]
    rc = cfg.rollout
    rollouts = [
        ray.remote(RolloutWorker).options(
            num_cpus=rc.num_cpus, num_gpus=rc.num_gpus, max_restarts=WORKER_MAX_RESTARTS, runtime_env=runtime_env,
        ).remote(i, model_dir, rc, packed)
        for i in range(rc.num_workers)
    ]
    rewards = [  # restarted without limit: the controller kills one whose call runs past reward.call_timeout_s
        ray.remote(RewardWorker).options(
            num_cpus=cfg.reward.num_cpus, num_gpus=cfg.reward.num_gpus, max_restarts=-1, runtime_env=runtime_env,
        ).remote(cfg.reward)
        for _ in range(cfg.reward.num_workers)
    ]
    buffer = ray.remote(BufferActor).options(
        num_cpus=0, runtime_env=runtime_env,
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
    ).remote(cfg.train.max_staleness, sample_log_path, cfg.algo.dynamic_sampling)
    reference = None
    if cfg.algo.kl_coef > 0 and cfg.algo.reference == "actor":  # same resources as one learner, restartable
        reference = ray.remote(ReferenceWorker).options(
            num_cpus=lc.num_cpus, num_gpus=lc.num_gpus, max_restarts=WORKER_MAX_RESTARTS, runtime_env=runtime_env,
        ).remote(model_dir, rc.temperature, lc.num_cpus, lc.num_gpus, packed)
    return ActorHandles(learners, rollouts, rewards, buffer, reference, group, packed)


def setup_learners(learners: list, timeout_s: float = 600.0) -> None:
    """Form the learners' process group (rank 0 hosts the rendezvous) and build their DeepSpeed engines."""
    addr, port = ray.get(learners[0].rendezvous_address.remote(), timeout=timeout_s)
    ray.get([learner.setup.remote(addr, port) for learner in learners], timeout=timeout_s)


def shutdown_actors(handles: ActorHandles, grace_s: float = 10.0) -> None:
    """Ask workers to close (flushes, child processes), then kill whatever is left after ``grace_s``."""
    closes = [w.close.remote() for w in handles.rewards]
    deadline = time.monotonic() + grace_s
    ray.wait(closes, num_returns=len(closes), timeout=max(0.0, deadline - time.monotonic()))
    for actor in handles.all():
        ray.kill(actor)
    remove_placement_group(handles.learner_group)
