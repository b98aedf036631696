"""The reward pool under trouble: a reward call that hangs is timed out, its actor restarted and its batch
re-scored; a reward actor killed mid-call is restarted and its batch re-scored; a slow reward slows admission
instead of piling up generated batches. Real Ray actors, real reward processes."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import controller_run

from rlsys.metrics import read_metrics
from rlsys.rollout_pool import MAX_REQUESTS_PER_WORKER

pytestmark = pytest.mark.slow


def run_controller(tmp_path, overrides: list[str], on_actors=None):
    """One run through the controller itself (``on_actors(actors)`` before it starts; it returns a function called
    when the run has ended); returns summary, rows, metrics."""
    with controller_run(tmp_path, *overrides) as run:
        stop = on_actors(run.actors) if on_actors else None
        try:
            summary = run.run()
        finally:
            if stop:
                stop()
    return summary, run.rows(), read_metrics(run.run_dir)


def hang_one_call_after_the_first_step(run_dir, marker, then=None):
    """``on_actors`` for :func:`run_controller`: once the run has logged a training step (so the hang hits a
    training batch, not the first evaluation), create ``marker``, which makes the next reward call hang; when a
    call has taken it, ``then(actors)`` (e.g. kill the reward actor mid-call)."""

    def on_actors(actors):
        done = threading.Event()

        def watch():
            metrics = run_dir / "metrics.jsonl"
            while not done.is_set() and not (metrics.exists() and '"train/' in metrics.read_text()):
                time.sleep(0.1)
            marker.touch()
            while not done.is_set() and marker.exists():
                time.sleep(0.1)
            if then and not done.is_set():
                time.sleep(1.0)  # the call is sleeping inside the reward function
                then(actors)

        threading.Thread(target=watch, daemon=True).start()
        return done.set

    return on_actors


@pytest.mark.parametrize("how", ["timeout", "killed"])
def test_a_stuck_or_killed_reward_call_is_rescored_from_the_same_batch(ray_session, tmp_path, how):
    ray = ray_session
    steps, marker = 6, tmp_path / "armed"
    overrides = [
        f"train.num_steps={steps}", "train.max_staleness=1", "reward.timeout_s=120",
        f"reward.call_timeout_s={8 if how == 'timeout' else 600}",
        "reward.components=[{name: correct, fn: 'reward_fixtures:hangs_when_armed', params: {marker: '%s'}}]" % marker,
    ]

    def kill(actors):
        ray.kill(actors.rewards[0], no_restart=False)  # a crash: Ray restarts it

    on_actors = hang_one_call_after_the_first_step(tmp_path / "run", marker, kill if how == "killed" else None)
    summary, rows, _ = run_controller(tmp_path, overrides, on_actors)
    assert not marker.exists(), "the armed reward call never ran"
    assert summary.steps == steps
    assert summary.reward_retries >= 1  # the stuck/killed call was re-scored ...
    assert summary.lost_requests == 0  # ... from the batch already generated: nothing was generated again
    assert summary.reward_failures == 0
    trained = [r for r in rows if r["dropped"] == ""]
    assert len({(r["prompt_id"], r["epoch"], r["learner_version"]) for r in trained}) == steps * 4
    assert all(r["reward_components"] and r["reward"] == r["reward"] for r in trained)


def test_a_slow_reward_slows_admission_instead_of_queueing_without_bound(ray_session, tmp_path):
    workers = 2
    summary, rows, records = run_controller(tmp_path, [
        "train.num_steps=4", f"rollout.num_workers={workers}", "reward.max_batches_per_call=1",
        "reward.components=[{name: correct, fn: 'reward_fixtures:slow', params: {seconds: 0.03}}]",
    ])
    steps = [r for r in records if "pipeline/reward_queue_max" in r]
    assert len(steps) == 4
    # each rollout worker has at most MAX_REQUESTS_PER_WORKER requests out until they are *in the buffer*
    assert max(r["pipeline/reward_queue_max"] for r in steps) <= workers * MAX_REQUESTS_PER_WORKER
    assert max(r["pipeline/reward_queue_max"] for r in steps) >= 1  # batches did wait: the reward is the bottleneck
    assert sum(r["perf/reward_busy_frac"] for r in steps) / len(steps) > 0.5
    assert all(r["reward_latency/correct_ms_per_sample"] >= 30 for r in steps)
    assert summary.reward_failures == 0 and summary.lost_requests == 0
