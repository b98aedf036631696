"""Bad input never hangs a run: through the real pipeline (Ray actors, DeepSpeed, reward processes), a request that
keeps failing is dropped with its reason after a bounded number of attempts, a pipeline where nothing works stops
with the error, and a reward that fails on most samples stops the run naming the term, its error and an example."""

from __future__ import annotations

import re
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from conftest import controller_run, tiny_overrides

from rlsys.actors.rollout import RolloutWorker
from rlsys.cli import main
from rlsys.config import load_config
from rlsys.failures import MAX_PROMPT_ATTEMPTS, RequestsFailing, RewardsFailing
from rlsys.train import train
from rlsys.types import Prompt

pytestmark = pytest.mark.slow


class RejectsSomePrompts(RolloutWorker):
    """A real rollout worker whose engine refuses some prompts, as an engine with learned absolute positions refuses
    one longer than its context: the whole generate() call raises."""

    def __init__(self, *args, rejected: frozenset[str] = frozenset()) -> None:
        super().__init__(*args)
        self.rejected = rejected

    def generate(self, request_id, prompts, greedy=False, **kwargs):
        bad = [p.prompt_id for p in prompts if p.prompt_id in self.rejected]
        if bad:
            raise ValueError(f"prompt {bad[0]} is longer than the model's context")
        return super().generate(request_id, prompts, greedy, **kwargs)


def with_bad_prompts(prompts: list[Prompt], positions: set[int]) -> list[Prompt]:
    """The first 20 training prompts named p<i>, or bad-<i> at ``positions`` (the engine fixture rejects those)."""
    return [replace(p, prompt_id=f"bad-{i}" if i in positions else f"p{i}") for i, p in enumerate(prompts[:20])]


def run_controller(ray, tmp_path, bad_positions: set[int], *overrides: str):
    with controller_run(tmp_path, *overrides) as run:
        chosen = with_bad_prompts(run.prepared.train_prompts, bad_positions)
        ray.kill(run.actors.rollouts[0])
        run.actors.rollouts[0] = ray.remote(RejectsSomePrompts).options(num_cpus=0).remote(
            0, run.prepared.model_dir, run.cfg.rollout, run.cfg.task, run.actors.packed_model,
            rejected=frozenset(p.prompt_id for p in chosen if p.prompt_id.startswith("bad-")))
        summary = run.run(chosen)
    return summary, run.rows()


def test_a_prompt_whose_requests_keep_failing_is_dropped_with_its_reason_and_the_rest_train(ray_session, tmp_path):
    steps = 8  # 32 groups from 20 prompts: all of epoch 0 is drawn
    summary, rows = run_controller(ray_session, tmp_path, {5, 17}, f"train.num_steps={steps}",
                                   "train.max_staleness=0")
    assert {(f["prompt_id"], f["epoch"]) for f in summary.failed_prompts} >= {("bad-5", 0), ("bad-17", 0)}
    assert {f["prompt_id"] for f in summary.failed_prompts} == {"bad-5", "bad-17"}
    assert all(f["attempts"] == MAX_PROMPT_ATTEMPTS and "longer than the model's context" in f["error"]
               for f in summary.failed_prompts)
    assert summary.steps == steps
    trained = {(r["prompt_id"], r["epoch"]) for r in rows if r["dropped"] == ""}
    assert not {pid for pid, _ in trained} & {"bad-5", "bad-17"}
    # the good prompts that shared a request with a bad one were retried alone, and all of epoch 0 trained
    assert {pid for pid, epoch in trained if epoch == 0} == {f"p{i}" for i in range(20)} - {"p5", "p17"}


def test_a_pipeline_where_every_request_fails_stops_with_the_error(ray_session, tmp_path):
    with pytest.raises(RequestsFailing, match="requests all failed.*longer than the model's context"):
        run_controller(ray_session, tmp_path, set(range(20)), "train.num_steps=4")


def test_a_reward_that_fails_on_every_sample_stops_the_run_naming_it(ray_session, tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, "reward.fn=reward_fixtures:raises", "reward.failure_window=64",
                               "train.num_steps=200")
    with pytest.raises(RewardsFailing) as info:
        train(load_config(None, overrides))
    message = str(info.value)
    assert re.search(r"failed on (\d+) of the last \1 samples \(100%\)", message), message
    for needle in ("reward.max_failure_rate=0.5", "'raises'",
                   "RuntimeError: reward exploded on", "e.g. prompt 'add"):
        assert needle in message, message
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()  # flushed, readable after the stop
    assert rows and all(r["reward_error"] for r in rows)
    assert main(["train", *overrides]) == 3
    assert "the run stopped: the reward failed on" in capsys.readouterr().err
