"""The embedded default task learns: a short asynchronous GRPO run raises reward and held-out accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlsys.config import load_config
from rlsys.train import train

pytestmark = pytest.mark.slow


def test_async_grpo_improves_reward_and_held_out_accuracy(ray_session, tmp_path):
    steps = 200
    cfg = load_config(None, [
        f"output.root={tmp_path}/runs", f"output.cache_dir={tmp_path.parent}/rlsys-cache",
        "output.progress_bar=false", "warmup.steps=500", f"train.num_steps={steps}", "train.eval_every=0",
    ])
    summary, run_dir = train(cfg)
    acc = summary.eval_accuracy
    assert set(acc) == {0, steps}
    assert acc[steps] >= acc[0] + 0.10, f"held-out accuracy {acc[0]:.3f} → {acc[steps]:.3f}"
    rewards = [m["reward/mean"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
               if "reward/mean" in m]
    assert np.mean(rewards[-30:]) > np.mean(rewards[:30]) + 0.05
