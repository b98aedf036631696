"""The agent loop with real environment workers (Ray actors) and the tiny policy's HF engine: what a trajectory's
tokens, mask and logprobs are, its limits, the isolation of environments that fail, and concurrency; then whole
runs with the calculator."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from conftest import tiny_overrides
from transformers import AutoTokenizer

from rlsys.actors.env import EnvWorker
from rlsys.agent_loop import AgentLoop
from rlsys.cli import main
from rlsys.config import EnvConfig, TaskConfig, load_config
from rlsys.data.chat import PromptFormat
from rlsys.engines.generation import HFEngine
from rlsys.metrics import read_metrics
from rlsys.report import inspect_run
from rlsys.train import train

CALCULATOR = ("task.name=synthetic_multiplication", "env.name=calculator", "warmup.target_accuracy=0",
              "env.params={open: '[', close: ']', observation_template: '={result} ', demo_tool_rate: 0.5}",
              "env.max_turns=3", "rollout.max_new_tokens=24")


@pytest.fixture(scope="module")
def policy(tiny_policy):
    model_dir, prompts = tiny_policy
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fmt = PromptFormat.of(tokenizer, TaskConfig())
    engine = HFEngine(model_dir, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer=tokenizer)
    return engine, fmt, prompts


_STARTED: list = []  # the environment workers the current test started: killed after it


def kill_env_workers() -> None:
    while _STARTED:
        ray.kill(_STARTED.pop(), no_restart=True)


@pytest.fixture(autouse=True)
def _kill_env_workers():
    yield
    kill_env_workers()


class SlowToRestart(EnvWorker):
    """An environment worker whose restarts take ``restart_s`` more than a start (its first start makes ``marker``)."""

    def __init__(self, name: str, params: dict, marker: str, restart_s: float) -> None:
        if os.path.exists(marker):
            time.sleep(restart_s)
        open(marker, "w").close()
        super().__init__(name, params)


class Forgetful(EnvWorker):
    """An environment worker that loses each trajectory's environment once, at its first step — as one that
    restarted while the trajectory was generating would."""

    def __init__(self, name: str, params: dict) -> None:
        super().__init__(name, params)
        self.forgot: set[str] = set()

    def step(self, key: str, action: str):
        if key not in self.forgot:
            self.forgot.add(key)
            self.envs.pop(key, None)
        return super().step(key, action)


def env_workers(name: str, params: dict | None = None, n: int = 1, cls: type = EnvWorker, *args) -> list:
    """``n`` environment workers (``cls``, built with ``args`` after the name and params), up (their processes
    started); this module kills them when its test ends."""
    workers = [ray.remote(cls).options(max_restarts=-1, max_task_retries=0, max_concurrency=16, num_cpus=0)
               .remote(name, params or {}, *args) for _ in range(n)]
    _STARTED.extend(workers)
    ray.get([w.__ray_ready__.remote() for w in workers])
    return workers


def loop(policy, name: str, params: dict | None = None, budget: int = 40, workers: int = 1, **env) -> AgentLoop:
    engine, fmt, _ = policy
    cfg = EnvConfig(name=name, params=params or {}, **{"max_action_tokens": 4, **env})
    return AgentLoop(engine, fmt, env_workers(name, params, workers), cfg, budget, temperature=1.0)


def runs_of(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """(value, start, stop) of each run of equal values."""
    edges = [0, *np.flatnonzero(np.diff(mask)) + 1, len(mask)]
    return [(int(mask[a]), a, b) for a, b in zip(edges, edges[1:])]


def test_a_trajectory_is_its_actions_as_sampled_and_the_observations_masked_out(ray_session, policy):
    engine, fmt, prompts = policy
    rollouts = loop(policy, "env_fixtures:Scripted", {"observation": "12", "turns": 3}).run(prompts[:6], seed=1)
    observed = fmt.observation_ids(prompts[0], "12")
    for r, prompt in zip(rollouts, prompts):
        turns = r.trajectory.turns
        assert [t.done for t in turns] == [False, False, True] and r.trajectory.error is None
        assert (r.finish_reason, r.trajectory.tool_calls) == ("stop", 2)
        assert r.prompt_ids == fmt.encode(prompt)
        segments = runs_of(r.loss_mask)
        assert [v for v, _, _ in segments] == [1, 0, 1, 0, 1]
        for (value, a, b), turn in zip(segments[::2], turns):  # each action: the text of its sampled tokens
            assert fmt.tokenizer.decode(r.response_ids[a:b], skip_special_tokens=True) == turn.action
        for _, a, b in segments[1::2]:  # each observation: the rendered observation's ids, logprob 0
            assert r.response_ids[a:b].tolist() == observed
            assert not r.behaviour_logprobs[a:b].any()
        # The behaviour logprobs are the policy's, each action token in its whole context (observations included):
        # teacher-forcing the trajectory scores every action token as it was sampled.
        scored = engine.score([r.prompt_ids], [r.response_ids.tolist()], 1.0)[0]
        on = r.loss_mask == 1
        np.testing.assert_allclose(scored[on], r.behaviour_logprobs[on], atol=1e-4)


def test_a_trajectory_stops_at_the_token_budget_and_at_max_turns(ray_session, policy):
    _, _, prompts = policy
    long = loop(policy, "env_fixtures:Scripted", {"turns": 100}, budget=14, max_turns=100).run(prompts[:4], seed=2)
    for r in long:
        assert len(r.response_ids) <= 14 and r.finish_reason == "length"
        assert r.stop_reason == "rollout.max_new_tokens=14" or len(r.response_ids) == 14
    short = loop(policy, "env_fixtures:Scripted", {"turns": 100}, max_turns=2).run(prompts[:4], seed=2)
    for r in short:
        assert len(r.trajectory.turns) == 2 and (r.finish_reason, r.stop_reason) == ("length", "env.max_turns=2")


def test_step_info_is_kept_as_json_and_a_first_observation_past_the_budget_fails(ray_session, policy):
    _, _, prompts = policy
    (r,) = loop(policy, "env_fixtures:FailsOn", {"prompt": prompts[0].text, "how": "lock"}).run(prompts[:1], seed=3)
    assert r.trajectory.error is None and r.trajectory.turns[0].info["lock"].startswith("<unlocked _thread.lock")
    (r,) = loop(policy, "env_fixtures:FirstObservation", {"hint": "7" * 50}, budget=40).run(prompts[:1], seed=3)
    assert "first observation (reset()) is longer than rollout.max_new_tokens=40" in r.trajectory.error


def test_a_final_action_cut_by_the_budget_is_a_truncated_trajectory_though_the_environment_ends_it(ray_session,
                                                                                                       policy):
    engine, _, prompts = policy
    rollouts = loop(policy, "env_fixtures:Scripted", {"turns": 1}, budget=2, max_action_tokens=0).run(prompts[:8],
                                                                                                    seed=9)
    for r in rollouts:
        assert r.trajectory.turns[-1].done
        ended = int(r.response_ids[-1]) in engine.end_ids
        assert (r.finish_reason, bool(r.stop_reason)) == (("stop", True) if ended else ("length", False))
    assert any(r.finish_reason == "length" for r in rollouts)  # 2-digit sums need 3-4 tokens with the EOS


def test_a_first_observation_follows_the_prompt(ray_session, policy):
    _, fmt, prompts = policy
    (r,) = loop(policy, "env_fixtures:FirstObservation").run(prompts[:1], seed=3)
    assert r.trajectory.first_observation == "Hint: 7"
    assert r.prompt_text == fmt.render(prompts[0]) + "Hint: 7" and r.prompt_ids == fmt.encode_text(r.prompt_text)


@pytest.mark.parametrize(("how", "error"), [
    ("raise", "environment 'env_fixtures:FailsOn' raised in step(): RuntimeError: the tool broke"),
    ("junk", "step() returned 'only an observation'; expected a tuple"),
    ("exit", "environment worker 0 died during this replay()"),  # replayed MAX_LOST times, dying each time
    ("surrogate", "step() returned observation text that is not valid Unicode"),
    ("interrupt", "raised in step(): KeyboardInterrupt"),
])
def test_an_environment_that_fails_fails_its_trajectory_only(ray_session, policy, how, error):
    _, _, prompts = policy
    target = prompts[0].text
    workers = 2 if how == "exit" else 1  # a dying worker takes its trajectories with it: the others are on another
    rollouts = loop(policy, "env_fixtures:FailsOn", {"prompt": target, "how": how}, workers=workers).run(
        [prompts[0], prompts[1], prompts[0], prompts[1]], seed=4)
    for r in rollouts[::2]:
        assert error in r.trajectory.error
    for r in rollouts[1::2]:
        assert r.trajectory.error is None and len(r.trajectory.turns) == 3


def test_a_hanging_step_times_out_and_its_worker_is_restarted_with_the_other_trajectories_replayed(ray_session,
                                                                                                      policy):
    """One worker hosts all three trajectories; prompt 0's step hangs. The other two are rebuilt on the restarted
    worker by replaying their actions, and finish."""
    _, _, prompts = policy
    agent = loop(policy, "env_fixtures:FailsOn", {"prompt": prompts[0].text, "how": "hang"}, step_timeout_s=3.0)
    hung, *others = agent.run([prompts[0], prompts[1], prompts[1]], seed=5)
    assert "step() timed out after env.step_timeout_s=3 s (environment worker 0 was restarted)" in hung.trajectory.error
    assert [(r.trajectory.error, len(r.trajectory.turns)) for r in others] == [(None, 3), (None, 3)]
    again = agent.run([prompts[1], prompts[1]], seed=6)  # worker 0 (restarted by Ray) serves trajectories again
    assert [(r.trajectory.error, len(r.trajectory.turns)) for r in again] == [(None, 3), (None, 3)]


def run_killed(agent: AgentLoop, prompts: list, after_s: float = 1.5) -> list:
    """``agent.run(prompts)``, its worker 0 killed (Ray restarts it) ``after_s`` into the run."""
    out, errors = [], []

    def run() -> None:
        try:
            out.extend(agent.run(prompts, seed=8))
        except BaseException as e:  # noqa: BLE001  re-raised below, in the test's thread
            errors.append(e)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    time.sleep(after_s)
    ray.kill(agent.envs[0], no_restart=False)
    runner.join(timeout=180)
    if errors:
        raise errors[0]
    assert len(out) == len(prompts), "the run did not finish within 180 s of the kill"
    return out


@pytest.mark.parametrize("env", ["FailsOn", "Unrepeatable"])
def test_a_worker_killed_mid_trajectory_is_rebuilt_by_replaying_the_actions(ray_session, policy, env):
    """Every step sleeps 1 s; the worker is killed 1.5 s in, during each trajectory's first or second step. A
    deterministic environment is rebuilt on the restarted worker and the trajectories finish; one whose (first)
    observation differs on the replay fails them, saying why."""
    _, _, prompts = policy
    agent = loop(policy, f"env_fixtures:{env}", {"any_of": "0123456789", "how": "sleep", "sleep_s": 1.0})
    for r in run_killed(agent, prompts[:3]):
        if env == "FailsOn":
            assert (r.trajectory.error, len(r.trajectory.turns)) == (None, 3)
        else:
            assert "the environment is not deterministic" in (r.trajectory.error or ""), r.trajectory


@pytest.mark.parametrize("restart_timeout_s", [120.0, 2.0])
def test_a_restart_slower_than_a_step_is_waited_for_up_to_the_restart_timeout(ray_session, policy, tmp_path,
                                                                               restart_timeout_s):
    """The worker is killed mid-step, as above, and takes 10 s to come back — over env.step_timeout_s=3 s. Its
    trajectories wait for it and finish; with env.restart_timeout_s=2 s they fail, naming it."""
    engine, fmt, prompts = policy
    params = {"any_of": "0123456789", "how": "sleep", "sleep_s": 1.0}
    cfg = EnvConfig(name="env_fixtures:FailsOn", params=params, max_action_tokens=4, step_timeout_s=3.0,
                    restart_timeout_s=restart_timeout_s)
    workers = env_workers(cfg.name, params, 1, SlowToRestart, str(tmp_path / "started"), 10.0)
    out = run_killed(AgentLoop(engine, fmt, workers, cfg, 40, temperature=1.0), prompts[:3])
    for r in out:
        if restart_timeout_s > 10:
            assert (r.trajectory.error, len(r.trajectory.turns)) == (None, 3)
        else:
            assert "env.restart_timeout_s=2 s" in (r.trajectory.error or ""), r.trajectory


def test_a_step_that_finds_its_environment_gone_is_replayed(ray_session, policy):
    """Each trajectory's first step reaches a worker that no longer has its environment (it restarted while the
    policy generated): the trajectory is replayed there and finishes."""
    engine, fmt, prompts = policy
    cfg = EnvConfig(name="env_fixtures:Scripted", params={"turns": 3}, max_action_tokens=4)
    agent = AgentLoop(engine, fmt, env_workers(cfg.name, cfg.params, 1, Forgetful), cfg, 40, temperature=1.0)
    for r in agent.run(prompts[:3], seed=9):
        assert (r.trajectory.error, [t.info["turn"] for t in r.trajectory.turns]) == (None, [1, 2, 3])


def test_a_slow_tool_call_holds_up_only_its_own_trajectory(ray_session, policy):
    """Prompt 0's steps sleep 2 s each; prompt 1's trajectory takes all its turns meanwhile."""
    _, _, prompts = policy
    slow, fast = loop(policy, "env_fixtures:FailsOn", {"prompt": prompts[0].text, "how": "sleep", "sleep_s": 2.0}
                      ).run([prompts[0], prompts[1]], seed=7)
    assert fast.trajectory.turns[-1].info["at"] < slow.trajectory.turns[0].info["at"]


# ---- whole runs ----

@pytest.mark.slow
def test_a_calculator_run_logs_its_trajectories(ray_session, tmp_path):
    summary, run_dir = train(load_config(None, tiny_overrides(
        tmp_path, *CALCULATOR, "train.num_steps=3", "train.eval_every=3", "task.num_eval=16")))
    assert summary.steps == 3
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    trained = [r for r in rows if r["dropped"] == ""]
    assert len(trained) == 3 * 4 * 4
    for r in trained:
        assert r["turns"] and r["turns"][-1]["done"] or r["finish_reason"] == "length"
        assert len(r["loss_mask"]) == len(r["response_ids"]) <= 24
        calls = [t for t in r["turns"] if not t["done"]]
        # the character tokenizer: one observation token per character the calculator answered
        assert sum(1 - m for m in r["loss_mask"]) == sum(len(t["observation"]) for t in calls)
    assert any(len(r["turns"]) > 1 for r in trained)  # the warm-up's tool demonstrations make the policy call it
    metrics = read_metrics(run_dir)
    steps = [m for m in metrics if "rollout/tool_call_rate" in m]  # the steps during which trajectories arrived
    assert steps and all(0 <= m["rollout/tool_call_rate"] <= 1 and m["rollout/turns"] >= 1 for m in steps)
    evals = [m for m in metrics if "eval/accuracy" in m]
    assert len(evals) == 2 and all("eval/tool_call_rate" in m and "eval/turns" in m for m in evals)
    # the summary and rlsys inspect carry the same held-out figures, by version
    assert summary.eval_trajectories == {m["step"]: {k: m[f"eval/{k}"] for k in
                                                     ("turns", "tool_calls", "tool_call_rate", "env_failures")}
                                         for m in evals}
    shown = f"{evals[0]['eval/tool_call_rate']:.1%} ({evals[0]['eval/turns']:.2f})"
    assert f"held-out tool-call rate (turns per trajectory) by version: 0: {shown}" in inspect_run(run_dir)
    # rlsys eval of the final model runs the same greedy trajectories on the same held-out prompts
    out = tmp_path / "eval.parquet"
    assert main(["eval", str(run_dir / "model"), "--output", str(out), *tiny_overrides(
        tmp_path, *CALCULATOR, "task.num_eval=16")]) == 0
    problems = pq.read_table(out).to_pylist()
    assert len(problems) == 16
    # greedy on the same weights, one problem of slack for float differences between the two engines' batches
    assert sum(p["greedy_correct"] for p in problems) / 16 == pytest.approx(summary.eval_accuracy[3], abs=1 / 16)
    assert sum(p["greedy_tool_calls"] > 0 for p in problems) / 16 == pytest.approx(evals[-1]["eval/tool_call_rate"],
                                                                                    abs=1 / 16)


@pytest.mark.slow
def test_trajectories_whose_environment_failed_are_counted_and_do_not_train(ray_session, tmp_path):
    """The environment raises on every prompt with a 1 or a 2 in it (about 60 % of them: 12 prompts drawn all without
    one has probability ~2e-5)."""
    cfg = load_config(None, tiny_overrides(tmp_path, "train.num_steps=3", "env.name=env_fixtures:FailsOn",
                                           "env.params={any_of: '12', how: raise}", "warmup.target_accuracy=0",
                                           "rollout.max_new_tokens=12", "reward.max_failure_rate=0.95"))
    summary, run_dir = train(cfg)
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    failed = [r for r in rows if r["env_error"]]
    assert failed
    for r in failed:
        assert set(r["prompt"]) & set("12") and r["reward_error"].startswith("environment: ")
        assert "RuntimeError: the tool broke" in r["reward_error"] and r["reward"] != r["reward"]  # NaN
        assert r["dropped"] != ""  # a NaN reward does not train
    assert all(r["env_error"] is None for r in rows if not set(r["prompt"]) & set("12"))
    assert summary.reward_failures == len(failed)
