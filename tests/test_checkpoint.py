"""Full-state checkpoints (rlsys.checkpoint): atomic writes, manifests that catch damage, retention, and what a run's
checkpoint holds (DeepSpeed state of every learner rank, the policy as a Hugging Face checkpoint, the driver's state),
and resuming from them: bit for bit at η = 0, exactly once at η = 1, after a SIGKILL of the driver. Going back to
one inside the job is tests/test_recovery.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from rlsys.checkpoint import MANIFEST, STATE, CheckpointDir, checkpoints, latest_valid, verify
from rlsys.config import ConfigError, load_config
from rlsys.data.tasks import PromptStream
from rlsys.types import Prompt


def _write(store: CheckpointDir, version: int, payload: bytes = b"weights") -> None:
    tmp = store.begin(version)
    (tmp / "deepspeed").mkdir()
    (tmp / "deepspeed" / "shard.pt").write_bytes(payload * 100)
    store.commit(tmp, version, {"version": version})


def test_a_committed_checkpoint_verifies_and_only_the_newest_are_kept(tmp_path):
    store = CheckpointDir(tmp_path, keep=2)
    for v in (2, 4, 6):
        _write(store, v)
    assert [p.name for p in checkpoints(store.root)] == ["step-00000004", "step-00000006"]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no temporary directory left
    newest = store.root / "step-00000006"
    assert verify(newest) is None and json.loads((newest / STATE).read_text()) == {"version": 6}
    manifest = json.loads((newest / MANIFEST).read_text())
    assert set(manifest["files"]) == {"deepspeed/shard.pt", STATE} and manifest["version"] == 6


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda p: (p / "deepspeed" / "shard.pt").write_bytes(b"short"), "has 5 bytes, the manifest says 700"),
    (lambda p: (p / "deepspeed" / "shard.pt").write_bytes(b"x" * 700), "does not match its SHA-256"),
    (lambda p: (p / "deepspeed" / "shard.pt").unlink(), "deepspeed/shard.pt is missing"),
    (lambda p: (p / MANIFEST).unlink(), "no MANIFEST.json"),
    (lambda p: (p / MANIFEST).write_text("{not json"), "MANIFEST.json is unreadable"),
])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(tmp_path, damage, reason):
    store = CheckpointDir(tmp_path, keep=3)
    _write(store, 1)
    _write(store, 2)
    damage(store.root / "step-00000002")
    path, skipped = latest_valid(store.root)
    assert path == store.root / "step-00000001"
    assert len(skipped) == 1 and skipped[0].startswith("step-00000002: ") and reason in skipped[0]


def test_an_unfinished_checkpoint_is_invisible(tmp_path):
    store = CheckpointDir(tmp_path, keep=2)
    _write(store, 1)
    tmp = store.begin(2)  # a crash while the learners write
    (tmp / "half.pt").write_bytes(b"x")
    assert latest_valid(store.root) == (store.root / "step-00000001", [])
    assert latest_valid(tmp_path / "nowhere") == (None, [])


def test_checkpoint_settings_are_checked():
    with pytest.raises(ConfigError, match="train.keep_checkpoints=0"):
        load_config(None, ["train.keep_checkpoints=0"])
    with pytest.raises(ConfigError, match="train.checkpoint_every=-1"):
        load_config(None, ["train.checkpoint_every=-1"])


def test_the_prompt_stream_continues_from_its_state_and_detects_a_changed_dataset():
    prompts = [Prompt(f"p{i}", f"{i}+1=", str(i + 1)) for i in range(7)]
    stream = PromptStream(prompts, seed=3)
    handed = [stream.next() for _ in range(9)]  # into the second epoch
    stream.requeue(handed[-2:])  # lost generations, given back
    state = json.loads(json.dumps(stream.state()))  # as state.json holds it
    again = PromptStream(prompts, seed=99)  # another seed: everything comes from the state
    again.restore(state)
    assert [(p.prompt_id, p.epoch) for p in (stream.next() for _ in range(20))] == \
        [(p.prompt_id, p.epoch) for p in (again.next() for _ in range(20))]
    with pytest.raises(ValueError, match=r"not in the training prompts \(the dataset changed\)"):
        PromptStream(prompts[:3], seed=3).restore(state)


@pytest.mark.slow
def test_a_run_checkpoints_every_k_steps_and_at_the_end(ray_session, tmp_path):
    """GAE (a critic beside the policy), two learner ranks under ZeRO-2: every rank's DeepSpeed state, the policy
    export equal to the run's final model, the driver's state at that version."""
    from transformers import AutoModelForCausalLM

    from rlsys.metrics import read_metrics
    from rlsys.train import train

    summary, run_dir = train(load_config(None, tiny_overrides(
        tmp_path, "train.num_steps=5", "train.checkpoint_every=2", "train.keep_checkpoints=2",
        "algo.advantage=gae", "learner.num_learners=2", "learner.zero_stage=2", "train.max_staleness=0")))
    root = run_dir / "checkpoints"
    assert [p.name for p in checkpoints(root)] == ["step-00000004", "step-00000005"]  # 2 dropped, the end added
    path, skipped = latest_valid(root)
    assert path == root / "step-00000005" and skipped == []
    files = set(json.loads((path / MANIFEST).read_text())["files"])
    for tag in ("policy", "critic"):
        assert {f"deepspeed/{tag}/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= files, files
        assert f"deepspeed/{tag}/mp_rank_00_model_states.pt" in files
    state = json.loads((path / STATE).read_text())
    assert state["version"] == 5 and state["stream"]["epoch"] == 0
    # the evaluations finished when the checkpoint was taken: version 5's comes after it (eval_every=0)
    assert state["eval_accuracy"] == [[0, summary.eval_accuracy[0]]] and set(summary.eval_accuracy) == {0, 5}
    exported = AutoModelForCausalLM.from_pretrained(path / "policy").state_dict()
    final = AutoModelForCausalLM.from_pretrained(run_dir / "model").state_dict()
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)
    earlier = AutoModelForCausalLM.from_pretrained(root / "step-00000004" / "policy").state_dict()
    assert not all(torch.equal(earlier[k], final[k]) for k in final)  # a step later, other weights
    logged = [m for m in read_metrics(run_dir) if "checkpoint/seconds" in m]
    assert [m["step"] for m in logged] == [2, 4, 5] and all(np.isfinite(m["checkpoint/gb"]) for m in logged)
    assert json.loads((run_dir / "summary.json").read_text())["checkpoints"] == [str(root / "step-00000004"), str(path)]


def _final_weights(run_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(run_dir / "model").state_dict()


@pytest.mark.slow
def test_a_synchronous_run_resumed_from_a_checkpoint_ends_with_the_same_weights_bit_for_bit(ray_session, tmp_path):
    """η = 0: an uninterrupted run of 6 steps, against one that checkpoints at step 3, does a 4th step whose
    checkpoint is then lost (a crash after it), and is resumed from step 3 to step 6. Sampling is seeded per
    request (rlsys.actors.rollout.request_seed), so the resumed run generates what the uninterrupted one did."""
    import pyarrow.parquet as pq

    from rlsys.train import train

    common = ("train.max_staleness=0", "rollout.num_workers=2", "reward.num_workers=1")
    _, straight = train(load_config(None, tiny_overrides(tmp_path / "a", "train.num_steps=6", *common)))
    _, run_dir = train(load_config(None, tiny_overrides(
        tmp_path / "b", "train.num_steps=4", "train.checkpoint_every=3", "output.run_name=b", *common)))
    import shutil

    shutil.rmtree(run_dir / "checkpoints" / "step-00000004")  # the crash: step 4 was trained and logged, not saved
    summary, resumed = train(load_config(run_dir / "config.yaml", ["train.num_steps=6", "train.resume=true"]))
    assert resumed == run_dir and summary.steps == 6
    a, b = _final_weights(straight), _final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the sample log: the uninterrupted run's rows exactly; step 4's first rows are set aside, not counted twice
    key = ["prompt_id", "epoch", "sample_index", "version", "learner_version", "response"]
    rows_a = pq.read_table(straight / "samples.parquet").select(key).to_pylist()
    rows_b = pq.read_table(run_dir / "samples.parquet").select(key).to_pylist()
    as_set = lambda rows: sorted(tuple(r.values()) for r in rows)  # noqa: E731
    assert as_set(rows_a) == as_set(rows_b) and len(rows_b) == 6 * 4 * 4
    aside = pq.read_table(run_dir / "samples.parquet" / "_discarded-after-v3").to_pylist()
    assert {r["learner_version"] for r in aside} == {3}  # the step trained after the checkpoint, the first time
    from rlsys.metrics import read_metrics

    steps = [m["step"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert steps == [1, 2, 3, 4, 5, 6]  # metrics.jsonl continues at the checkpoint: step 4 once


@pytest.mark.slow
def test_a_resumed_asynchronous_run_trains_every_admitted_prompt_once(ray_session, tmp_path):
    """η = 1: at a checkpoint, groups are in flight and in the buffer; they are not in the checkpoint, so their
    prompts are generated again after the resume: nothing admitted is lost, nothing is trained twice."""
    import shutil

    import pyarrow.parquet as pq

    from rlsys.train import train

    _, run_dir = train(load_config(None, tiny_overrides(
        tmp_path, "train.num_steps=5", "train.checkpoint_every=3", "output.run_name=r", "train.max_staleness=1")))
    state = json.loads((run_dir / "checkpoints" / "step-00000003" / STATE).read_text())
    shutil.rmtree(run_dir / "checkpoints" / "step-00000005")
    summary, _ = train(load_config(run_dir / "config.yaml", ["train.num_steps=8", "train.resume=true"]))
    assert summary.steps == 8
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    trained = [(r["prompt_id"], r["epoch"]) for r in rows if r["dropped"] == "" and r["sample_index"] == 0]
    assert len(trained) == len(set(trained)) == 8 * 4  # every step's 4 groups, each (prompt, epoch) once
    per_step = {}
    for r in rows:
        if r["dropped"] == "" and r["sample_index"] == 0:
            per_step[r["learner_version"]] = per_step.get(r["learner_version"], 0) + 1
    assert per_step == {v: 4 for v in range(8)}
    assert all(r["learner_version"] - r["version"] <= 1 for r in rows if r["dropped"] == "")  # η held throughout
    # the prompts outstanding at the checkpoint were generated again after it and trained
    outstanding = {tuple(k) for k in state["outstanding"]}
    assert outstanding and outstanding <= set(trained)


@pytest.mark.slow
def test_a_driver_killed_with_sigkill_is_resumed_from_the_command_line(tmp_path):
    """`rlsys train` SIGKILLed once it has checkpointed step 6 or later, then `rlsys train --resume RUN_DIR` for six
    steps more than the checkpoint it resumes from: the run completes, and every step trained its 4 groups, each
    (prompt, epoch) once. Its own processes, no shared Ray session."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import pyarrow.parquet as pq

    rlsys = [str(Path(sys.executable).parent / "rlsys"), "train"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    run_dir = tmp_path / "runs" / "k"
    first = subprocess.Popen([*rlsys, *tiny_overrides(tmp_path, "output.run_name=k", "train.num_steps=100000",
                                                      "train.checkpoint_every=3")],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def newest_step() -> int:  # only the newest checkpoints are kept: a fast run passes any one step in a blink
        return max((int(d.name.split("-")[1]) for d in (run_dir / "checkpoints").glob("step-*")), default=0)

    try:
        deadline = time.monotonic() + 900
        while newest_step() < 6:
            assert first.poll() is None and time.monotonic() < deadline, "the run ended before its checkpoints"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    (killed_at, _), = [latest_valid(run_dir / "checkpoints")]
    total = int(killed_at.name.split("-")[1]) + 6  # six steps more than the checkpoint resumed from
    resumed = subprocess.run([*rlsys, "--resume", str(run_dir), f"train.num_steps={total}"], env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (checkpoint, _), = [latest_valid(run_dir / "checkpoints")]
    assert checkpoint.name == f"step-{total:08d}"
    assert "resumed from" in resumed.stdout and "at version " in resumed.stdout
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    trained = [(r["prompt_id"], r["epoch"], r["learner_version"]) for r in rows
               if r["dropped"] == "" and r["sample_index"] == 0]
    assert len({t[:2] for t in trained}) == len(trained) == total * 4
    assert sorted({t[2] for t in trained}) == list(range(total))
