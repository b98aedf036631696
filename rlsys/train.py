"""One training run, top to bottom: config → prepare → Ray → actors → controller loop → save → report."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path

import ray
from tqdm import tqdm

from rlsys.actors.placement import create_actors, open_weight_transfer, setup_learners, shutdown_actors
from rlsys.actors.resources import check_cluster, check_local_cpus, total_demand
from rlsys.checkpoint import checkpoints, export_policy
from rlsys.config import ConfigError, RLConfig, to_yaml
from rlsys.controller import Controller, RunSummary
from rlsys.failures import ActorLost, StateLost, raise_terminated
from rlsys.metrics import MetricsWriter, json_safe
from rlsys.prepare import load_datasets, prepare
from rlsys.recovery import load_learners, newest_checkpoint, recover, set_aside_later_samples

log = logging.getLogger(__name__)

# Actors inherit these: CPU DeepSpeed needs its accelerator chosen before import; tokenizers' thread pool
# would oversubscribe the cores the actors were given.
ACTOR_ENV = {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # per-checkpoint-load bars would drown the run's own


RUN_FILES = ("metrics.jsonl", "samples.parquet", "summary.json")  # what a run writes into its directory


def run_dir_for(cfg: RLConfig) -> tuple[Path, Path | None, dict | None]:
    """The run's directory (not created yet), and the checkpoint to continue from (``train.resume``; None: start)
    with its driver state.

    A directory that already holds a run is refused — a second run writing there would mix its metrics and samples
    with the first one's — unless ``train.resume`` continues it from its newest valid checkpoint (damaged newer
    ones are skipped, each named in a warning). With ``train.resume`` and no run there yet, the run starts."""
    name = cfg.output.run_name or time.strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.output.root).expanduser().resolve() / name
    if cfg.train.resume:
        checkpoint, state = newest_checkpoint(path)
        if checkpoint is not None:
            log.info("resuming %s from %s", path, checkpoint)
            return path, checkpoint, state
    if found := [f for f in RUN_FILES if (path / f).exists()]:
        damaged = len(checkpoints(path / "checkpoints"))
        fix = ("it has no valid checkpoint to resume from " + (
            f"(its {damaged} checkpoint(s) are all damaged: see the warnings above)" if damaged else
            "(train.checkpoint_every was 0, or the run stopped before the first)")
            if cfg.train.resume else "choose another output.run_name, or move that directory away")
        raise ConfigError(f"output.run_name={name!r}: {path} already holds a run ({', '.join(found)}); {fix}")
    return path, None, None


def ray_init_address(cfg: RLConfig, environ: Mapping[str, str]) -> str:
    """Which Ray a run uses: ``ray.address`` if set; else the cluster the environment names (``RAY_ADDRESS``, which
    ``ray job submit`` sets for its entrypoint); else ``"local"``, a new Ray of this run's own. Not a plain
    ``ray.init()``: that joins the newest Ray any process on this machine started (``ray start``, another test's
    cluster) through its ``ray_current_cluster`` file, and then refuses the local Ray's ``num_cpus``."""
    return cfg.ray.address or environ.get("RAY_ADDRESS") or "local"


def init_ray(cfg: RLConfig) -> None:
    """Join ``ray.address`` (``auto`` inside ``ray job submit``) or start a local Ray sized for the actors.

    Fails at once with :class:`~rlsys.actors.placement.PlacementError` when the cluster cannot host the actors
    (``ray.num_cpus`` below their CPUs before anything starts; then missing CPUs/GPUs of the cluster joined or
    started), unless ``ray.autoscaling`` says that new nodes will come."""
    env = {"env_vars": dict(ACTOR_ENV)}
    if not any(s > 0 for s in (cfg.learner.num_gpus, cfg.rollout.num_gpus, cfg.reward.num_gpus)):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    else:
        env["env_vars"].pop("DS_ACCELERATOR")
    if not ray.is_initialized():
        where = ray_init_address(cfg, os.environ)
        if where != "local":
            if not cfg.ray.address:
                log.info("ray.address is unset and RAY_ADDRESS=%s (as inside `ray job submit`): joining that "
                         "cluster", where)
                cfg = replace(cfg, ray=replace(cfg.ray, address=where))  # what the cluster checks below report
            ray.init(address=where, runtime_env=env, log_to_driver=True)
        else:
            check_local_cpus(cfg)
            # Logical CPUs: the actors' num_cpus are scheduling shares, so a laptop with 2 cores still hosts them.
            needed = total_demand(cfg)["CPU"]
            num_cpus = cfg.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(needed - 1e-9))
            ray.init(address="local", num_cpus=num_cpus, runtime_env=env, include_dashboard=False,
                     log_to_driver=True)
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            signal.signal(signal.SIGTERM, raise_terminated)  # replaces Ray's, which aborts with a stack dump
    if not cfg.ray.autoscaling:  # with autoscaling, create_actors logs the shortfall where it waits
        check_cluster(cfg)


