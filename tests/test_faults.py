"""A rollout worker that dies mid-run: Ray restarts it, its prompts are re-queued, the run completes."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from conftest import tiny_overrides

from rlsys.actors.placement import create_actors, setup_learners, shutdown_actors
from rlsys.config import load_config
from rlsys.controller import Controller
from rlsys.metrics import MetricsWriter
from rlsys.prepare import prepare

pytestmark = pytest.mark.slow


def test_killed_rollout_worker_is_restarted_and_its_work_requeued(ray_session, tmp_path):
    ray = ray_session
    steps = 8
    cfg = load_config(None, tiny_overrides(tmp_path, f"train.num_steps={steps}", "train.max_staleness=1"))
    prepared = prepare(cfg)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    actors = create_actors(cfg, prepared.model_dir, str(run_dir / "samples.parquet"))
    metrics = MetricsWriter(run_dir)
    killed = []

    def kill_once(version: int, values: dict) -> None:
        if version == 3 and not killed and "reward" in values:
            ray.kill(actors.rollouts[0], no_restart=False)  # a crash: Ray restarts the actor
            killed.append(version)

    try:
        setup_learners(actors.learners)
        summary = Controller(cfg, actors, prepared.train_prompts, prepared.eval_prompts, metrics, kill_once).run()
        ray.get(actors.buffer.close.remote(summary.steps))
        assert ray.get(actors.rollouts[0].version.remote()) == steps  # restarted, then caught up on weights
    finally:
        metrics.close()
        shutdown_actors(actors)
    assert killed == [3]
    assert summary.steps == steps
    assert summary.lost_requests >= 1
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    trained = [r for r in rows if r["dropped"] == ""]
    assert len({(r["prompt_id"], r["epoch"], r["learner_version"]) for r in trained}) == steps * 4
    # whatever the restarted worker produced before its weights arrived was dropped as stale, and said so
    assert all(r["learner_version"] - r["version"] <= 1 for r in trained)
    assert {r["dropped"] for r in rows} <= {"", "run ended before it was trained", "stale: older than 1 versions"}


@pytest.mark.parametrize("victim", ["buffer", "learner"])
def test_a_dead_actor_the_run_cannot_do_without_stops_it_naming_the_actor(ray_session, tmp_path, victim):
    """The buffer and the learners are not restarted: their death stops the run at once with ActorLost, naming
    the actor, instead of a raw Ray error (learner) or a loop re-generating prompts whose batches cannot land
    (buffer)."""
    import time

    from rlsys.failures import ActorLost

    ray = ray_session
    cfg = load_config(None, tiny_overrides(tmp_path, "train.num_steps=40"))
    prepared = prepare(cfg)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    actors = create_actors(cfg, prepared.model_dir, str(run_dir / "samples.parquet"))
    metrics = MetricsWriter(run_dir)
    killed_at = []

    def kill_once(version: int, values: dict) -> None:
        if version == 2 and not killed_at:
            ray.kill(actors.buffer if victim == "buffer" else actors.learners[0], no_restart=True)
            killed_at.append(time.monotonic())

    try:
        setup_learners(actors.learners)
        with pytest.raises(ActorLost) as info:
            Controller(cfg, actors, prepared.train_prompts, prepared.eval_prompts, metrics, kill_once).run()
        stopped_after = time.monotonic() - killed_at[0]
    finally:
        metrics.close()
        shutdown_actors(actors)
    name = "the buffer actor" if victim == "buffer" else "learner rank 0"
    assert f"{name} died at version " in str(info.value) and "the run cannot go on without it" in str(info.value)
    # Functional bound, not a timing threshold: far below the stall timeout a silent loop would have run into.
    from rlsys.controller import STALL_TIMEOUT_S

    assert stopped_after < STALL_TIMEOUT_S / 4


def test_workers_dead_for_good_are_replaced_and_the_run_completes(ray_session, tmp_path):
    """Killed with no restart (as when Ray's restart budget is used up) — the rollout worker at version 2, the
    reward worker at version 4: the controller sees each is gone for good, puts a new actor in its bundle (sent the
    current weights, for a rollout worker), and the run ends with every step trained."""
    ray = ray_session
    steps = 8
    cfg = load_config(None, tiny_overrides(tmp_path, f"train.num_steps={steps}"))
    prepared = prepare(cfg)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    actors = create_actors(cfg, prepared.model_dir, str(run_dir / "samples.parquet"))
    metrics = MetricsWriter(run_dir)
    killed = {}

    def kill_for_good(version: int, values: dict) -> None:
        for at, kind, workers in ((2, "rollout", actors.rollouts), (4, "reward", actors.rewards)):
            if version == at and kind not in killed:
                ray.kill(workers[0], no_restart=True)
                killed[kind] = version

    try:
        setup_learners(actors.learners)
        summary = Controller(cfg, actors, prepared.train_prompts, prepared.eval_prompts, metrics, kill_for_good).run()
        ray.get(actors.buffer.close.remote(summary.steps))
        assert ray.get(actors.rollouts[0].version.remote()) == steps  # the replacement caught up on weights
    finally:
        metrics.close()
        shutdown_actors(actors)
    assert killed == {"rollout": 2, "reward": 4} and summary.steps == steps and summary.replaced_workers == 2
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    trained = [r for r in rows if r["dropped"] == ""]
    assert len({(r["prompt_id"], r["epoch"], r["learner_version"]) for r in trained}) == steps * 4
