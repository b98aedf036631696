"""Every main algorithm learns on the embedded default task: a short asynchronous run (η = 1) of each recipe in
configs/algos/ raises held-out greedy accuracy and the training reward."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlsys.config import DEFAULT_CONFIG, algo_recipe, load_config
from rlsys.train import train

pytestmark = pytest.mark.slow

STEPS = 200


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "dapo", "gspo", "ppo_gae", "rloo", "reinforce_pp", "cispo"])
def test_algorithm_improves_reward_and_held_out_accuracy(ray_session, tmp_path, algo):
    cfg = load_config([DEFAULT_CONFIG, algo_recipe(algo)], [
        f"output.root={tmp_path}/runs", f"output.cache_dir={tmp_path.parent}/rlsys-cache",
        "output.progress_bar=false", "warmup.steps=500", f"train.num_steps={STEPS}", "train.eval_every=0",
    ])
    summary, run_dir = train(cfg)
    acc = summary.eval_accuracy
    assert set(acc) == {0, STEPS}
    assert acc[STEPS] >= acc[0] + 0.06, f"{algo}: held-out accuracy {acc[0]:.3f} → {acc[STEPS]:.3f}"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [m["reward/mean"] for m in records if m.get("reward/mean") is not None]
    assert np.mean(rewards[-30:]) > np.mean(rewards[:30]) + 0.05, f"{algo}: training reward did not rise"
    trained = [m for m in records if "train/loss" in m]
    assert len(trained) == STEPS and all(np.isfinite(m["train/loss"]) for m in trained)