def train(cfg: RLConfig) -> tuple[RunSummary, Path]:
    t_prep = time.perf_counter()
    # Bad data, then a cluster too small for the config, fail in seconds: before Ray starts, and before the warm-up.
    data = load_datasets(cfg)
    run_dir, checkpoint, state = run_dir_for(cfg)
    init_ray(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    prepared = prepare(cfg, data)
    print(f"initial policy: {prepared.model_dir} "
          f"({'cached warm-up' if prepared.warmup_cached else f'warm-up took {prepared.warmup_s:.0f} s'})")
    samples_path = run_dir / "samples.parquet" if cfg.output.save_samples else None
    if state is not None and samples_path is not None:  # before the buffer opens the log and counts its parts
        set_aside_later_samples(samples_path, state["log_parts"], state["version"])
    actors = create_actors(cfg, prepared.model_dir, str(samples_path) if samples_path is not None else None)
    metrics = MetricsWriter(run_dir, resume=(state["metrics_records"], state["version"]) if state else None)
    finished = False
    try:
        setup_learners(actors.learners)
        if cfg.rollout.weight_transfer == "nccl":
            open_weight_transfer(actors, cfg.rollout.tensor_parallel_size)
        if checkpoint is not None:
            load_learners(actors, checkpoint, state)
            print(f"resumed from {checkpoint} at version {state['version']}")
        startup_s = time.perf_counter() - t_prep
        bar = tqdm(total=cfg.train.num_steps, desc="rlsys train", unit="step", disable=not cfg.output.progress_bar,
                   mininterval=0.5)
        shown: dict[str, float] = {}

        def on_step(version: int, values: dict) -> None:
            shown.update({k: round(v, 3) for k, v in values.items()})
            bar.set_postfix(shown, refresh=False)
            bar.update(version - bar.n)  # tqdm decides when to redraw (at most every 0.5 s)

        recoveries, lost_at = 0, None
        while True:  # once, plus once per recovery from a checkpoint (rlsys.recovery)
            controller = Controller(cfg, actors, prepared.train_prompts, prepared.eval_prompts, metrics, on_step,
                                    run_dir, lost_at)
            if state is not None:
                controller.restore(state)
            bar.update(controller.version - bar.n)
            try:
                summary = controller.run()
                break
            except StateLost as lost:
                if cfg.rollout.weight_transfer == "nccl":  # the rollout workers are in the lost learners' group
                    raise ActorLost(f"{lost}; with rollout.weight_transfer=nccl a run does not recover from it "
                                    "(re-forming the NCCL group is not implemented): resume it from its last "
                                    "checkpoint with rlsys train --resume") from lost
                lost_at = time.monotonic()
                controller.abandon()
                checkpoint, state = recover(actors, run_dir, samples_path, lost, controller.version,
                                            cfg.train.checkpoint_every > 0, cfg.train.max_recoveries - recoveries)
                recoveries += 1
                metrics.close()  # reopened at the checkpoint's step: TensorBoard and metrics.jsonl drop what follows
                metrics = MetricsWriter(run_dir, resume=(state["metrics_records"], state["version"]) if state else
                                        (0, 0))
        summary.recoveries = recoveries
        bar.close()
        model_out = run_dir / "model"
        # every rank is called (a collective under ZeRO-3); rank 0 returns the weights
        weights = [learner.get_weights.remote() for learner in actors.learners]
        save_policy(weights[0], prepared.model_dir, model_out)
        left = ray.get(actors.buffer.close.remote(summary.steps))
        report = {**asdict(summary), "startup_s": startup_s, "groups_left_in_buffer": left,
                  "dropped_rows": prepared.dropped_rows,  # data rows left out (task.bad_rows=drop), by reason
                  "dropped_row_list": [asdict(b) for b in prepared.dropped],
                  "model_dir": str(model_out), "run_dir": str(run_dir),
                  "checkpoints": [str(c) for c in checkpoints(run_dir / "checkpoints")]}
        (run_dir / "summary.json").write_text(json.dumps(json_safe(report), indent=2, allow_nan=False))
        finished = True
    finally:
        metrics.close()
        if not finished:  # the run stopped early: keep the sample log it has so far readable
            try:
                ray.get(actors.buffer.close.remote(-1), timeout=60)
            except Exception as e:  # the buffer itself may be what failed
                log.warning("could not flush the sample log of the stopped run: %s", e)
        shutdown_actors(actors)
    _print_report(summary, run_dir, left, startup_s, prepared.dropped_rows)
    return summary, run_dir


def save_policy(weights: ray.ObjectRef, init_dir: str, out: Path) -> None:
    """Write the trained policy as a Hugging Face checkpoint on the driver's node (learners may be elsewhere)."""
    export_policy(ray.get(weights, timeout=600), init_dir, out)


def _print_report(s: RunSummary, run_dir: Path, left: int, startup_s: float, dropped_rows: dict[str, int]) -> None:
    acc = s.eval_accuracy
    first, last = (acc[min(acc)], acc[max(acc)]) if acc else (float("nan"), float("nan"))
    print(f"\nheld-out accuracy: {first:.1%} at version {min(acc, default=0)} → {last:.1%} at version "
          f"{max(acc, default=0)}")
    if traj := s.eval_trajectories:
        first_t, last_t = traj[min(traj)], traj[max(traj)]
        print(f"held-out tool-call rate: {first_t['tool_call_rate']:.1%} at version {min(traj)} → "
              f"{last_t['tool_call_rate']:.1%} at version {max(traj)}; turns per trajectory: {first_t['turns']:.2f} → "
              f"{last_t['turns']:.2f}")
    print(f"{s.steps} steps in {s.wall_s:.0f} s (+{startup_s:.0f} s start-up); {s.samples_per_s:.1f} samples/s; "
          f"learner idle {s.learner_idle_frac:.0%}, rollout idle {s.rollout_idle_frac:.0%}; "
          f"weight sync {s.sync_s_mean * 1e3:.0f} ms on average")
    print(f"staleness max {s.max_staleness_seen}; dropped as stale: {s.dropped_stale_groups} groups; lost requests "
          f"(re-queued): {s.lost_requests}; reward failures: {s.reward_failures}; groups generated but never "
          f"trained (run ended): {left}")
    if s.eval_reward_failures:
        print(f"held-out samples whose reward failed (counted as wrong; metrics: eval/reward_failures): "
              f"{s.eval_reward_failures}")
    if s.recoveries:
        print(f"learner group rebuilt from a checkpoint inside the job: {s.recoveries} time(s) (metrics: "
              "recovery/seconds)")
    if s.failed_prompts:
        print(f"prompts dropped after {len(s.failed_prompts) and s.failed_prompts[0]['attempts']} failed requests "
              f"each (listed in summary.json): {len(s.failed_prompts)}")
    if dropped_rows:
        print(f"data rows left out (task.bad_rows=drop; each is listed in summary.json): "
              f"{', '.join(f'{reason} {n}' for reason, n in dropped_rows.items())}")
    print(f"\noutputs in {run_dir}:")
    print(f"  model/          Hugging Face checkpoint (AutoModelForCausalLM.from_pretrained('{run_dir / 'model'}'))")
    print("  tensorboard/    TensorBoard events   (tensorboard --logdir " + str(run_dir / "tensorboard") + ")")
    print("  metrics.jsonl   the same metrics, one JSON object per line")
    print("  samples.parquet every trained or dropped sample, with its version, reward and reason")
    print("  summary.json    the figures above;  config.yaml  the resolved config")
    if saved := checkpoints(run_dir / "checkpoints"):
        print(f"  checkpoints/    full-state checkpoints, newest {saved[-1].name} (its policy/ is a Hugging Face "
              "checkpoint)")
