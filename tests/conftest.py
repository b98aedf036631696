"""Shared fixtures: one local Ray for the session, and a tiny warmed-up policy checkpoint built here."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# The real GSM8K files (MIT licence), read where they are and never copied: the shared folder beside the repository
# (as on the developers' machines and in CI), or $RLSYS_GSM8K_DIR. Tests that need them skip without them.
GSM8K = Path(os.environ.get("RLSYS_GSM8K_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"))
needs_gsm8k = pytest.mark.skipif(not (GSM8K / "train.jsonl").is_file() or not (GSM8K / "test.jsonl").is_file(),
                                 reason=f"the GSM8K files are not at {GSM8K} (set RLSYS_GSM8K_DIR to their folder)")


def tiny_overrides(tmp_path, *extra: str) -> list[str]:
    """A configuration small enough for a test run on 2 cores (cache shared across the session's runs). The
    synthetic task's size is left out for a Parquet or GSM8K task, and the held-out size with an eval file, where the
    config check refuses them as doing nothing."""
    synthetic = not {"task.name=parquet", "task.name=gsm8k"} & set(extra)
    held_out = not any(e.startswith("task.eval_file=") for e in extra)
    return [
        f"output.root={tmp_path}/runs", f"output.cache_dir={tmp_path.parent}/rlsys-cache",
        "output.progress_bar=false", *(["task.num_train=400"] if synthetic else []),
        *(["task.num_eval=40"] if held_out else []),
        "warmup.steps=300",
        "train.groups_per_step=4", "rollout.group_size=4", "rollout.groups_per_request=2", "learner.micro_batch_size=8",
        "train.eval_every=0", *extra,
    ]


def actor_processes(actor_class: str, among: list | None = None) -> list:
    """The processes (psutil) of Ray actors of class ``actor_class``, oldest pid first: Ray titles an actor's
    process ``ray::<Class>``, ``ray::<Class>.<method>`` while it runs one. ``among``: only these processes (e.g. a
    simulated cluster's, the children of the process that started it); default: every process of the machine."""
    import psutil

    def title(p) -> str:
        try:
            return (p.cmdline() or [""])[0]
        except psutil.Error:  # gone meanwhile
            return ""

    procs = psutil.process_iter() if among is None else among
    return sorted((p for p in procs if title(p).startswith(f"ray::{actor_class}")), key=lambda p: p.pid)


def checkpoints_beside(policy_dir: str, root: Path, seed: int = 0) -> tuple[str, str]:
    """(another policy, a reward model) under ``root``: checkpoints with ``policy_dir``'s tokenizer and other weights
    — the policy's weights plus noise (sd 0.2), and a one-output sequence classifier on the policy's transformer
    (its score head newly initialised) — as model.reference_path / model.critic_path take them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    torch.manual_seed(seed)
    other = AutoModelForCausalLM.from_pretrained(policy_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.2 * torch.randn_like(p))
    rm = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1)
    for model, name in ((other, "other"), (rm, "rm")):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return str(root / "other"), str(root / "rm")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from rlsys.train import ACTOR_ENV

    # tests/ on the actors' path: reward functions named "reward_fixtures:..." resolve in reward workers too.
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**ACTOR_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
    ray.init(address="local", num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env},
             log_to_driver=False)  # a Ray of its own, not the newest one another process started on this machine
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    """(model_dir, prompts): a warmed-up tiny Llama on 2-digit addition, saved as a Hugging Face checkpoint."""
    from rlsys.config import load_config
    from rlsys.prepare import prepare

    tmp = tmp_path_factory.mktemp("policy")
    cfg = load_config(None, tiny_overrides(tmp))
    prepared = prepare(cfg)
    return prepared.model_dir, prepared.train_prompts


class ControllerRun:
    """A run driven through the controller itself, so that a test can reach (and kill, or swap) its actors while it
    runs. Made by :func:`controller_run`; ``actors``, ``cfg``, ``prepared`` and ``run_dir`` are the run's."""

    def __init__(self, cfg, prepared, actors, metrics, run_dir) -> None:
        self.cfg, self.prepared, self.actors, self.metrics, self.run_dir = cfg, prepared, actors, metrics, run_dir

    def run(self, prompts=None, on_step=None):
        """Train (on ``prompts``, default the task's training prompts; ``on_step(version, values)`` after each
        logged step), close the sample log, and return the RunSummary."""
        import ray

        from rlsys.controller import Controller

        summary = Controller(self.cfg, self.actors, self.prepared.train_prompts if prompts is None else prompts,
                             self.prepared.eval_prompts, self.metrics, on_step).run()
        ray.get(self.actors.buffer.close.remote(summary.steps))
        return summary

    def rows(self) -> list[dict]:
        """The sample log, one dict per sample (read it after the ``with`` block, when the run is shut down)."""
        from rlsys.samples_io import read_samples

        return read_samples(self.run_dir / "samples.parquet").to_pylist()


@contextlib.contextmanager
def controller_run(tmp_path, *overrides: str):
    """``with controller_run(tmp_path, "train.num_steps=8") as run: summary = run.run()``: the tiny config with
    ``overrides``, its warmed-up policy, the actors (learners set up) and a metrics writer, all shut down on exit."""
    from rlsys.actors.placement import create_actors, setup_learners, shutdown_actors
    from rlsys.config import load_config
    from rlsys.metrics import MetricsWriter
    from rlsys.prepare import prepare

    cfg = load_config(None, tiny_overrides(tmp_path, *overrides))
    prepared = prepare(cfg)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    actors = create_actors(cfg, prepared.model_dir, str(run_dir / "samples.parquet"))
    metrics = MetricsWriter(run_dir)
    try:
        setup_learners(actors.learners)
        yield ControllerRun(cfg, prepared, actors, metrics, run_dir)
    finally:
        metrics.close()
        shutdown_actors(actors)
