"""Actors that die mid-run: a restarted or replaced worker takes its work back (requests re-queued, an evaluation
repeated). The death of an actor holding the run's state (a learner rank, the buffer), which the controller names
and the run rebuilds from a checkpoint, is tests/test_recovery.py."""

from __future__ import annotations

import logging
import os
import time

import pytest
from conftest import controller_run

from rlsys.actors.rollout import RolloutWorker
from rlsys.rollout_pool import MAX_REQUESTS_PER_WORKER

pytestmark = pytest.mark.slow


def test_killed_rollout_worker_is_restarted_and_its_work_requeued(ray_session, tmp_path, caplog):
    ray = ray_session
    caplog.set_level(logging.WARNING, logger="rlsys.controller")
    steps = 8
    killed = []
    with controller_run(tmp_path, f"train.num_steps={steps}", "train.max_staleness=1") as run:
        def kill_once(version: int, values: dict) -> None:
            if version == 3 and not killed and "reward" in values:
                ray.kill(run.actors.rollouts[0], no_restart=False)  # a crash: Ray restarts the actor
                killed.append(version)

        summary = run.run(on_step=kill_once)
        assert ray.get(run.actors.rollouts[0].version.remote()) == steps  # restarted, then caught up on weights
    assert killed == [3]
    assert summary.steps == steps
    assert summary.lost_requests >= 1
    rows = run.rows()
    trained = [r for r in rows if r["dropped"] == ""]
    assert len({(r["prompt_id"], r["epoch"], r["learner_version"]) for r in trained}) == steps * 4
    # whatever the restarted worker produced before its weights arrived was dropped as stale, and said so
    assert all(r["learner_version"] - r["version"] <= 1 for r in trained)
    assert {r["dropped"] for r in rows} <= {"", "run ended before it was trained", "stale: older than 1 versions"}
    # While Ray restarts it, the worker refuses every call at once: it is left alone (doubling back-off) and the
    # restart is one line, not a warning per refused request every few milliseconds.
    lost = [r for r in caplog.records if r.getMessage().startswith("lost a request")]
    assert len(lost) <= MAX_REQUESTS_PER_WORKER + 1, [r.getMessage()[:120] for r in lost]
    assert sum(r.getMessage().startswith("rollout worker 0 is restarting;") for r in caplog.records) <= 1


def test_workers_dead_for_good_are_replaced_and_the_run_completes(ray_session, tmp_path):
    """Killed with no restart (as when Ray's restart budget is used up) — the rollout worker at version 2, the
    reward worker at version 4: the controller sees each is gone for good, puts a new actor in its bundle (sent the
    current weights, for a rollout worker), and the run ends with every step trained."""
    ray = ray_session
    steps = 8
    killed = {}
    with controller_run(tmp_path, f"train.num_steps={steps}") as run:
        def kill_for_good(version: int, values: dict) -> None:
            for at, kind, workers in ((2, "rollout", run.actors.rollouts), (4, "reward", run.actors.rewards)):
                if version == at and kind not in killed:
                    ray.kill(workers[0], no_restart=True)
                    killed[kind] = version

        summary = run.run(on_step=kill_for_good)
        assert ray.get(run.actors.rollouts[0].version.remote()) == steps  # the replacement caught up on weights
    assert killed == {"rollout": 2, "reward": 4} and summary.steps == steps and summary.replaced_workers == 2
    rows = run.rows()
    trained = [r for r in rows if r["dropped"] == ""]
    assert len({(r["prompt_id"], r["epoch"], r["learner_version"]) for r in trained}) == steps * 4


class DiesOnItsFirstEvaluation(RolloutWorker):
    """A real rollout worker whose process exits in its first evaluation (greedy) call, as one killed mid-call."""

    def __init__(self, *args, marker: str = "") -> None:
        super().__init__(*args)
        self.marker = marker

    def generate(self, request_id, prompts, greedy=False, **kwargs):
        if greedy and os.path.exists(self.marker):
            os.remove(self.marker)
            os._exit(1)
        return super().generate(request_id, prompts, greedy, **kwargs)


