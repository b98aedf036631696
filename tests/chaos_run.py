"""One run under chaos, in a process of its own (tests/test_chaos.py starts it): a Ray cluster of three simulated
nodes on this machine (``ray.cluster_utils.Cluster``), a training run on it, and — at moments drawn from the seed —
SIGKILL of a rollout worker, a reward worker, the learner and the buffer, and the removal of a node hosting
workers (a new node joins a few seconds later). Writes ``result.json`` (the events, in order, and the run's
summary) into OUT_DIR; the test checks the run's files.

    python tests/chaos_run.py OUT_DIR SEED
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil  # noqa: E402
import ray  # noqa: E402
from conftest import actor_processes, tiny_overrides  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from rlsys.config import load_config  # noqa: E402
from rlsys.metrics import json_safe  # noqa: E402
from rlsys.train import ACTOR_ENV, train  # noqa: E402

STEPS = 30
VICTIMS = {"rollout": "RolloutWorker", "reward": "RewardWorker", "learner": "Learner", "buffer": "BufferActor",
           "node": None}
NODE_CPUS = 2  # each worker node: a rollout worker and a reward worker (1 CPU each) fit on one
DEADLINE_S = 800


def last_step(run_dir: Path) -> int:
    """The newest optimizer step in metrics.jsonl (it goes back when the run does)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if '"train/loss"' in line]
    return steps[-1] if steps else 0


def sigkill(actor_class: str, rng: random.Random) -> int:
    """SIGKILL one of this cluster's processes of Ray actors of ``actor_class``; its pid."""
    victim = rng.choice(actor_processes(actor_class, among=psutil.Process().children(recursive=True)))
    victim.send_signal(signal.SIGKILL)
    return victim.pid


def bundles_on(node_id: str, deadline: float) -> int:
    """How many placement-group bundles Ray put on the node ``node_id`` (waits up to 60 s for the first): the
    removed node's workers, placed again where there is room."""
    until = min(deadline, time.monotonic() + 60)
    while True:
        n = sum(node == node_id for pg in ray.util.placement_group_table().values()
                for node in pg["bundles_to_node_id"].values())
        if n or time.monotonic() > until:
            return n
        time.sleep(0.2)


def main(out: Path, seed: int) -> None:
    rng = random.Random(seed)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=NODE_CPUS) for _ in range(2)]
    ray.init(address=cluster.address, runtime_env={"env_vars": ACTOR_ENV}, log_to_driver=False)
    run_dir = out / "runs" / "chaos"
    cfg = load_config(None, tiny_overrides(
        out, "output.run_name=chaos", f"train.num_steps={STEPS}", "train.checkpoint_every=3", "train.max_staleness=1",
        "rollout.num_workers=2", "reward.num_workers=2", "reward.num_cpus=1", "ray.address=auto",
        f"train.seed={seed}"))
    result: dict = {"events": []}

    def run() -> None:
        try:
            summary, _ = train(cfg)
            result["summary"] = asdict(summary)
        except BaseException as e:  # reported in result.json, for the test to show
            result["error"] = f"{type(e).__name__}: {e}"

    trainer = threading.Thread(target=run)
    trainer.start()
    order = list(VICTIMS)
    rng.shuffle(order)
    deadline = time.monotonic() + DEADLINE_S
    at = 1
    for victim in order:  # each event once the run is 1-3 steps past the step of the one before
        at += rng.randint(1, 3)
        while trainer.is_alive() and last_step(run_dir) < at and time.monotonic() < deadline:
            time.sleep(0.05)
        if not trainer.is_alive() or time.monotonic() >= deadline:
            break
        event = {"victim": victim, "step": last_step(run_dir)}
        if victim == "node":  # one that hosts no learner (a learner's death is the "learner" event)
            table = ray.util.placement_group_table()
            learners = {n for pg in table.values() if len(pg["bundles_to_node_id"]) == 1
                        for n in pg["bundles_to_node_id"].values()}
            node = next(n for n in workers if n.node_id not in learners)
            workers.remove(node)
            cluster.remove_node(node)
            time.sleep(5)  # the run goes on with what is left; then a new node joins (add_node: main thread only)
            workers.append(cluster.add_node(num_cpus=NODE_CPUS))
            event["bundles_on_added_node"] = bundles_on(workers[-1].node_id, deadline)
        else:
            event["pid"] = sigkill(VICTIMS[victim], rng)
        result["events"].append(event)
        print("chaos:", event, flush=True)
        at = max(at, event["step"])
    trainer.join(timeout=max(1.0, deadline - time.monotonic()))
    if trainer.is_alive():
        result["error"] = f"the run did not finish within {DEADLINE_S} s"
    (out / "result.json").write_text(json.dumps(json_safe(result), indent=2))
    if trainer.is_alive():
        os._exit(1)  # a hung run: the test reports result.json; the cluster's processes are killed by the test
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
