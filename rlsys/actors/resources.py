"""What a run asks of the cluster, checked before any actor exists.

Before any actor exists, :func:`check_cluster` compares what the config asks for (:func:`resource_demand`: every
actor's CPUs and GPUs, from the config alone) with what the cluster has: the total of each resource over the alive
nodes, and, for each kind of actor, one node large enough for one of them (an actor or a bundle never spans
nodes). Both are necessary conditions, so a config they reject can never be placed and fails at once, naming the
resource, the amount asked and the amount there is; a config they pass may still not fit (fragmentation across
nodes or GPUs, resources held by other jobs), which the placement-group wait (``ray.placement_timeout_s``)
reports with what is free. On an autoscaling cluster (``ray.autoscaling=true``) a shortfall is logged instead and
the wait is what it should be: for the autoscaler to add nodes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import ray
from ray.util.placement_group import remove_placement_group

from rlsys.config import RLConfig

log = logging.getLogger(__name__)

RESOURCES = ("CPU", "GPU")
WAIT_REPORT_EVERY_S = 30.0  # while placement groups wait, say what is missing this often
_EPS = 1e-9  # Ray keeps resources in 1/10000 units; sums of fractions such as 0.1 + 0.2 must not fail by rounding


class PlacementError(RuntimeError):
    """The cluster cannot host the actors the config asks for."""


@dataclass(frozen=True)
class ActorDemand:
    """``count`` actors of one kind, each asking for ``cpus`` CPUs and ``gpus`` GPUs (one bundle each)."""

    kind: str  # "learner", "rollout worker", ...
    count: int
    cpus: float
    gpus: float
    count_key: str  # the config key that sets count (or why there is one), for messages
    cpu_key: str
    gpu_key: str

    def per_actor(self, resource: str) -> float:
        return self.cpus if resource == "CPU" else self.gpus

    def key(self, resource: str) -> str:
        return self.cpu_key if resource == "CPU" else self.gpu_key

    def bundle(self) -> dict[str, float]:
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}


def resource_demand(cfg: RLConfig) -> list[ActorDemand]:
    """Every actor the config asks for, by kind, with its resources. Pure: the config alone decides.

    The buffer (0 CPUs, on the driver's node) and the driver itself ask for nothing Ray schedules."""
    lc, rc, wc = cfg.learner, cfg.rollout, cfg.reward
    out = [
        ActorDemand("learner", lc.num_learners, lc.num_cpus, lc.num_gpus, f"learner.num_learners={lc.num_learners}",
                    "learner.num_cpus", "learner.num_gpus"),
        ActorDemand("rollout worker", rc.num_workers, rc.num_cpus, rc.num_gpus, f"rollout.num_workers={rc.num_workers}",
                    "rollout.num_cpus", "rollout.num_gpus"),
        ActorDemand("reward worker", wc.num_workers, wc.num_cpus, wc.num_gpus, f"reward.num_workers={wc.num_workers}",
                    "reward.num_cpus", "reward.num_gpus"),
        ActorDemand("environment worker", cfg.env.num_workers if cfg.env.enabled else 0, cfg.env.num_cpus, 0.0,
                    f"env.num_workers={cfg.env.num_workers}", "env.num_cpus", "env.num_cpus"),
    ]
    if cfg.algo.kl_coef > 0 and cfg.algo.reference == "actor":  # the resources of one learner
        out.append(ActorDemand("reference actor", 1, lc.num_cpus, lc.num_gpus,
                               "1 reference actor (algo.reference=actor)", "learner.num_cpus", "learner.num_gpus"))
    return [d for d in out if d.count > 0]


def total_demand(cfg: RLConfig) -> dict[str, float]:
    """{"CPU": …, "GPU": …}: what all of the config's actors ask for together."""
    demand = resource_demand(cfg)
    return {r: sum(d.count * d.per_actor(r) for d in demand) for r in RESOURCES}


def _num(x: float) -> str:
    return f"{x:g}"


def _node_text(node: dict[str, float]) -> str:
    return " + ".join(f"{_num(node.get(r, 0.0))} {r}" for r in RESOURCES if node.get(r, 0.0) or r == "CPU")


def shortfalls(cfg: RLConfig, cluster: dict[str, float], nodes: list[dict[str, float]] | None = None,
               resources: tuple[str, ...] = RESOURCES, where: dict[str, str] | None = None) -> list[str]:
    """What the config asks for beyond what ``cluster`` (resource totals) and ``nodes`` (each alive node's
    resources; None: do not check per node) hold, one line per shortfall; empty when it fits. Pure.

    ``where[resource]`` is appended to "the cluster has N <resource>" (e.g. "(ray.num_cpus=2)")."""
    demand = resource_demand(cfg)
    problems, short = [], set()
    for r in resources:
        asked = sum(d.count * d.per_actor(r) for d in demand)
        have = cluster.get(r, 0.0)
        if asked > have + _EPS:
            short.add(r)
            terms = " + ".join(f"{d.count_key} × {d.key(r)}={_num(d.per_actor(r))}" for d in demand if d.per_actor(r))
            suffix = (where or {}).get(r)
            problems.append(f"{r}: {terms} = {_num(asked)} {r} asked, the cluster has {_num(have)} {r}"
                            f"{' ' + suffix if suffix else ''}")
    for d in demand if nodes is not None else ():
        needs = {r: d.per_actor(r) for r in resources if d.per_actor(r)}
        if short & needs.keys():
            continue  # already reported as a total
        if not any(all(n.get(r, 0.0) + _EPS >= v for r, v in needs.items()) for n in nodes):
            asked = " and ".join(f"{d.key(r)}={_num(v)}" for r, v in needs.items())
            sizes = sorted({_node_text(n) for n in nodes}, reverse=True)[:5]
            problems.append(f"one {d.kind} ({asked}) must fit on a single node, and no node is that large: the "
                            f"{len(nodes)} alive node(s) have {'; '.join(sizes) or 'nothing'}")
    return problems


def _remedy(cfg: RLConfig, problems: list[str]) -> str:
    ask_less = "Ask for fewer actors or fewer resources per actor (the keys above)"
    if cfg.ray.address:
        return (f"{ask_less}, or add nodes that have them. If this cluster adds nodes on demand (Ray's autoscaler), "
                "set ray.autoscaling=true to wait up to ray.placement_timeout_s for them instead.")
    hints = [ask_less]
    if any(p.startswith("CPU") for p in problems):
        hints.append(f"or raise ray.num_cpus to at least {math.ceil(total_demand(cfg)['CPU'] - _EPS)}, or leave it "
                     "unset: a local Ray is then sized for the actors (their num_cpus are scheduling shares, not "
                     "cores)" if cfg.ray.num_cpus else "or start the local Ray with more CPUs")
    if any(p.startswith("GPU") or "num_gpus" in p for p in problems):
        zero = ", ".join(dict.fromkeys(f"{d.gpu_key}=0" for d in resource_demand(cfg) if d.gpus))
        hints.append(f"or run where Ray sees enough GPUs (check CUDA_VISIBLE_DEVICES and `ray status`), or set "
                     f"{zero} to train on CPUs")
    return "; ".join(hints) + "."


def check_local_cpus(cfg: RLConfig) -> None:
    """Before a local Ray is started with ``ray.num_cpus``: raise :class:`PlacementError` if that is fewer CPUs
    than the actors ask for. Pure: nothing is started."""
    if cfg.ray.address or cfg.ray.num_cpus is None:
        return
    problems = shortfalls(cfg, {"CPU": float(cfg.ray.num_cpus)}, resources=("CPU",),
                          where={"CPU": f"(ray.num_cpus={cfg.ray.num_cpus})"})
    if problems:
        raise PlacementError(_message(cfg, problems))


def _message(cfg: RLConfig, problems: list[str]) -> str:
    return ("the Ray cluster cannot host the actors this config asks for:\n  - " + "\n  - ".join(problems)
            + "\n" + _remedy(cfg, problems))


def cluster_shape() -> tuple[dict[str, float], list[dict[str, float]]]:
    """(resource totals, each alive node's resources) of the connected Ray cluster."""
    nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    return dict(ray.cluster_resources()), nodes


def check_cluster(cfg: RLConfig) -> list[str]:
    """Compare the config's demand with the connected cluster; raise :class:`PlacementError` naming each shortfall,
    or, with ``ray.autoscaling=true``, log them (the placement wait then gives the autoscaler time) and return
    them."""
    cluster, nodes = cluster_shape()
    if cfg.ray.address:
        where = dict.fromkeys(RESOURCES, f"({len(nodes)} alive node(s) at ray.address={cfg.ray.address})")
    else:
        where = {"CPU": f"(ray.num_cpus={cfg.ray.num_cpus})" if cfg.ray.num_cpus else "(the local Ray)",
                 "GPU": "(the local Ray on this machine)"}
    problems = shortfalls(cfg, cluster, nodes, where=where)
    if problems and not cfg.ray.autoscaling:
        raise PlacementError(_message(cfg, problems))
    if problems:
        log.warning("the cluster cannot host this config's actors yet; ray.autoscaling=true, so rlsys waits up to "
                    "ray.placement_timeout_s=%.0f s for the autoscaler to add nodes:\n  - %s",
                    cfg.ray.placement_timeout_s, "\n  - ".join(problems))
    return problems


def _free_text(held: dict[str, float]) -> str:
    """What the cluster has free, counting as free what this run itself already reserved (``held``)."""
    total, free = ray.cluster_resources(), ray.available_resources()
    return ", ".join(f"{_num(round(free.get(r, 0.0) + held.get(r, 0.0), 4))} of {_num(total.get(r, 0.0))} {r}"
                     for r in RESOURCES if total.get(r, 0.0))


def wait_for_groups(cfg: RLConfig, groups: dict[str, tuple[object, list[dict[str, float]]]]) -> None:
    """Wait for every placement group (name → (group, its bundles)) to be placed, saying what is missing every
    WAIT_REPORT_EVERY_S; past ``ray.placement_timeout_s`` remove them all and raise :class:`PlacementError`."""
    timeout = cfg.ray.placement_timeout_s
    deadline = time.monotonic() + timeout
    waiting = {g.ready(): name for name, (g, _) in groups.items()}
    while True:
        left = deadline - time.monotonic()
        ready, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=max(0.0, min(left, WAIT_REPORT_EVERY_S)))
        for ref in ready:
            waiting.pop(ref)
        if not waiting:
            return
        what = " and ".join(waiting.values())
        held = {r: sum(b.get(r, 0.0) for name, (_, bundles) in groups.items() if name not in waiting.values()
                       for b in bundles) for r in RESOURCES}
        free = f"free now (not counting what this run already reserved): {_free_text(held)}"
        left = deadline - time.monotonic()
        if left <= 0:
            for g, _ in groups.values():
                remove_placement_group(g)
            why = ("the autoscaler did not add the nodes in time (ray.autoscaling=true)" if cfg.ray.autoscaling else
                   "the cluster has enough in total, but they are in use (other jobs or actors hold them: see `ray "
                   "status`) or split across nodes or GPUs so that these bundles do not fit")
            raise PlacementError(
                f"could not place {what} within ray.placement_timeout_s={timeout:.0f} s: {why}; {free}. Wait for "
                "them to be released, raise ray.placement_timeout_s, or lower the config's actor counts / num_cpus "
                "/ num_gpus.")
        if left >= 1.0:
            reason = "for the autoscaler to add nodes" if cfg.ray.autoscaling else "for resources in use elsewhere"
            log.warning("waiting %s (%.0f s of ray.placement_timeout_s=%.0f s) to place %s; %s", reason,
                        timeout - left, timeout, what, free)