def test_an_evaluation_lost_with_its_worker_is_repeated_on_the_replacement(ray_session, tmp_path):
    """The first evaluation's worker dies for good mid-call: the evaluation is repeated after a wait, on the new
    worker that replaced it. Repeated at once, every attempt hit the dead actor within milliseconds; and while it
    waits, the replacement may train the run ahead, so weight syncs wait for it: it is still version 0's."""
    ray = ray_session
    steps, marker = 3, tmp_path / "armed"
    marker.touch()
    with controller_run(tmp_path, f"train.num_steps={steps}", "rollout.num_workers=1") as run:
        ray.kill(run.actors.rollouts[0])
        run.actors.rollouts[0] = ray.remote(DiesOnItsFirstEvaluation).options(num_cpus=0, max_restarts=0).remote(
            0, run.prepared.model_dir, run.cfg.rollout, run.cfg.task, run.actors.packed_model, marker=str(marker))
        summary = run.run()
    assert not marker.exists(), "the worker never evaluated"
    assert summary.replaced_workers == 1
    assert set(summary.eval_accuracy) == {0, steps}


class SlowToStartHangsOnce(RolloutWorker):
    """A real rollout worker that takes ``start_s`` to start (as loading a large model does), and whose third
    generate() call -- in whichever process finds ``marker`` -- hangs for five minutes."""

    def __init__(self, *args, start_s: float = 0.0, marker: str = "") -> None:
        time.sleep(start_s)
        super().__init__(*args)
        self.marker, self.calls = marker, 0

    def generate(self, request_id, prompts, greedy=False, **kwargs):
        self.calls += not greedy
        if self.calls == 3 and os.path.exists(self.marker):
            os.remove(self.marker)
            time.sleep(300)
        return super().generate(request_id, prompts, greedy, **kwargs)


def test_a_hung_rollout_worker_is_restarted_but_a_slow_starting_one_is_not(ray_session, tmp_path, caplog):
    """rollout.hang_timeout_s=4: the worker's hung call is given up, the worker restarted and its requests
    re-queued, and the run completes; while it starts (8 s, twice as long as the timeout), nothing is killed."""
    ray = ray_session
    steps, marker, hang_s = 6, tmp_path / "armed", 4
    marker.touch()
    with controller_run(tmp_path, f"train.num_steps={steps}", f"rollout.hang_timeout_s={hang_s}",
                        "train.max_staleness=1") as run:
        ray.kill(run.actors.rollouts[0])
        run.actors.rollouts[0] = ray.remote(SlowToStartHangsOnce).options(num_cpus=0, max_restarts=1).remote(
            0, run.prepared.model_dir, run.cfg.rollout, run.cfg.task, run.actors.packed_model, start_s=2 * hang_s,
            marker=str(marker))
        with caplog.at_level("WARNING", logger="rlsys.controller"):
            summary = run.run()
    assert not marker.exists(), "the worker never hung"
    hung = [r for r in caplog.records if "taking it for hung" in r.getMessage()]
    assert len(hung) == 1, [r.getMessage() for r in hung]  # the hang, not either start
    assert summary.steps == steps and summary.lost_requests >= 1 and summary.replaced_workers == 0
    trained = [r for r in run.rows() if r["dropped"] == ""]
    assert len({(r["prompt_id"], r["epoch"], r["learner_version"]) for r in trained}) == steps * 4


class SlowEvaluations(RolloutWorker):
    """A real rollout worker whose evaluations (greedy calls) take ``eval_s`` longer, as a large held-out set does."""

    def __init__(self, *args, eval_s: float = 0.0) -> None:
        super().__init__(*args)
        self.eval_s = eval_s

    def generate(self, request_id, prompts, greedy=False, **kwargs):
        if greedy:
            time.sleep(self.eval_s)
        return super().generate(request_id, prompts, greedy, **kwargs)


def test_a_long_evaluation_is_not_taken_for_a_hang(ray_session, tmp_path, caplog):
    """Evaluations every 2 steps, each 3x rollout.hang_timeout_s long, on the worker that generates: requests queued
    behind them wait, and the worker is not restarted for it."""
    ray = ray_session
    steps, hang_s = 4, 2
    with controller_run(tmp_path, f"train.num_steps={steps}", f"rollout.hang_timeout_s={hang_s}",
                        "train.eval_every=2", "train.max_staleness=1") as run:
        ray.kill(run.actors.rollouts[0])
        run.actors.rollouts[0] = ray.remote(SlowEvaluations).options(num_cpus=0).remote(
            0, run.prepared.model_dir, run.cfg.rollout, run.cfg.task, run.actors.packed_model, eval_s=3 * hang_s)
        with caplog.at_level("WARNING", logger="rlsys.controller"):
            summary = run.run()
    assert not [r.getMessage() for r in caplog.records if "taking it for hung" in r.getMessage()]
    assert summary.lost_requests == 0 and set(summary.eval_accuracy) == {0, 2, 4}
