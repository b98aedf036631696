"""Where actors run: every Ray actor of a run is made remote here, with its resources and restart policy.

Learners share one placement group (PACK: data-parallel ranks as close together as the cluster allows); the
rollout, reward and environment workers and the reference actor reserve their resources in a second one (PACK) and are
restarted by Ray when they die, in their own bundle (the controller re-queues what they had in flight) — and
replaced by a new actor in that bundle (:meth:`ActorHandles.replace`) when the controller finds one dead for good;
the buffer is pinned to the driver's node, so its sample log lands in the run directory.

What the cluster must have for them is checked first: :mod:`rlsys.actors.resources`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from rlsys.actors.buffer import BufferActor
from rlsys.actors.env import EnvWorker
from rlsys.actors.learner import Learner
from rlsys.actors.reference import ReferenceWorker
from rlsys.actors.resources import PlacementError, check_cluster, resource_demand, wait_for_groups
from rlsys.actors.reward import RewardWorker
from rlsys.actors.rollout import WEIGHTS_GROUP, RolloutWorker
from rlsys.config import RLConfig
from rlsys.model_source import pack

__all__ = ["ActorHandles", "PlacementError", "create_actors", "open_weight_transfer", "setup_learners",
           "shutdown_actors"]

WORKER_MAX_RESTARTS = 3  # rollout/reward actors; learners hold optimizer state and are not restarted


@dataclass
class ActorHandles:
    learners: list
    rollouts: list
    rewards: list
    buffer: object
    reference: object | None  # the reference actor (algo.reference=actor and kl_coef > 0), else None
    learner_group: object
    envs: list  # the environment workers (env.name set), which only the rollout workers call
    packed_model: list  # keeps the checkpoint in the object store while restartable actors may need it
    worker_group: object | None = None  # the rollout/reward/reference actors' bundles
    # kind ("rollout worker", "reward worker", "learner", "buffer", "reference actor") → make actor i of that kind
    # again, in its own bundle: a worker that died for good is replaced (the caller kills the old handle and sends
    # the new one the current weights), the learner group and its companions are rebuilt (rebuild_state_holders)
    factories: dict[str, Callable[[int], object]] = field(default_factory=dict)

    def replace(self, kind: str, i: int) -> object:
        """Kill worker ``i`` of ``kind`` for good and put a new one in its place (and in its bundle)."""
        workers = self.rollouts if kind == "rollout worker" else self.rewards
        ray.kill(workers[i], no_restart=True)
        workers[i] = self.factories[kind](i)
        return workers[i]

    def rebuild_state_holders(self) -> None:
        """Kill the learners, the buffer and the reference actor, and create them again in their places: the
        learners must then be set up (:func:`setup_learners`) and loaded from a checkpoint (:mod:`rlsys.recovery`).
        The rollout and reward workers are kept."""
        for actor in [*self.learners, self.buffer, *([self.reference] if self.reference is not None else [])]:
            ray.kill(actor, no_restart=True)
        self.learners = [self.factories["learner"](rank) for rank in range(len(self.learners))]
        self.buffer = self.factories["buffer"](0)
        if self.reference is not None:
            self.reference = self.factories["reference actor"](0)

    def all(self) -> list:
        return [*self.learners, *self.rollouts, *self.rewards, *self.envs, self.buffer,
                *([self.reference] if self.reference is not None else [])]


def create_actors(cfg: RLConfig, model_dir: str, sample_log_path: str | None, runtime_env: dict | None = None
                  ) -> ActorHandles:
    """Create (but do not set up) every actor of a run; raises :class:`PlacementError` if they cannot fit (at once
    when the cluster is too small, after ``ray.placement_timeout_s`` when its resources are in use)."""
    check_cluster(cfg)
    demand = {d.kind: d for d in resource_demand(cfg)}
    learner_d = demand["learner"]
    learner_bundles = [learner_d.bundle()] * learner_d.count
    group = placement_group(learner_bundles, strategy="PACK")
    workers = [d for d in demand.values() if d.kind != "learner"]  # rollout, reward and reference actors
    worker_bundles = [d.bundle() for d in workers for _ in range(d.count)]
    worker_group = placement_group(worker_bundles, strategy="PACK")
    wait_for_groups(cfg, {
        f"{learner_d.count} learner(s) with {learner_d.bundle()} each": (group, learner_bundles),
        " + ".join(f"{d.count} {d.kind}(s) with {d.bundle()} each" for d in workers): (worker_group, worker_bundles),
    })
    first, n = {}, 0  # kind → the index of its first bundle in worker_group
    for d in workers:
        first[d.kind], n = n, n + d.count

    def in_bundle(kind: str, i: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(worker_group, placement_group_bundle_index=first[kind] + i)

    try:
        return _create(cfg, model_dir, sample_log_path, runtime_env, group, worker_group, in_bundle)
    except BaseException:
        remove_placement_group(group)
        remove_placement_group(worker_group)
        raise


def _create(cfg: RLConfig, model_dir: str, sample_log_path: str | None, runtime_env: dict | None, group: object,
            worker_group: object, in_bundle: Callable[[str, int], PlacementGroupSchedulingStrategy]
            ) -> ActorHandles:
    packed = pack(model_dir)
    n_learn, lc, a = cfg.learner.num_learners, cfg.learner, cfg.algo
    samples_per_rank = cfg.samples_per_step // n_learn
    # A reference or critic checkpoint other than the initial policy (model.reference_path / critic_path, which
    # validate() accepts only where they are used), shipped to the actors that use it as (path, packed).
    has_reference = a.kl_coef > 0 and a.reference == "actor"
    other = {key: (path, pack(path)) for key, path in (("reference", cfg.model.reference_path),
                                                        ("critic", cfg.model.critic_path)) if path}
    in_learner = {"reference": None if has_reference else other.get("reference"), "critic": other.get("critic")}

    def learner(rank: int):
        return ray.remote(Learner).options(
            num_cpus=lc.num_cpus, num_gpus=lc.num_gpus, max_restarts=0, runtime_env=runtime_env,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
        ).remote(rank, n_learn, model_dir, cfg.learner, cfg.algo, samples_per_rank, cfg.rollout.temperature,
                 cfg.rollout.max_new_tokens, packed, **in_learner)

    rc, ec = cfg.rollout, cfg.env
    # Restarted without limit, calls never retried: a rollout worker kills one whose call hangs (the trajectories it
    # hosted are replayed on it, rlsys.agent_loop), and a step must not run twice.
    envs = [ray.remote(EnvWorker).options(
        num_cpus=ec.num_cpus, max_restarts=-1, max_task_retries=0, max_concurrency=ec.max_concurrency,
        runtime_env=runtime_env, scheduling_strategy=in_bundle("environment worker", i),
    ).remote(ec.name, ec.params) for i in range(ec.num_workers if ec.enabled else 0)]

    def rollout(i: int):
        # In-flight weight updates: weight syncs run on a thread of their own (WEIGHTS_GROUP), beside generate calls
        # (concurrency groups are declared with the class, not in .options())
        cls = ray.remote(concurrency_groups={WEIGHTS_GROUP: 1})(RolloutWorker) if rc.inflight_weight_updates else \
            ray.remote(RolloutWorker)
        return cls.options(
            num_cpus=rc.num_cpus, num_gpus=rc.num_gpus, max_restarts=WORKER_MAX_RESTARTS, runtime_env=runtime_env,
            scheduling_strategy=in_bundle("rollout worker", i),
        ).remote(i, model_dir, rc, cfg.task, packed, seed=cfg.train.seed, env=ec, envs=envs)

    def reward(i: int):  # restarted without limit: the controller kills one whose call runs past call_timeout_s
        return ray.remote(RewardWorker).options(
            num_cpus=cfg.reward.num_cpus, num_gpus=cfg.reward.num_gpus, max_restarts=-1, runtime_env=runtime_env,
            scheduling_strategy=in_bundle("reward worker", i),
        ).remote(cfg.reward)

    driver_node = ray.get_runtime_context().get_node_id()

    def buffer(_: int = 0):
        return ray.remote(BufferActor).options(
            num_cpus=0, runtime_env=runtime_env,
            scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=False),
        ).remote(cfg.train.max_staleness, sample_log_path, cfg.algo.dynamic_sampling, cfg.algo.overlong_filter,
                 cfg.algo.filter_zero_variance)

    def reference(_: int = 0):  # same resources as one learner, restartable
        path, files = other.get("reference", (model_dir, packed))
        return ray.remote(ReferenceWorker).options(
            num_cpus=lc.num_cpus, num_gpus=lc.num_gpus, max_restarts=WORKER_MAX_RESTARTS, runtime_env=runtime_env,
            scheduling_strategy=in_bundle("reference actor", 0),
        ).remote(path, rc.temperature, lc.num_cpus, lc.num_gpus, files)

    return ActorHandles(
        [learner(rank) for rank in range(n_learn)], [rollout(i) for i in range(rc.num_workers)],
        [reward(i) for i in range(cfg.reward.num_workers)], buffer(), reference() if has_reference else None, group,
        envs, packed, worker_group, {"rollout worker": rollout, "reward worker": reward, "learner": learner,
                               "buffer": buffer, "reference actor": reference})


def open_weight_transfer(actors: ActorHandles, tensor_parallel_size: int, timeout_s: float = 600.0) -> None:
    """``rollout.weight_transfer=nccl`` (GPU only, untested): learner rank 0 and every rollout worker's vLLM form the
    NCCL group the syncs are broadcast in (:class:`rlsys.weight_transfer.NCCLWeightSender`); every learner rank takes
    part. Raises :class:`PlacementError` if that takes more than ``timeout_s``."""
    learners = actors.learners
    try:
        addr, port = ray.get(learners[0].rendezvous_address.remote(), timeout=timeout_s)
        ray.get([learner.open_weight_transfer.remote(actors.rollouts, tensor_parallel_size, addr, port)
                 for learner in learners], timeout=timeout_s)
    except GetTimeoutError as e:
        raise PlacementError(f"the NCCL group of learner rank 0 and {len(actors.rollouts)} rollout worker(s) was not "
                             f"formed within {timeout_s:.0f} s") from e


def setup_learners(learners: list, timeout_s: float = 600.0) -> None:
    """Form the learners' process group (rank 0 hosts the rendezvous) and build their DeepSpeed engines; raises
    :class:`PlacementError` if that takes more than ``timeout_s`` per stage."""
    try:
        addr, port = ray.get(learners[0].rendezvous_address.remote(), timeout=timeout_s)
        ray.get([learner.setup.remote(addr, port) for learner in learners], timeout=timeout_s)
    except GetTimeoutError as e:
        raise PlacementError(
            f"the {len(learners)} learner(s) were not set up within {timeout_s:.0f} s: a learner's bundle is waiting "
            "for room on the cluster (its node was lost and no other has the resources: add a node), or loading "
            "the model and building DeepSpeed takes longer") from e


def shutdown_actors(handles: ActorHandles, grace_s: float = 10.0) -> None:
    """Ask workers to close (flushes, child processes), then kill whatever is left after ``grace_s``."""
    closes = [w.close.remote() for w in handles.rewards]
    deadline = time.monotonic() + grace_s
    ray.wait(closes, num_returns=len(closes), timeout=max(0.0, deadline - time.monotonic()))
    for actor in handles.all():
        ray.kill(actor)
    remove_placement_group(handles.learner_group)
    if handles.worker_group is not None:
        remove_placement_group(handles.worker_group)
