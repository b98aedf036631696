"""Every main algorithm learns on the embedded default task: a short asynchronous run (η = 1) of each recipe in
configs/algos/ raises held-out greedy accuracy and the training reward."""

from __future__ import annotations

import numpy as np
import pytest

from rlsys.config import DEFAULT_CONFIG, algo_recipe, load_config
from rlsys.metrics import read_metrics
from rlsys.train import train

pytestmark = pytest.mark.slow

STEPS = 200
RM_STEPS = 4000  # preference-training steps of the reward model in the RM run (~60 s on 2 idle cores)


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "dapo", "gspo", "ppo_gae", "rloo", "reinforce_pp", "cispo"])
def test_algorithm_improves_reward_and_held_out_accuracy(ray_session, tmp_path, algo):
    cfg = load_config([DEFAULT_CONFIG, algo_recipe(algo)], [
        f"output.root={tmp_path}/runs", f"output.cache_dir={tmp_path.parent}/rlsys-cache",
        "output.progress_bar=false", "warmup.steps=500", f"train.num_steps={STEPS}", "train.eval_every=0",
    ])
    summary, run_dir = train(cfg)
    acc = summary.eval_accuracy
    assert set(acc) == {0, STEPS}
    assert acc[STEPS] >= acc[0] + 0.04, f"{algo}: held-out accuracy {acc[0]:.3f} → {acc[STEPS]:.3f}"
    records = read_metrics(run_dir)
    rewards = [m["reward/mean"] for m in records if m.get("reward/mean") is not None]
    assert np.mean(rewards[-30:]) > np.mean(rewards[:30]) + 0.05, f"{algo}: training reward did not rise"
    trained = [m for m in records if "train/loss" in m]
    assert len(trained) == STEPS and all(np.isfinite(m["train/loss"]) for m in trained)


def test_composite_reward_learns_and_logs_every_term(ray_session, tmp_path):
    """Correctness + format + length penalty: the run learns on the correctness term, and each term is logged
    and stored per sample."""
    cfg = load_config(None, [
        f"output.root={tmp_path}/runs", f"output.cache_dir={tmp_path.parent}/rlsys-cache",
        "output.progress_bar=false", "warmup.steps=500", f"train.num_steps={STEPS}", "train.eval_every=0",
        "reward.components=[{name: correct, fn: addition_exact}, "
        "{name: digits, fn: regex_format, weight: 0.2, params: {pattern: '[0-9]+'}}, "
        "{name: short, fn: length_penalty, weight: 0.1, params: {target: 3, tolerance: 1}}]",
        "reward.correct_component=correct",
    ])
    summary, run_dir = train(cfg)
    acc = summary.eval_accuracy
    assert acc[STEPS] >= acc[0] + 0.04, f"held-out accuracy {acc[0]:.3f} → {acc[STEPS]:.3f}"
    records = read_metrics(run_dir)
    correct = [m["reward/correct"] for m in records if m.get("reward/correct") is not None]
    assert np.mean(correct[-30:]) > np.mean(correct[:30]) + 0.05
    last_step = [m for m in records if "train/loss" in m][-1]
    for term in ("correct", "digits", "short"):
        assert f"reward/{term}" in last_step and f"reward/{term}_failures" in last_step
    import pyarrow.parquet as pq

    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    for r in rows[:50]:
        terms = dict(r["reward_components"])
        assert set(terms) == {"correct", "digits", "short"}
        assert r["reward"] == pytest.approx(terms["correct"] + 0.2 * terms["digits"] + 0.1 * terms["short"], abs=1e-6)


def test_a_trained_reward_model_as_the_only_reward_learns(ray_session, tmp_path):
    """RLHF in miniature: a reward model trained here from scratch on preference pairs (right vs. near-miss
    answers) ranks held-out pairs, and as the only reward it raises held-out accuracy, which the exact-answer check
    measures as a weight-0 monitor term. Every sample records the RM version that scored it.

    (An RM initialised from the policy's own trunk ranked held-out pairs as well but shared the policy's blind
    spots: RL drove accuracy *down* while the RM's score rose — reward hacking. An RM trained from scratch errs
    independently of the policy.)"""
    import pyarrow.parquet as pq

    from rlsys.prepare import prepare
    from rlsys.rewards.models import SequenceClassifierRM
    from rlsys.rewards.preference import addition_preference_pairs, pairwise_accuracy, train_preference_rm

    base = [f"output.root={tmp_path}/runs", f"output.cache_dir={tmp_path.parent}/rlsys-cache",
            "output.progress_bar=false", "warmup.steps=500", f"train.num_steps={STEPS}", "train.eval_every=0"]
    prepared = prepare(load_config(None, base))
    rm_dir = tmp_path / "rm"
    pairs = [pair for seed in range(4) for pair in addition_preference_pairs(prepared.train_prompts, seed)]
    stats = train_preference_rm(rm_dir, prepared.model_dir, pairs, steps=RM_STEPS, lr=1e-3, batch_size=64)
    held_out = pairwise_accuracy(SequenceClassifierRM(str(rm_dir)), addition_preference_pairs(prepared.eval_prompts, 1))
    assert held_out >= 0.8, f"the reward model ranks only {held_out:.0%} of held-out pairs right"
    cfg = load_config(None, [*base, "reward.correct_component=correct",
                             f"reward.components=[{{name: rm, model: {{kind: classifier, paths: ['{rm_dir}']}}}}, "
                             "{name: correct, fn: addition_exact, weight: 0.0}]"])
    summary, run_dir = train(cfg)
    acc = summary.eval_accuracy
    assert acc[STEPS] >= acc[0] + 0.04, f"held-out accuracy {acc[0]:.3f} → {acc[STEPS]:.3f}"
    records = read_metrics(run_dir)
    rm = [m["reward/rm"] for m in records if m.get("reward/rm") is not None]
    assert np.mean(rm[-30:]) > np.mean(rm[:30]), "the reward model's score did not rise"
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    assert {dict(r["reward_versions"])["rm"] for r in rows} == {stats["version"]}
    assert all(r["reward"] == pytest.approx(dict(r["reward_components"])["rm"], abs=1e-6) for r in rows[:50])
