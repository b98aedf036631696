"""A config that asks for more than the cluster has fails at once, saying what is short; it does not wait out
``ray.placement_timeout_s``. Pure demand arithmetic first, then against the session's real local Ray (4 CPUs, no
GPU), then through the ``rlsys train`` CLI."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlsys.actors.placement import create_actors
from rlsys.actors.resources import PlacementError, check_local_cpus, resource_demand, shortfalls, total_demand
from rlsys.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
# "At once" is asserted by what failed, not by a clock: the up-front check's message ("… asked, the cluster has …")
# differs from the placement wait's ("could not place … within ray.placement_timeout_s"), which at its default of
# 600 s would outlast the CLI tests' 300 s subprocess timeout.


def cfg_of(*overrides: str):
    return load_config(None, list(overrides))


# --- the demand, from the config alone ---------------------------------------------------------------------------


def test_default_config_asks_for_one_learner_rollout_and_reward_worker():
    cfg = cfg_of()
    assert [(d.kind, d.count, d.cpus, d.gpus) for d in resource_demand(cfg)] == [
        ("learner", 1, 1.0, 0.0), ("rollout worker", 1, 1.0, 0.0), ("reward worker", 1, 0.25, 0.0)]
    assert total_demand(cfg) == {"CPU": 2.25, "GPU": 0.0}


def test_every_kind_of_actor_counts_with_its_own_resources():
    cfg = cfg_of("learner.num_learners=4", "learner.num_cpus=2", "learner.num_gpus=1", "rollout.num_workers=3",
                 "rollout.num_cpus=0.5", "rollout.num_gpus=0.5", "reward.num_workers=2", "algo.kl_coef=0.1",
                 "algo.reference=actor")
    # 4 × 2 + 3 × 0.5 + 2 × 0.25 + 1 reference × 2 CPU;  4 × 1 + 3 × 0.5 + 1 reference × 1 GPU
    assert total_demand(cfg) == {"CPU": 12.0, "GPU": 6.5}
    assert resource_demand(cfg)[-1].kind == "reference actor"


def test_a_reference_inside_the_learners_is_no_extra_actor():
    assert total_demand(cfg_of("algo.kl_coef=0.1", "algo.reference=learner"))["CPU"] == 2.25
    assert total_demand(cfg_of("algo.kl_coef=0", "algo.reference=actor"))["CPU"] == 2.25  # kl off: no reference


def test_a_config_that_fits_has_no_shortfall():
    cfg = cfg_of("reward.num_workers=3", "reward.num_cpus=0.1", "rollout.num_cpus=0.7")  # 1 + 0.7 + 0.3 (float sums)
    assert shortfalls(cfg, {"CPU": 2.0}, [{"CPU": 2.0}]) == []
    assert shortfalls(cfg_of("learner.num_gpus=0.5", "rollout.num_gpus=0.5"), {"CPU": 4, "GPU": 1},
                      [{"CPU": 4, "GPU": 1}]) == []


def test_too_many_learners_names_the_keys_the_sum_and_what_there_is():
    cfg = cfg_of("learner.num_learners=8", "ray.num_cpus=2")
    assert shortfalls(cfg, {"CPU": 2.0, "GPU": 0.0}, where={"CPU": "(ray.num_cpus=2)"}) == [
        "CPU: learner.num_learners=8 × learner.num_cpus=1 + rollout.num_workers=1 × rollout.num_cpus=1 + "
        "reward.num_workers=1 × reward.num_cpus=0.25 = 9.25 CPU asked, the cluster has 2 CPU (ray.num_cpus=2)"]


def test_a_gpu_the_cluster_lacks():
    cfg = cfg_of("learner.num_learners=2", "learner.num_gpus=1", "rollout.num_gpus=0.5")
    assert shortfalls(cfg, {"CPU": 8.0}, [{"CPU": 8.0}]) == [
        "GPU: learner.num_learners=2 × learner.num_gpus=1 + rollout.num_workers=1 × rollout.num_gpus=0.5 = 2.5 GPU "
        "asked, the cluster has 0 GPU"]


def test_an_actor_larger_than_every_node_fails_even_when_the_total_suffices():
    cfg = cfg_of("learner.num_gpus=2")
    nodes = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]
    (problem,) = shortfalls(cfg, {"CPU": 8.0, "GPU": 2.0}, nodes)
    assert problem.startswith("one learner (learner.num_cpus=1 and learner.num_gpus=2) must fit on a single node")
    assert "the 2 alive node(s) have 4 CPU + 1 GPU" in problem
    assert shortfalls(cfg, {"CPU": 8.0, "GPU": 2.0}, [{"CPU": 4.0, "GPU": 2.0}, {"CPU": 4.0}]) == []


def test_a_too_small_ray_num_cpus_fails_before_ray_starts():
    import ray

    started_before = ray.is_initialized()
    with pytest.raises(PlacementError) as e:
        check_local_cpus(cfg_of("learner.num_learners=8", "ray.num_cpus=2"))
    assert "9.25 CPU asked, the cluster has 2 CPU (ray.num_cpus=2)" in str(e.value)
    assert "raise ray.num_cpus to at least 10, or leave it unset" in str(e.value)
    assert ray.is_initialized() == started_before
    check_local_cpus(cfg_of("ray.num_cpus=3"))  # 2.25 fits
    check_local_cpus(cfg_of("learner.num_learners=8", "ray.address=auto"))  # not a local Ray: not checked here
    with pytest.raises(ConfigError, match=r"ray.num_cpus=2 has no effect here: it acts only on a local Ray"):
        cfg_of("ray.address=auto", "ray.num_cpus=2")


# --- against a real local Ray: the session's, 4 CPUs and no GPU --------------------------------------------------


def _live_groups(ray) -> set:
    return {pg_id for pg_id, pg in ray.util.placement_group_table().items() if pg["state"] != "REMOVED"}


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "expected"), [
    (("learner.num_learners=8",),
     "CPU: learner.num_learners=8 × learner.num_cpus=1 + rollout.num_workers=1 × rollout.num_cpus=1 + "
     "reward.num_workers=1 × reward.num_cpus=0.25 = 9.25 CPU asked, the cluster has 4 CPU (the local Ray)"),
    (("learner.num_gpus=1",),
     "GPU: learner.num_learners=1 × learner.num_gpus=1 = 1 GPU asked, the cluster has 0 GPU (the local Ray on this "
     "machine)"),
], ids=["8-learners-on-4-cpus", "a-gpu-without-one"])
def test_a_cluster_too_small_fails_at_once_naming_the_resource(ray_session, tmp_path, overrides, expected):
    ray = ray_session
    if "GPU" in expected and ray.cluster_resources().get("GPU"):
        pytest.skip("Ray sees a GPU here")
    cfg = cfg_of(*overrides)
    assert cfg.ray.placement_timeout_s == 600
    groups_before = _live_groups(ray)
    with pytest.raises(PlacementError) as e:
        create_actors(cfg, str(tmp_path), None)
    assert expected in str(e.value)
    assert _live_groups(ray) == groups_before  # nothing was reserved, no actor created


@pytest.mark.slow
def test_resources_held_by_others_are_waited_for_then_reported_with_what_is_free(ray_session, tmp_path, caplog):
    ray = ray_session
    from ray.util.placement_group import placement_group, remove_placement_group

    import rlsys.actors.resources as resources

    cfg = cfg_of("learner.num_cpus=0.5", "rollout.num_cpus=0.5", "ray.placement_timeout_s=4")  # 1.25 CPU of 4
    groups_before = _live_groups(ray)
    free = ray.available_resources().get("CPU", 0.0)
    hog = placement_group([{"CPU": free - 0.6}])  # another job: leaves 0.6 CPU, enough for the learner only
    ray.get(hog.ready(), timeout=60)
    try:
        caplog.set_level(logging.WARNING, logger="rlsys.actors.resources")
        old, resources.WAIT_REPORT_EVERY_S = resources.WAIT_REPORT_EVERY_S, 1.5
        try:
            with pytest.raises(PlacementError) as e:
                create_actors(cfg, str(tmp_path), None)
        finally:
            resources.WAIT_REPORT_EVERY_S = old
    finally:
        remove_placement_group(hog)
    msg = str(e.value)
    assert "could not place 1 rollout worker(s) with {'CPU': 0.5} each + 1 reward worker(s) with {'CPU': 0.25} each" \
           " within ray.placement_timeout_s=4 s" in msg
    assert "the cluster has enough in total, but they are in use" in msg
    assert "free now (not counting what this run already reserved): 0.6 of 4 CPU" in msg
    assert any("waiting for resources in use elsewhere" in r.getMessage() for r in caplog.records)
    deadline = time.monotonic() + 30
    while _live_groups(ray) != groups_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _live_groups(ray) == groups_before  # both of this run's groups were removed


@pytest.mark.slow
def test_an_autoscaling_cluster_waits_and_says_why(ray_session, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="rlsys.actors.resources")
    cfg = cfg_of("learner.num_learners=8", "ray.autoscaling=true", "ray.placement_timeout_s=2")
    with pytest.raises(PlacementError) as e:
        create_actors(cfg, str(tmp_path), None)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ray.autoscaling=true, so rlsys waits up to ray.placement_timeout_s=2 s for the autoscaler" in logged
    assert "9.25 CPU asked, the cluster has 4 CPU" in logged
    assert "the autoscaler did not add the nodes in time" in str(e.value)


# --- through the CLI -------------------------------------------------------------------------------------------


def _rlsys_train(tmp_path, *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", DS_ACCELERATOR="cpu", RAY_USAGE_STATS_ENABLED="0")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "rlsys.cli", "train", f"output.root={tmp_path}/runs", "output.run_name=r",
         f"output.cache_dir={tmp_path}/cache", *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    return proc, time.monotonic() - start


@pytest.mark.slow
def test_rlsys_train_with_too_few_cpus_exits_at_once_with_the_reason(tmp_path):
    proc, _ = _rlsys_train(tmp_path, "learner.num_learners=8", "ray.num_cpus=2")
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "rlsys: the Ray cluster cannot host the actors this config asks for:" in proc.stderr
    assert "= 9.25 CPU asked, the cluster has 2 CPU (ray.num_cpus=2)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # failed before any run directory, data or warm-up


@pytest.mark.slow
def test_rlsys_train_asking_for_a_gpu_on_a_machine_without_one_exits_at_once(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc, took = _rlsys_train(tmp_path, "learner.num_gpus=1")
    assert proc.returncode == 2, f"exit {proc.returncode} after {took:.0f} s:\n{proc.stderr[-4000:]}"
    assert "GPU: learner.num_learners=1 × learner.num_gpus=1 = 1 GPU asked, the cluster has 0 GPU" in proc.stderr
    assert "set learner.num_gpus=0 to train on CPUs" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_which_ray_a_run_uses():
    """ray.address if set; else RAY_ADDRESS (as `ray job submit` gives its entrypoint); else a Ray of the run's own
    ("local") — never a plain ray.init(), which would join whatever Ray another process last started here."""
    from rlsys.train import ray_init_address

    assert ray_init_address(cfg_of(), {}) == "local"
    assert ray_init_address(cfg_of(), {"RAY_ADDRESS": "10.0.0.1:6379"}) == "10.0.0.1:6379"
    assert ray_init_address(cfg_of("ray.address=auto"), {"RAY_ADDRESS": "10.0.0.1:6379"}) == "auto"
